"""The leak table of issue 17: each planted leak kind, caught or not, by which test, at which
lead and IC; the false positives on honest features and on the built-in real data; the
lead profile's cost on the demo panel.

    .venv/bin/python bench/leak_table.py            # seed 0
    .venv/bin/python bench/leak_table.py --seeds 3  # seeds 0..2 (the table per seed)

Synthetic world: 8 symbols, 1500 bars (SYN03 1000), signals at H = 10, every optional leak
kind of cohortflow.synthetic plus its two standard leaks, OHLCV (so the computed features
exist too). Targets fwd_ret_5, fwd_ret_10, fwd_ret_20. Each column is put through the
dominance test and the lead profile separately (both on all user columns at once, as
detect_leaks runs them), and through detect_leaks (the verdict a run writes).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cohortflow.bars import Universe, load_universe  # noqa: E402
from cohortflow.features import DEMO_LEAK, build_panel  # noqa: E402
from cohortflow.leakage import (  # noqa: E402
    LEAD_ABS_IC,
    LEAD_RETURN_IC,
    LEAD_Z,
    bar_returns,
    detect_leaks,
    dominance_test,
    lead_profile_hits,
    lead_profile_test,
    lead_profiles,
)
from cohortflow.sampledata import write_sample_universe  # noqa: E402
from cohortflow.settings import Settings  # noqa: E402
from cohortflow.synthetic import LEAK_KINDS, generate_frames  # noqa: E402

HORIZONS = (5, 10, 20)
KIND_OF = {"leak_future": "fwd_ret_10 + noise", "leak_centered": "centered k=10"}
KIND_OF |= {
    "leak_shifted_ret_5": "5-bar return shifted 1 bar back",
    "leak_one_symbol": "fwd_ret_5 (corr 0.3) in SYN03's file only",
    "leak_centered_5": "centered window k=5",
    "leak_vol_next_5": "volatility of the next 5 bars",
}


def _universe(frames):
    return Universe(
        symbols=tuple(sorted(frames)), files=(), bars=frames, skipped=(), data_dir=Path("/x")
    )


def _lead_cell(e) -> str:
    if e is None:
        return "-"
    ev = e.evidence
    if ev["scope"] == "pooled":
        return (
            f"pooled {ev['kind']}: leads 1..{ev['leads'][1]}, lead {ev['lead']} IC "
            f"{ev['rank_ic']:+.3f}; score {ev['score']:.3f} > {ev['threshold']:.2f}, z {ev['z']:.1f}"
        )
    parts = []
    for sym, x in ev["by_symbol"].items():
        parts.append(
            f"{sym} {x['kind']}: leads 1..{x['leads'][1]}, lead {x['lead']} IC {x['rank_ic']:+.3f};"
            f" score {x['score']:.3f} > {x['threshold']:.2f}, z {x['z']:.1f}"
        )
    return "; ".join(parts)


def _dominance_cell(e) -> str:
    if e is None:
        return "-"
    ev = e.evidence
    if ev["rule"] == "per_symbol":
        return "; ".join(
            f"{s} IC {x['rank_ic']:+.3f} > {x['threshold']:.3f}" for s, x in ev["by_symbol"].items()
        )
    thr = ev["threshold"] if ev["rule"] == "abs_rank_ic" else ev["floor"]
    return f"{ev['rule']}: IC {ev['rank_ic']:+.3f} > {thr:.2f}"


def synthetic_table(seed: int) -> tuple[list[str], list[str]]:
    kinds = tuple(LEAK_KINDS)
    frames, truth = generate_frames(n_symbols=8, n_bars=1500, seed=seed, leak_kinds=kinds)
    universe = _universe(frames)
    settings = Settings(horizons=HORIZONS)
    panel = build_panel(universe, settings)
    frame = panel.frame
    user = list(panel.user)
    honest = [*truth.signal_features, *truth.noise_features]
    rows, fps = [], []
    for h in HORIZONS:
        target = f"fwd_ret_{h}"
        dom = {e.feature: e for e in dominance_test(frame, target, user, settings, 0, h, user)}
        lead = {e.feature: e for e in lead_profile_test(frame, user, h, 0)}
        verdict = detect_leaks(panel, target, h, panel.specs, universe.bars, settings, 0, None)
        final = {e.feature: e.reason for e in verdict.entries}
        for col in truth.leak_features:
            rows.append(
                f"| {seed} | {target} | `{col}` ({KIND_OF[col]}) | {final.get(col, 'MISSED')} | "
                f"{_dominance_cell(dom.get(col))} | {_lead_cell(lead.get(col))} |"
            )
        for name, found in (("dominance", dom), ("lead_profile", lead), ("detect_leaks", final)):
            bad = sorted(set(found) & set(honest))
            fps.append(f"| {seed} | {target} | {name} | {len(bad)} | {', '.join(bad) or '-'} |")
    return rows, fps


def real_table() -> tuple[list[str], list[str]]:
    settings = Settings(demo_leak=True)
    with tempfile.TemporaryDirectory() as tmp:
        write_sample_universe(tmp)
        universe = load_universe(tmp, settings)
    panel = build_panel(universe, settings)
    frame = panel.frame
    columns = list(panel.computed)  # every built-in column, tested as if it were a user's
    rows, cost = [], []
    for h in HORIZONS:
        target = f"fwd_ret_{h}"
        wall, cpu = time.perf_counter(), time.process_time()
        profiles = lead_profiles(frame, columns, bar_returns(frame), h)
        hits = lead_profile_hits(profiles)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        flagged = sorted({x.column for x in hits})
        honest_flagged = [c for c in flagged if c != DEMO_LEAK]
        verdict = detect_leaks(panel, target, h, panel.specs, universe.bars, settings, 0, None)
        found = ", ".join(f"`{e.feature}`: {e.reason}" for e in verdict.entries) or "-"
        rows.append(
            f"| {target} | {len(columns) - 1} | {len(honest_flagged)} "
            f"{honest_flagged or ''} | {'yes' if DEMO_LEAK in flagged else 'NO'} | {found} |"
        )
        cost.append(
            f"| {target} | {len(frame):,} rows x {len(columns)} columns, leads 1..{2 * h} | "
            f"{cpu:.2f} | {wall:.2f} |"
        )
    return rows, cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(
        f"lead profile thresholds: return score {LEAD_RETURN_IC}, |return| "
        f"{LEAD_ABS_IC}, z {LEAD_Z}\n"
    )
    print("## Planted leaks (synthetic, H = 10)\n")
    print("| seed | target | column (kind) | detect_leaks | dominance alone | lead profile alone |")
    print("|---|---|---|---|---|---|")
    all_fps = []
    for seed in range(args.seeds):
        rows, fps = synthetic_table(seed)
        print("\n".join(rows))
        all_fps += fps
    print("\n## False positives on the honest synthetic features (sig_a, sig_b, noise_00..09)\n")
    print("| seed | target | test | flagged | which |")
    print("|---|---|---|---|---|")
    print("\n".join(all_fps))
    rows, cost = real_table()
    print("\n## Built-in real data (AAPL, GOOG, IBM, MSFT 2000-2013), demo_leak on\n")
    print(
        "| target | honest columns | lead profile false positives | demo leak flagged by the "
        "lead profile | detect_leaks |"
    )
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n## Lead profile cost on the demo panel (CPU s, wall s)\n")
    print("| target | panel | CPU s | wall s |")
    print("|---|---|---|---|")
    print("\n".join(cost))


if __name__ == "__main__":
    main()
