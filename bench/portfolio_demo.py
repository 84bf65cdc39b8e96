"""portfolio.json for a quick stack: on a synthetic universe with a known signal, and on the
built-in real data (the demo). The core functions only, as the graph chains them:

    build_panel -> split_train_test -> generate_oof -> fit_stacking -> portfolio_report

then, once every target's long-short Sharpe ratio is known, the deflated Sharpe ratio with
trials = the targets of the batch (one attempt) and their Sharpe variance (with_trials).
Each report is made for ``pred_stack`` and for ``pred_equal_weight`` (the base models'
mean): on the real data the meta-learner may shrink every weight to 0, and a constant
``pred_stack`` forms no long-short portfolio (the report says so).

    .venv/bin/python bench/portfolio_demo.py [--out DIR]   # writes {synthetic,demo}_{target}.json/png

Small models (60 trees) to stay quick; the numbers are what such a stack earns, not a tuned
strategy.
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
from cohortflow.canonical import canonical_json  # noqa: E402
from cohortflow.features import build_panel  # noqa: E402
from cohortflow.fsio import atomic_write_bytes, write_json  # noqa: E402
from cohortflow.oof import generate_oof  # noqa: E402
from cohortflow.plots import portfolio_plot  # noqa: E402
from cohortflow.portfolio import Trials, lead_returns, portfolio_report, with_trials  # noqa: E402
from cohortflow.sampledata import write_sample_universe  # noqa: E402
from cohortflow.settings import ModelSettings, Settings  # noqa: E402
from cohortflow.splits import holdout_of  # noqa: E402
from cohortflow.stacking import fit_stacking  # noqa: E402
from cohortflow.synthetic import generate_frames  # noqa: E402

MODELS = ModelSettings(n_estimators=60, num_leaves=7, max_depth=3, min_child_samples=50)


def run(
    name: str, panel, settings: Settings, features: list[str], out: Path | None, column: str
) -> dict:
    frame = panel.frame
    docs = {}
    for h in settings.horizons:
        target = f"fwd_ret_{h}"
        start = time.process_time()
        held = holdout_of(frame, h, settings.test_fraction, settings.embargo_for(h))
        train, test, info = held.train, held.test, held.info
        oof = generate_oof(train, target, h, features, settings)
        stack = fit_stacking(oof, train, test, target, h, features, settings, split_info=info)
        leads = lead_returns(frame, h)
        for col in ("pred_stack", column):
            docs[(target, col)] = portfolio_report(stack.test_predictions, leads, h, pred_col=col)
        logging.info("%s %s: %.1f CPU s, weights %s", name, target, time.process_time() - start,
                     stack.weights)  # fmt: skip
    # trials: every target of the batch (one attempt), their annualised Sharpe ratios
    for col in ("pred_stack", column):
        mine = {k: d for k, d in docs.items() if k[1] == col}
        trials = Trials.from_sharpes([d["long_short"]["sharpe_annualized"] for d in mine.values()])
        docs |= {k: with_trials(d, trials) for k, d in mine.items()}
    for (target, col), doc in docs.items():
        if out is not None:
            stem = f"{name}_{target}_{col}"
            write_json(out / f"{stem}.json", doc)
            atomic_write_bytes(out / f"{stem}.png", portfolio_plot(doc, f"{target} ({col})"))
    return docs


def _f(x, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def table(name: str, docs: dict) -> None:
    print(f"\n## {name}\n")
    print(
        "| target | prediction | mean return by quantile (Q1..Q5, %) | long-short mean / std "
        "(periods) | Sharpe (ann.) | t | NW t | turnover | IC decay (lead 1, lead h) | DSR "
        "(trials, SR0 ann.) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (target, col), d in docs.items():
        ls, dsr = d["long_short"], d["deflated_sharpe"]
        q = " / ".join(
            "-" if m is None else f"{100 * m:+.2f}" for m in d["mean_return_by_quantile"]
        )
        ic = d["ic_decay"]
        print(
            f"| {target} | {col} | {q} | {_f(ls['mean'], '+.4f')} / {_f(ls['std'], '.4f')} "
            f"({ls['n_periods']}) | {_f(ls['sharpe_annualized'], '+.2f')} | "
            f"{_f(ls['t_stat'], '+.2f')} | {_f(ls['nw_t_stat'], '+.2f')} | "
            f"{_f(d['turnover']['top_quantile'], '.2f')} | {_f(ic[0]['rank_ic'], '+.3f')}, "
            f"{_f(ic[-1]['rank_ic'], '+.3f')} | {_f(dsr['probability'], '.3f')} "
            f"({dsr['n_trials']}, {_f(dsr.get('expected_max_sharpe_annualized'), '.2f')}) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--print-json", action="store_true", help="print fwd_ret_5's documents")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = Settings(n_threads=2, models=MODELS)

    frames, truth = generate_frames(
        n_symbols=12, n_bars=1000, signal_horizon=5, seed=2, with_ohlcv=False, with_leaks=False
    )
    synth = Universe(tuple(sorted(frames)), (), frames, (), Path("/synthetic"))
    s_settings = base.replace(horizons=(5, 10))
    s_panel = build_panel(synth, s_settings)
    features = [*s_panel.computed, *truth.signal_features, *truth.noise_features]
    synthetic = run("synthetic", s_panel, s_settings, features, args.out, "pred_equal_weight")
    table("synthetic: 12 symbols x 1000 bars, signals sig_a/sig_b at H = 5", synthetic)

    with tempfile.TemporaryDirectory() as tmp:
        write_sample_universe(tmp)
        universe = load_universe(tmp, base)
    d_panel = build_panel(universe, base)
    demo = run("demo", d_panel, base, list(d_panel.computed), args.out, "pred_equal_weight")
    table("demo: AAPL, GOOG, IBM, MSFT 2000-2013 (computed features)", demo)
    if args.print_json:
        for name, docs, col in (
            ("synthetic", synthetic, "pred_stack"),
            ("demo", demo, "pred_stack"),
            ("demo", demo, "pred_equal_weight"),
        ):
            doc = dict(docs[("fwd_ret_5", col)])
            doc["long_short"] = {k: v for k, v in doc["long_short"].items() if k != "series"}
            print(f"\n### {name} fwd_ret_5 {col} (long_short.series left out)\n")
            print(canonical_json(doc))


if __name__ == "__main__":
    main()
