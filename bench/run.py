"""All benchmarks of ``make bench``, each comparison run in this one process, both sides on
the same data, folds and model settings.

    python bench/run.py                 # full (tens of minutes on 2 shared cores)
    BENCH_QUICK=1 python bench/run.py   # small sizes, under two minutes on 2 cores

Measures:

* ``graph_overhead`` = wall time of the whole graph (one attempt, ``cohortflow_job``
  executed in process for one partition, through :func:`cli.runner.run_universe` as the
  ``cohortflow run`` command does) / wall time of :func:`bare_graph`, which calls the same
  core functions in the same order with no Dagster and no store (goal <= 1.10), with
  ``graph_step_cost_s``: the difference spread over the run's steps (Dagster's fixed cost
  a step, which the tiny quick case is made of);
* ``oof_overhead`` and ``stack_speedup``: ``bench/bench_oof.py``'s measurements;
* ``store_write_ratio`` = bare pyarrow write time / time of the IO manager's
  ``handle_output`` for the same OOF frame (goal >= 0.9); ``store_write_ratio_durable``
  gives the bare side the fsync the store's atomic writes do;
* ``concurrency_ratio``: ``bench/bench_concurrency.py``, three partition runs in turn / the
  same three together (goal >= 0.85);
* ``lookup_ms`` / ``list_ms``: ``bench/bench_index.py`` on 100,000 cohorts (5,000 quick).

Times are medians of repeats (5 for the full graph case), sides alternating; the machine
(cores, CPU model, load, versions) is printed. The table and the last line (``key=value`` pairs) also go to
``bench/results/bench_{time}.txt`` and ``bench/results/latest.txt``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO,
    Row,
    alternate,
    captured,
    format_table,
    last_line_pairs,
    machine_info,
    median_s,
    save,
)

sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from cohortflow.settings import Settings, load_settings  # noqa: E402

#: the graph's steps (exclusions are found in the target_ranking step)
STAGES = ("data", "target_ranking", "feature_selection", "training")


# --------------------------------------------------------------------------- the graph
@dataclass(frozen=True)
class GraphCase:
    """A synthetic universe and the settings both sides of graph_overhead run it with."""

    n_symbols: int
    n_bars: int
    n_noise: int
    settings: dict[str, Any]  # over config/default.yaml; attempt_limit is forced to 1

    def describe(self) -> str:
        return (
            f"{self.n_symbols} symbols x {self.n_bars} bars, {self.n_noise + 2} user features "
            f"(synthetic, no planted leaks), settings {self.settings}"
        )


QUICK_CASE = GraphCase(
    4,
    400,
    4,
    {
        "horizons": [5],
        "min_rows": 200,
        "n_splits": 3,
        "quick_estimators": 20,
        "permutation_repeats": 1,
        "n_probes": 2,
        "symbol_views": 2,
        "models": {"n_estimators": 30, "num_leaves": 7, "max_depth": 3},
    },
)
#: a small research universe: 40 symbols x 8 years of daily bars, 2 targets
FULL_CASE = GraphCase(40, 2000, 28, {"horizons": [5, 10], "symbol_views": 3})


def write_case(case: GraphCase, folder: Path) -> tuple[Path, Path, Settings]:
    """The case's bar files and settings YAML under ``folder``."""
    from cohortflow.synthetic import generate

    data_dir = folder / "data"
    generate(
        data_dir,
        n_symbols=case.n_symbols,
        n_bars=case.n_bars,
        n_noise=case.n_noise,
        with_leaks=False,
    )
    raw = yaml.safe_load((REPO / "config" / "default.yaml").read_text()) or {}
    raw.update(case.settings)
    raw["attempt_limit"] = 1
    settings_path = folder / "settings.yaml"
    settings_path.write_text(yaml.safe_dump(raw))
    return data_dir, settings_path, load_settings(settings_path)


def exclusions_and_ranking(t: Any, previous: Any) -> tuple[Any, Any]:
    """``stages.exclusions_and_ranking``, or find_exclusions then rank with an older core
    (``--code``) that has no such stage function."""
    from cohortflow import stages

    if hasattr(stages, "exclusions_and_ranking"):
        return stages.exclusions_and_ranking(t, previous)
    excl = stages.find_exclusions(t, previous)
    return excl, stages.rank(t, excl)


def bare_graph(
    data_dir: str | Path,
    settings: Settings,
    attempt: int = 0,
    on_lap: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """The computations of one attempt of the graph with no Dagster and no store: the
    functions of :mod:`cohortflow.stages` the asset bodies call, in their order.

    Included: loading and validating the bars, the feature panel, the holdout split, leak
    detection, target ranking and feature selection (both views, with their cohort drafts),
    OOF, the stack, the portfolio and the training cohort. Left out, because they are what
    the graph adds: artifact files, the seal, cohort finalisation (manifests, diffs, the
    index), the registry, plots and the evaluation's reload of the saved stack. Returns wall
    seconds per stage (the laps of ``cli.runner``'s step events); ``on_lap(stage)`` is
    called as each piece of a stage ends (stages repeat per target).
    """
    from cohortflow import stages
    from cohortflow.bars import load_universe
    from cohortflow.features import build_panel

    seconds = dict.fromkeys(STAGES, 0.0)
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] += now - clock
        if on_lap is not None:
            on_lap(stage)
        clock = time.perf_counter()

    universe = load_universe(data_dir, settings)
    panel = build_panel(universe, settings)
    lap("data")
    for horizon, target in zip(settings.horizons, settings.targets, strict=True):
        t = stages.TargetAttempt(
            target, horizon, universe.batch, attempt, settings, panel, universe
        )
        excl, _ = exclusions_and_ranking(t, None)
        lap("target_ranking")
        imps = stages.importances(t, excl)
        fsets = stages.featuresets(t, imps, excl)
        stages.selection_snapshots(t, imps, fsets, excl)
        lap("feature_selection")
        oof = stages.oof_dataset(t, fsets)
        stack = stages.stacking_model(t, fsets, oof)
        folio = stages.portfolio(t, stack.test_predictions)
        scores = {k: v for k, v in stack.test_metrics.items() if isinstance(v, dict)}
        evaluated = {"metrics_from_loaded_model": scores}
        stages.training_snapshots(t, fsets, oof, evaluated, folio)
        lap("training")
    return seconds


def dagster_graph(
    data_dir: Path, output_root: Path, settings_path: Path
) -> tuple[float, dict[str, float]]:
    """One attempt of ``cohortflow_job`` in process, as ``cohortflow run`` does it: seconds
    of ``execute_in_process`` alone (registration and reading back excluded) and per stage
    (from Dagster's step events)."""
    from cohortflow_dagster.cli.runner import run_universe

    result = run_universe(str(data_dir), str(output_root), str(settings_path))
    outcome = result.attempts[0]
    return outcome.seconds, outcome.stage_seconds


def measure_graph(quick: bool, work: Path) -> tuple[list[Row], list[str]]:
    case = QUICK_CASE if quick else FULL_CASE
    # a side's LightGBM fits vary by +-10 % run to run on 2 shared cores: 5 repeats
    repeats = 2 if quick else 5
    data_dir, settings_path, settings = write_case(case, work / "graph")
    os.environ["DAGSTER_HOME"] = str(work / "dagster_home")
    runs = iter(range(1_000_000))
    dagster_stages: list[dict[str, float]] = []
    bare_stages: list[dict[str, float]] = []

    def dagster_side() -> None:
        # a fresh output root each time: every run writes a first attempt, no baselines
        _, stages = dagster_graph(data_dir, work / f"out_{next(runs)}", settings_path)
        dagster_stages.append(stages)

    import fit_efficiency as fe  # row-rounds per stage against one large fit (issue 18)

    reference = fe.reference_fit(*(fe.QUICK_REFERENCE if quick else fe.FULL_REFERENCE), settings)
    counters: list[fe.StageCounts] = []

    def bare_side() -> None:
        counters.append(fe.StageCounts())
        bare_stages.append(bare_graph(data_dir, settings, on_lap=counters[-1]))

    # full size: one-time costs (imports, thread pools) are noise next to minutes of fitting,
    # so no warm-up run; quick: they are not, so one untimed run of each side first
    cpu: dict[str, list[float]] = {}
    times = alternate({"dagster": dagster_side, "bare": bare_side}, repeats, quick, cpu)
    skip = 1 if quick else 0  # the warm-up runs' stage times
    d, b = median_s(times["dagster"]), median_s(times["bare"])
    steps = graph_steps(settings_path, work)
    lines = [
        f"graph case: {case.describe()}",
        "  per stage, median s (dagster from step events | bare): "
        + ", ".join(
            f"{s} {median_s([x.get(s, 0.0) for x in dagster_stages[skip:]]):.1f}"
            f"|{median_s([x[s] for x in bare_stages[skip:]]):.1f}"
            for s in STAGES
        ),
        f"  samples: dagster {[round(x, 1) for x in times['dagster']]}, "
        f"bare {[round(x, 1) for x in times['bare']]}",
        f"  CPU s: dagster {[round(x, 1) for x in cpu['dagster']]}, "
        f"bare {[round(x, 1) for x in cpu['bare']]}",
        f"  Dagster's own cost: {d - b:.1f} s over {steps} steps, "
        f"{(d - b) / steps:.2f} s a step; it does not grow with the data",
    ]
    row = Row(
        "graph_overhead",
        "cohortflow_job in process",
        d,
        "bare_graph (core calls)",
        b,
        d / b,
        "<= 1.10",
        "dagster: steps, IO manager writes every artifact (fsync'd), cohort snapshots, "
        "index, plots, evaluation reload; bare: the same core computations only",
        {"graph_step_cost_s": f"{(d - b) / steps:.3f}", "graph_steps": str(steps)},
    )
    dc, bc = median_s(cpu["dagster"]), median_s(cpu["bare"])
    cpu_row = Row(
        "graph_overhead_cpu",
        "cohortflow_job, CPU s",
        dc,
        "bare_graph, CPU s",
        bc,
        dc / bc,
        "(context)",
        "the same repeats in the process's CPU seconds (all threads): the work the graph "
        "adds, without the VM's wall noise (the fsyncs' waits are not in it)",
    )
    eff_row = fe.bench_row(Row, counters[skip:], bare_stages[skip:], reference)
    return [row, cpu_row, eff_row], [*lines, "  " + reference.describe()]


def graph_steps(settings_path: Path, work: Path) -> int:
    """Steps of one attempt of ``cohortflow_job`` for these settings (assets and checks)."""
    from cohortflow_dagster.cli.runner import whole_graph_job

    job = whole_graph_job(str(work / "graph" / "data"), str(work / "steps"), str(settings_path))
    return len(job.nodes)


# --------------------------------------------------------------------------- OOF, stacking
def measure_oof(quick: bool) -> tuple[list[Row], list[str]]:
    import bench_oof

    out = captured(lambda: bench_oof.main(["--quick"] if quick else []))
    kv = last_line_pairs(out)
    table = {}
    for line in out.splitlines():
        parts = line.rsplit(None, 3)
        if len(parts) == 4 and parts[1].replace(".", "", 1).isdigit():
            table[parts[0].strip()] = float(parts[1])
    bare = table.get("bare loop: LGBMRegressor + XGBRegressor fit/predict", float("nan"))
    oof = table.get("generate_oof (same folds, same settings)", float("nan"))
    sk = table.get("sklearn StackingRegressor-style: cross_val_predict + meta", float("nan"))
    meta = table.get("fit_stacking meta stage: reuse OOF columns", float("nan"))
    seq = next((v for k, v in table.items() if k.startswith("generate_oof, 1 fold")), float("nan"))
    par = next((v for k, v in table.items() if " folds at once" in k), float("nan"))
    oof_cpu = table.get("generate_oof, CPU seconds", float("nan"))
    bare_cpu = table.get("bare loop, CPU seconds", float("nan"))
    rows = [
        Row(
            "oof_overhead",
            "generate_oof",
            oof,
            "bare LGBM+XGB fold loop",
            bare,
            float(kv["oof_overhead"]),
            "<= 1.05",
            f"bench_oof.py, {kv.get('rows')} rows",
        ),
        Row(
            "oof_overhead_cpu",
            "generate_oof, CPU s",
            oof_cpu,
            "bare loop, CPU s",
            bare_cpu,
            float(kv["oof_overhead_cpu"]),
            "(context)",
            "the same pairs in the process's CPU seconds: the work, without the VM's wall noise",
        ),
        Row(
            "stack_speedup",
            "cross_val_predict + meta",
            sk,
            "meta on saved OOF",
            meta,
            float(kv["stack_speedup"]),
            ">= 10",
            "bench_oof.py",
        ),
        Row(
            "oof_fold_parallel_speedup",
            "OOF, folds one at a time",
            seq,
            "OOF, folds side by side",
            par,
            float(kv["fold_parallel_speedup"]),
            "(context)",
            "bench_oof.py: settings.fold_workers folds at once, threads split, same cores",
        ),
    ]
    return rows, ["bench_oof.py: " + out.strip().splitlines()[0]]


# --------------------------------------------------------------------------- store
def oof_like_frame(n_dates: int, n_symbols: int, seed: int = 0) -> pd.DataFrame:
    """An OOF frame of the shape generate_oof returns (timestamp, symbol, fold, y_true,
    pred_lightgbm, pred_xgboost; str symbols as pandas gives them)."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2012-01-02", periods=n_dates).to_numpy()
    n = n_dates * n_symbols
    return pd.DataFrame(
        {
            "timestamp": np.repeat(dates, n_symbols),
            "symbol": np.tile(np.array([f"S{k:03d}" for k in range(n_symbols)]), n_dates),
            "fold": np.repeat(np.arange(n_dates) * 5 // n_dates, n_symbols).astype(np.int32),
            "y_true": rng.standard_normal(n) * 0.02,
            "pred_lightgbm": rng.standard_normal(n) * 0.002,
            "pred_xgboost": rng.standard_normal(n) * 0.002,
        }
    )


def measure_store(quick: bool, work: Path) -> tuple[list[Row], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cohortflow.layout import Scope
    from cohortflow.splits import PurgedKFold, make_fold_plan
    from cohortflow.store import Store

    n_dates, n_symbols, repeats = (400, 250, 5) if quick else (2000, 500, 7)
    frame = oof_like_frame(n_dates, n_symbols)
    # a panel: label ends (each symbol's bar 5 later) are required since issue 17
    label_end = frame.groupby("symbol")["timestamp"].shift(-5).to_numpy()
    fold_plan = make_fold_plan(PurgedKFold(5, 5, 5), frame["timestamp"].to_numpy(), label_end)
    scope = Scope("fwd_ret_5", "TRAINING", "CROSS_SECTIONAL", "ab12cd34ef56", 0)
    bare_dir = work / "bare_out"
    bare_dir.mkdir(parents=True, exist_ok=True)

    def bare(fsync: bool) -> Callable[[], None]:
        def write() -> None:
            path = bare_dir / "oof_predictions.parquet"
            pq.write_table(
                pa.Table.from_pandas(frame, preserve_index=False), path, compression="zstd"
            )
            if fsync:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

        return write

    # the store side is the IO manager's handle_output, as a step calls it: OOFResult in,
    # Store.write_oof and the output metadata (paths, sha256, rows) out
    from dagster import AssetKey, DagsterInstance, build_output_context

    from cohortflow.oof import OOFResult
    from cohortflow_dagster.io_managers.canonical_store import CanonicalStoreIOManager
    from cohortflow_dagster.io_managers.keys import KIND_KEY
    from cohortflow_dagster.partitions import (
        attempt_dim_partitions,
        attempt_key,
        attempt_partitions,
        batch_partitions,
    )

    value = OOFResult(frame, fold_plan, (), ("lightgbm", "xgboost"))
    io_manager = CanonicalStoreIOManager(root=str(work / "store_out"))
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(batch_partitions.name, [scope.batch])
        instance.add_dynamic_partitions(attempt_dim_partitions.name, [str(scope.attempt)])
        contexts = [  # one per call (a context takes its metadata once), made untimed
            build_output_context(
                asset_key=AssetKey([scope.target, "oof_dataset"]),
                partition_key=attempt_key(scope.batch, scope.attempt),
                definition_metadata={KIND_KEY: "oof_dataset"},
                asset_partitions_def=attempt_partitions,
                instance=instance,
            )
            for _ in range(repeats + 1)
        ]
        times = alternate(
            {
                "bare": bare(False),
                "bare_fsync": bare(True),
                "io_manager": lambda: io_manager.handle_output(contexts.pop(), value),
            },
            repeats,
        )
    b, bf, s = (median_s(times[k]) for k in ("bare", "bare_fsync", "io_manager"))
    store = Store(work / "store_out")
    size = scope.oof_path(store.root).stat().st_size
    note = f"{len(frame)} rows, {size / 1e6:.1f} MB parquet"
    rows = [
        Row(
            "store_write_ratio",
            "bare pq.write_table",
            b,
            "IO manager handle_output",
            s,
            b / s,
            ">= 0.9",
            note + "; IO manager: fixed schema, atomic tmp+fsync+replace, sha256, fold plan, "
            "metadata",
        ),
        Row(
            "store_write_ratio_durable",
            "bare write + fsync",
            bf,
            "IO manager handle_output",
            s,
            bf / s,
            "(context)",
            "the bare side given the fsync the store's atomic writes do",
        ),
    ]
    return rows, []


# --------------------------------------------------------------------------- index
def measure_index(quick: bool) -> tuple[list[Row], list[str], int]:
    import bench_index

    out = captured(lambda: bench_index.main(["--quick"] if quick else []))
    kv = last_line_pairs(out)
    n = int(kv["n"])
    rows = [
        Row(
            "lookup_ms",
            "index find_cohort",
            float(kv["lookup_ms"]) / 1e3,
            "walk the tree",
            float(kv["walk_lookup_ms"]) / 1e3,
            float(kv["lookup_ms"]),
            "< 20 ms",
            f"bench_index.py, {n} cohorts",
        ),
        Row(
            "list_ms",
            "index list(target)",
            float(kv["list_ms"]) / 1e3,
            "walk_cohorts(target)",
            float(kv["walk_list_ms"]) / 1e3,
            float(kv["list_ms"]),
            "< 200 ms",
            f"bench_index.py, {n} cohorts",
        ),
    ]
    return rows, [], n


# --------------------------------------------------------------------------- concurrency
def measure_concurrency(quick: bool, work: Path) -> tuple[list[Row], list[str]]:
    import bench_concurrency

    return bench_concurrency.measure(quick, work / "concurrency")


# --------------------------------------------------------------------------- report
def main() -> int:
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    started = time.perf_counter()
    info = machine_info()
    lines = [
        f"cohortflow bench ({'quick' if quick else 'full'}), {datetime.now(UTC).isoformat()}",
        "machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "note: timings on a shared machine are noisy; ratios are medians of alternating repeats",
    ]
    print("\n".join(lines), flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="cohortflow-bench-") as tmp:
        work = Path(tmp)
        for name, step in (
            ("graph", lambda: measure_graph(quick, work)),
            ("oof", lambda: measure_oof(quick)),
            ("store", lambda: measure_store(quick, work)),
            ("concurrency", lambda: measure_concurrency(quick, work)),
        ):
            t0 = time.perf_counter()
            got, extra = step()
            got = [got] if isinstance(got, Row) else got
            rows += got
            lines += extra
            print("\n".join(extra + format_table(got)[2:]), flush=True)
            print(f"  ({name}: {time.perf_counter() - t0:.0f} s)", flush=True)
        index_rows, extra, n_cohorts = measure_index(quick)
        rows += index_rows
        lines += extra
    values = {r.measure: r.value for r in rows}
    pairs = {
        "graph_overhead": f"{values['graph_overhead']:.3f}",
        "graph_overhead_cpu": f"{values['graph_overhead_cpu']:.3f}",
        "oof_overhead": f"{values['oof_overhead']:.3f}",
        "oof_overhead_cpu": f"{values['oof_overhead_cpu']:.3f}",
        "stack_speedup": f"{values['stack_speedup']:.1f}",
        "oof_fold_parallel_speedup": f"{values['oof_fold_parallel_speedup']:.3f}",
        "store_write_ratio": f"{values['store_write_ratio']:.3f}",
        "store_write_ratio_durable": f"{values['store_write_ratio_durable']:.3f}",
        "concurrency_ratio": f"{values['concurrency_ratio']:.3f}",
        "concurrency_oversubscribed": f"{values['concurrency_oversubscribed']:.3f}",
        "lookup_ms": f"{values['lookup_ms']:.2f}",
        "list_ms": f"{values['list_ms']:.2f}",
        **{k: v for r in rows for k, v in r.pairs.items()},
        "n_cohorts": str(n_cohorts),
        "quick": str(int(quick)),
        "cores": info["cores"],
        "cpu": info["cpu"].replace(" ", "_"),
        "load_1m": info["load_1m"],
        "python": info["python"],
        "seconds": f"{time.perf_counter() - started:.0f}",
    }
    final = ["", *format_table(rows), " ".join(f"{k}={v}" for k, v in pairs.items())]
    print("\n".join(final))
    save(lines + final)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
