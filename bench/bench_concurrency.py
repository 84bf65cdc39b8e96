"""``concurrency_ratio``: three partition runs one after another / the same three together.

Three universes (three batches: three partitions of the graph) are run with the
``cohortflow run`` command, each in its own process, into one output root:

* **one after another** in a Dagster home whose run queue allows one run at a time, so each
  run fits on every core (``n_threads: 0`` → cores / 1);
* **together**, the three processes started at once, in a home that allows three runs at a
  time: each run reads that limit and fits on cores / 3 threads (at least one).

Goal: ratio >= 0.85, i.e. running partitions side by side costs at most ~18 % more wall
time than running them in turn, because the fits share the cores instead of fighting for
them. The context row ``oversubscribed`` starts the three together in a home that allows
one run (so each fits on every core): what running side by side costs without the
derived thread counts.

    python bench/bench_concurrency.py [--quick]

The last line holds ``key=value`` pairs (bench/run.py reads them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, Row, format_table, machine_info, median_s  # noqa: E402

sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

N_RUNS = 3


def write_universes(work: Path, quick: bool) -> tuple[list[Path], Path]:
    """Three synthetic universes (different seeds: different batches) and the settings."""
    from cohortflow.synthetic import generate

    n_symbols, n_bars = (4, 400) if quick else (8, 1500)
    # a batch is its set of symbols: one generated universe cut into three disjoint ones
    pool = work / "pool"
    generate(pool, n_symbols=n_symbols * N_RUNS, n_bars=n_bars, n_noise=4, with_leaks=False)
    files = sorted(pool.iterdir())
    dirs = []
    for k in range(N_RUNS):
        data = work / f"universe_{k}"
        data.mkdir()
        for f in files[k::N_RUNS]:
            f.rename(data / f.name)
        dirs.append(data)
    raw = yaml.safe_load((REPO / "config" / "default.yaml").read_text()) or {}
    raw.update(
        {"horizons": [5], "attempt_limit": 1, "n_threads": 0, "symbol_views": 2}
        | (
            {"min_rows": 200, "n_splits": 3, "permutation_repeats": 1, "n_probes": 2,
             "models": {"n_estimators": 40, "num_leaves": 7, "max_depth": 3}}
            if quick
            else {}
        )
    )  # fmt: skip
    settings = work / "settings.yaml"
    settings.write_text(yaml.safe_dump(raw))
    return dirs, settings


def home_allowing(work: Path, name: str, runs: int) -> Path:
    from cohortflow_dagster.resources.home import new_home_yaml

    home = work / name
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(new_home_yaml(runs))
    return home


def start(data: Path, out: Path, settings: Path, home: Path) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    env.pop("COHORTFLOW_RUNS_AT_ONCE", None)  # each run derives it from its home
    return subprocess.Popen(
        [sys.executable, "-m", "cohortflow_dagster.cli.main", "run", "--data", str(data),
         "--out", str(out), "--settings", str(settings)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def wait_all(procs: list[subprocess.Popen]) -> None:
    failed = ""
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0 and not failed:
            failed = f"cohortflow run failed ({p.returncode}): {err[-2000:]}"
    if failed:
        raise RuntimeError(failed)


def serial(dirs: list[Path], out: Path, settings: Path, home: Path) -> float:
    t0 = time.perf_counter()
    for data in dirs:
        wait_all([start(data, out, settings, home)])
    return time.perf_counter() - t0


def together(dirs: list[Path], out: Path, settings: Path, home: Path) -> float:
    t0 = time.perf_counter()
    wait_all([start(data, out, settings, home) for data in dirs])
    return time.perf_counter() - t0


def measure(quick: bool, work: Path) -> tuple[list[Row], list[str]]:
    dirs, settings = write_universes(work, quick)
    one = home_allowing(work, "home_one_run", 1)
    three = home_allowing(work, "home_three_runs", N_RUNS)
    repeats = 1 if quick else 3
    times: dict[str, list[float]] = {"serial": [], "together": [], "oversubscribed": []}
    sides = {
        "serial": lambda out: serial(dirs, out, settings, one),
        "together": lambda out: together(dirs, out, settings, three),
        "oversubscribed": lambda out: together(dirs, out, settings, one),
    }
    runs = iter(range(1_000_000))
    for r in range(repeats):
        for name in sides if r % 2 == 0 else list(sides)[::-1]:
            # a fresh root each time: every run is a first attempt of its batch
            times[name].append(sides[name](work / f"out_{next(runs)}"))
    s, t, o = (median_s(times[k]) for k in ("serial", "together", "oversubscribed"))
    cores = machine_info()["cores"]
    note = f"{N_RUNS} cohortflow run processes, {len(dirs)} batches, {cores} cores"
    rows = [
        Row(
            "concurrency_ratio", f"{N_RUNS} runs in turn", s, f"{N_RUNS} runs together", t,
            s / t, ">= 0.85",
            note + f"; in turn: home allows 1 run (all cores a fit), together: home allows "
            f"{N_RUNS} runs (cores / {N_RUNS} threads a fit)",
        ),
        Row(
            "concurrency_oversubscribed", f"{N_RUNS} runs in turn", s,
            f"{N_RUNS} together, all cores each", o, s / o, "(context)",
            "the three together with every run fitting on every core: what derived thread "
            "counts avoid",
        ),
    ]  # fmt: skip
    lines = [
        "concurrency samples (s): "
        + ", ".join(f"{k} {[round(x, 1) for x in v]}" for k, v in times.items())
    ]
    return rows, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cohortflow-concurrency-") as tmp:
        rows, lines = measure(args.quick, Path(tmp))
    print("\n".join(lines + format_table(rows)))
    values = {r.measure: r.value for r in rows}
    print(
        f"concurrency_ratio={values['concurrency_ratio']:.3f} "
        f"concurrency_oversubscribed={values['concurrency_oversubscribed']:.3f} "
        f"cores={machine_info()['cores']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
