"""How each stage grows with the universe: wall time and peak memory per stage, and the
growth exponent of time against rows.

    python bench/scale.py                       # 50, 200, 500, 1000 symbols x 2,500 bars x 60 features
    python bench/scale.py --sizes 500,1000      # the memory table's two sizes
    python bench/scale.py --sizes 50,200        # the first two (extrapolate to 500)
    python bench/scale.py --graph 500           # the whole Dagster graph (one attempt) at 500
    python bench/scale.py --settings config/fast.yaml --sizes 8,16 --bars 600   # a smoke run

Universes come from :mod:`cohortflow.synthetic` without the planted leaks (``sig_a``,
``sig_b`` and ``--noise`` AR(1) noise columns, 58 by default: 60 user features, plus the
standard OHLCV features), written once per size. Each size runs in its own subprocess, so
memory is that size's alone:

* stages: :func:`run.bare_graph`, the core functions the assets call (data+features,
  target ranking with the exclusions, feature selection, training), default settings with
  ``attempt_limit: 1``. The peak resident memory (VmHWM) is reset before each piece of a
  stage (``/proc/self/clear_refs``) and read after it, so each stage gets its own peak.
* ``--graph N``: ``cohortflow_job`` in process for one partition (``cli.runner``), its
  stage seconds from Dagster's step events and the process's peak RSS.

The growth exponent of a stage is the least-squares slope of log(seconds) on log(rows):
1 is linear in the rows; above 1 something grows faster than the data.

Memory table: the process's peak RSS per million panel rows, and against the float32
feature matrix (rows x features x 4 bytes, the smallest form the fits could read), with the
growth exponent of the peak (slope of log(peak) on log(rows)) and the peak it extrapolates
to at 3,000 symbols (7.5 M rows). Each child also counts its row-rounds per stage
(:mod:`cohortflow.fitlog`) for fit_efficiency against ``--reference`` (one large fit).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
# --code DIR: the children import cohortflow from DIR (e.g. an older commit's core)
if os.environ.get("COHORTFLOW_BENCH_CODE"):
    sys.path.insert(0, os.environ["COHORTFLOW_BENCH_CODE"])
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from common import machine_info  # noqa: E402
from run import STAGES, bare_graph, dagster_graph  # noqa: E402

RESULTS = REPO / "bench" / "results"
GIB = 1 << 30


# --------------------------------------------------------------------------- memory
def peak_rss_bytes() -> int:
    """The process's peak resident set since start or the last :func:`reset_peak` (VmHWM);
    ``ru_maxrss`` where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: ``5`` to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- children
def settings_yaml(base: str | None, folder: Path) -> Path:
    """``base`` (default config/default.yaml) with ``attempt_limit: 1``."""
    raw = yaml.safe_load(Path(base or REPO / "config" / "default.yaml").read_text()) or {}
    raw["attempt_limit"] = 1
    path = folder / "settings.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def child_generate(data_dir: str, n_symbols: int, n_bars: int, n_noise: int) -> dict[str, Any]:
    from cohortflow.synthetic import generate

    t0 = time.perf_counter()
    generate(data_dir, n_symbols=n_symbols, n_bars=n_bars, n_noise=n_noise, with_leaks=False)
    return {"seconds": time.perf_counter() - t0}


def child_stages(data_dir: str, settings_path: str) -> dict[str, Any]:
    """Seconds, CPU seconds, row-rounds and peak RSS of each stage of
    :func:`run.bare_graph`; panel rows and features."""
    from fit_efficiency import StageCounts

    from cohortflow.settings import load_settings

    settings = load_settings(settings_path)
    peaks: dict[str, int] = dict.fromkeys(STAGES, 0)
    cpu: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    counts = StageCounts()
    resettable = reset_peak()
    clock = [time.process_time()]

    def on_lap(stage: str) -> None:
        peaks[stage] = max(peaks[stage], peak_rss_bytes())
        reset_peak()
        counts(stage)
        now = time.process_time()
        cpu[stage] += now - clock[0]
        clock[0] = now

    seconds = bare_graph(data_dir, settings, on_lap=on_lap)
    rows = _panel_rows(data_dir, settings)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "row_rounds": {s: c.row_rounds for s, c in counts.by_stage.items()},
        "features": _panel_features(data_dir, settings),
        "load_1m": os.getloadavg()[0],
        "peak_rss": peaks,
        # resetting VmHWM resets ru_maxrss too: the process peak is the largest stage peak
        "peak_rss_process": max([*peaks.values(), peak_rss_bytes()]),
        "per_stage_peaks": resettable,
        "rows": rows,
    }


def _panel_rows(data_dir: str, settings: Any) -> int:
    """Rows of the feature panel (bars after each symbol's warm-up), without rebuilding it."""
    import pyarrow.parquet as pq

    from cohortflow.features import feature_specs, warmup_bars

    files = sorted(Path(data_dir).glob("*.parquet"))
    columns = set(pq.read_schema(files[0]).names)
    warmup = warmup_bars(feature_specs(columns, settings))
    return sum(max(pq.read_metadata(f).num_rows - warmup, 0) for f in files)


def _panel_features(data_dir: str, settings: Any) -> int:
    """Feature columns of the panel: the computed ones plus the user columns."""
    import pandas as pd

    from cohortflow.features import feature_specs, user_columns

    first = sorted(Path(data_dir).glob("*.parquet"))[0]
    bars = pd.read_parquet(first)
    return len(feature_specs(set(bars.columns), settings)) + len(user_columns(bars))


def child_reference(rows: int, features: int, rounds: int) -> dict[str, Any]:
    from fit_efficiency import reference_fit

    ref = reference_fit(rows, features, rounds)
    return {"rate": ref.rate, "text": ref.describe()}


def child_graph(data_dir: str, settings_path: str, work: str) -> dict[str, Any]:
    """The whole graph (one attempt) in process: wall, stage seconds, peak RSS."""
    os.environ["DAGSTER_HOME"] = str(Path(work) / "dagster_home")
    t0 = time.perf_counter()
    seconds, stages = dagster_graph(Path(data_dir), Path(work) / "out", Path(settings_path))
    return {
        "seconds": seconds,
        "wall_with_setup": time.perf_counter() - t0,
        "stage_seconds": stages,
        "peak_rss": peak_rss_bytes(),
    }


def in_child(*args: str, log: Path | None = None) -> dict[str, Any]:
    """Run this script with ``--child ARGS`` in a fresh process; its last stdout line is JSON."""
    cmd = [sys.executable, __file__, "--child", *args]
    with open(log or os.devnull, "a") as err:
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=err, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- analysis
def growth_exponent(rows: Sequence[float], seconds: Sequence[float]) -> float:
    """Least-squares slope of log(seconds) on log(rows) (nan with fewer than two sizes)."""
    x, y = np.log(np.asarray(rows, float)), np.log(np.maximum(np.asarray(seconds, float), 1e-6))
    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])


def extrapolate(rows: Sequence[float], seconds: Sequence[float], to_rows: float) -> float:
    """Seconds at ``to_rows`` on the fitted power law through the last two sizes."""
    if len(rows) < 2:
        return float("nan")
    k = growth_exponent(rows[-2:], seconds[-2:])
    return float(seconds[-1] * (to_rows / rows[-1]) ** k)


def table(results: Mapping[int, Mapping[str, Any]]) -> list[str]:
    sizes = sorted(results)
    rows = [results[n]["rows"] for n in sizes]
    head = f"{'stage':<19}" + "".join(f"{f'{n} sym s':>11}{'GiB':>6}" for n in sizes)
    head += f"{'exponent':>10}"
    out = [
        "rows: " + ", ".join(f"{n} symbols -> {r:,}" for n, r in zip(sizes, rows, strict=True)),
        head,
        "-" * len(head),
    ]
    totals = [0.0] * len(sizes)
    for stage in STAGES:
        secs = [results[n]["seconds"][stage] for n in sizes]
        totals = [a + b for a, b in zip(totals, secs, strict=True)]
        cells = "".join(
            f"{s:>11.1f}{results[n]['peak_rss'][stage] / GIB:>6.2f}"
            for n, s in zip(sizes, secs, strict=True)
        )
        out.append(f"{stage:<19}{cells}{growth_exponent(rows, secs):>10.2f}")
    cells = "".join(
        f"{t:>11.1f}{results[n]['peak_rss_process'] / GIB:>6.2f}"
        for n, t in zip(sizes, totals, strict=True)
    )
    out.append(f"{'total (process)':<19}{cells}{growth_exponent(rows, totals):>10.2f}")
    return out


def memory_table(results: Mapping[int, Mapping[str, Any]]) -> list[str]:
    """Peak RSS per million rows and against the float32 feature matrix, per size; the
    growth exponent of the peak and its extrapolation to 3,000 symbols (7.5 M rows)."""
    sizes = sorted(results)
    rows = [results[n]["rows"] for n in sizes]
    peaks = [results[n]["peak_rss_process"] for n in sizes]
    head = f"{'symbols':>8}{'rows':>12}{'features':>10}{'peak GiB':>10}{'GiB/M rows':>12}"
    head += f"{'x f32 matrix':>14}"
    out = ["memory (process peak RSS):", head, "-" * len(head)]
    for n, r, p in zip(sizes, rows, peaks, strict=True):
        feats = results[n].get("features") or 0
        matrix = r * feats * 4
        ratio = p / matrix if matrix else float("nan")
        out.append(
            f"{n:>8}{r:>12,}{feats:>10}{p / GIB:>10.2f}{p / GIB / (r / 1e6):>12.2f}{ratio:>14.2f}"
        )
    k = growth_exponent(rows, peaks)
    if len(sizes) >= 2:
        at = 7.5e6
        est = peaks[-1] * (at / rows[-1]) ** k
        out.append(
            f"peak growth exponent {k:.2f}; extrapolated to 7.5 M rows (3,000 symbols): "
            f"{est / GIB:.1f} GiB"
        )
    return out


def efficiency_lines(
    results: Mapping[int, Mapping[str, Any]], reference: Mapping[str, Any] | None
) -> list[str]:
    """fit_efficiency per size (overall and per stage), and CPU seconds per stage."""
    out = []
    for n in sorted(results):
        r = results[n]
        if "cpu_seconds" not in r:
            continue
        cpu = ", ".join(f"{s} {r['cpu_seconds'][s]:.0f}" for s in STAGES)
        line = f"{n} symbols: CPU s {cpu}; load {r.get('load_1m', float('nan')):.1f}"
        if reference:
            eff = {
                s: r["row_rounds"][s] / r["seconds"][s] / reference["rate"]
                if r["seconds"][s] > 0
                else float("nan")
                for s in STAGES
            }
            total = sum(r["row_rounds"].values()) / sum(r["seconds"].values()) / reference["rate"]
            line += (
                f"; fit_efficiency {total:.3f} ("
                + ", ".join(f"{s} {v:.3f}" for s, v in eff.items())
                + ")"
            )
        out.append(line)
    return out


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        kind, *rest = argv[1:]
        fn = {
            "generate": child_generate,
            "stages": child_stages,
            "graph": child_graph,
            "reference": child_reference,
        }[kind]
        typed = [int(a) if a.isdigit() else a for a in rest]
        print(json.dumps(fn(*typed)), flush=True)
        return 0

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200,500,1000", help="symbols per universe")
    parser.add_argument("--bars", type=int, default=2500)
    parser.add_argument("--noise", type=int, default=58, help="noise columns (+2 signals)")
    parser.add_argument("--settings", default=None, help="base settings YAML (default: defaults)")
    parser.add_argument("--graph", type=int, default=0, help="also run the whole graph at N")
    parser.add_argument("--work", default=None, help="keep universes here (default: temp)")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse sizes measured before in --work"
    )
    parser.add_argument(
        "--reference", default="500000,60,200",
        help="rows,features,rounds of the reference fit for fit_efficiency (0: none)",
    )  # fmt: skip
    parser.add_argument(
        "--code", default=None, help="the children import cohortflow from this folder"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.code:
        os.environ["COHORTFLOW_BENCH_CODE"] = str(Path(args.code).resolve())

    work = Path(args.work or tempfile.mkdtemp(prefix="cohortflow-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "children.log"
    settings_path = settings_yaml(args.settings, work)
    info = machine_info()
    header = [
        f"scale: {args.bars} bars x {args.noise + 2} user features (synthetic, no planted "
        f"leaks), settings {args.settings or 'defaults'} with attempt_limit 1"
        + (f"; core from {args.code}" if args.code else ""),
        "machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "note: a shared 2-core machine; single runs per size, so treat small differences as noise",
    ]
    print("\n".join(header), flush=True)

    def universe(n: int) -> Path:
        data = work / f"u{n}_{args.bars}_{args.noise}"
        if not (data / ".complete").exists():
            got = in_child("generate", str(data), str(n), str(args.bars), str(args.noise), log=log)
            (data / ".complete").write_text("")
            print(f"  generated {n} symbols in {got['seconds']:.0f} s", flush=True)
        return data

    results: dict[int, dict[str, Any]] = {}
    tag = hashlib.sha256(settings_path.read_bytes() + str(args.code).encode()).hexdigest()[:8]
    for n in sizes:
        data = universe(n)
        # a size measured before with the same settings in this --work folder is reused
        cached = work / f"stages_{n}_{args.bars}_{args.noise}_{tag}.json"
        if args.reuse and cached.exists():
            results[n] = json.loads(cached.read_text())
            print(f"  {n} symbols: reusing {cached}", flush=True)
        else:
            results[n] = in_child("stages", str(data), str(settings_path), log=log)
            cached.write_text(json.dumps(results[n]))
        secs = results[n]["seconds"]
        print(
            f"  {n} symbols, {results[n]['rows']:,} rows: "
            + ", ".join(
                f"{s} {secs[s]:.1f}s/{results[n]['peak_rss'][s] / GIB:.2f}GiB" for s in STAGES
            ),
            flush=True,
        )
    reference = None
    if args.reference != "0":
        reference = in_child("reference", *args.reference.split(","), log=log)
        print("  " + reference["text"], flush=True)
    lines = header + table(results) + memory_table(results) + efficiency_lines(results, reference)
    sizes_done = sorted(results)
    if len(sizes_done) >= 2 and 500 not in results:
        rows = [results[n]["rows"] for n in sizes_done]
        to_rows = rows[-1] * 500 / sizes_done[-1]
        est = {
            s: extrapolate(rows, [results[n]["seconds"][s] for n in sizes_done], to_rows)
            for s in STAGES
        }
        lines.append(
            "extrapolated to 500 symbols (power law through the last two sizes): "
            + ", ".join(f"{s} {v:.0f}s" for s, v in est.items())
            + f"; total {sum(est.values()):.0f}s"
        )
    exps = {
        s: growth_exponent(
            [results[n]["rows"] for n in sizes_done],
            [results[n]["seconds"][s] for n in sizes_done],
        )
        for s in STAGES
    }
    if args.graph:
        data = universe(args.graph)
        g = in_child(
            "graph", str(data), str(settings_path), str(work / f"graph_{args.graph}"), log=log
        )
        lines.append(
            f"whole graph, {args.graph} symbols, one attempt (cohortflow_job in process): "
            f"{g['seconds']:.0f} s, peak RSS {g['peak_rss'] / GIB:.2f} GiB; stages "
            + ", ".join(f"{k} {v:.0f}s" for k, v in g["stage_seconds"].items())
        )
    lines.append(
        " ".join(f"exp_{s}={v:.2f}" for s, v in exps.items())
        + " "
        + " ".join(f"peak_gib_{n}={results[n]['peak_rss_process'] / GIB:.2f}" for n in sizes_done)
        + f" cores={info['cores']} bars={args.bars} features={args.noise + 2}"
    )
    print("\n".join(lines[len(header) :]))
    from cohortflow.fsio import atomic_write_text

    stamp = time.strftime("%Y%m%dT%H%M%S")
    atomic_write_text(RESULTS / f"scale_{stamp}.txt", "\n".join(lines) + "\n")
    atomic_write_text(RESULTS / f"scale_{stamp}.json", json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
