"""Benchmark: the graph on cohortflow's SQLite storage against Dagster's own.

    python bench/bench_storage.py [--full] [--repeats N]

Both sides run one attempt of ``cohortflow_job`` in process (as ``cohortflow run`` does,
``bench/run.py``'s graph case: the quick one unless ``--full``) on the same data and
settings, each with its own ``DAGSTER_HOME`` and ``CohortflowInstance``:

* ``dagster``: a ``storage: sqlite:`` block, i.e. Dagster's ``DagsterSqliteStorage``, which
  builds a SQLAlchemy engine and opens a SQLite connection for every use;
* ``cohortflow``: no storage block, so the instance's default
  (:class:`resources.sqlite_storage.CohortflowSqliteStorage`, one engine and one open
  connection kept per shard).

Sides alternate after one untimed warm-up each. Prints the samples and, last,
``storage_speedup=... dagster_s=... cohortflow_s=... steps=...`` (medians).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from run import FULL_CASE, QUICK_CASE, alternate, dagster_graph, graph_steps, median_s, write_case  # noqa: E402, I001

from cli.main import new_home_yaml  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="bench/run.py's full graph case")
    parser.add_argument("--repeats", type=int, default=None, help="pairs (default 8, full 3)")
    args = parser.parse_args()
    case = FULL_CASE if args.full else QUICK_CASE
    repeats = args.repeats or (3 if args.full else 8)
    work = Path(tempfile.mkdtemp(prefix="cohortflow-bench-storage-"))
    data_dir, settings_path, _ = write_case(case, work / "graph")
    homes = {}
    for side, extra in (("dagster", f"storage:\n  sqlite:\n    base_dir: {work / 'dagster'}\n"),
                        ("cohortflow", "")):  # fmt: skip
        home = work / side
        home.mkdir()
        (home / "dagster.yaml").write_text(new_home_yaml() + extra)
        homes[side] = home
    runs = iter(range(1_000_000))

    def side(name: str):
        def one_run() -> None:
            os.environ["DAGSTER_HOME"] = str(homes[name])
            dagster_graph(data_dir, work / f"out_{next(runs)}", settings_path)

        return one_run

    times = alternate({name: side(name) for name in homes}, repeats)
    d, c = median_s(times["dagster"]), median_s(times["cohortflow"])
    print(f"case: {case.describe()}")
    for name, samples in times.items():
        print(f"  {name:10s} median {median_s(samples):7.3f} s  {[round(x, 2) for x in samples]}")
    steps = graph_steps(settings_path, work)
    print(f"storage_speedup={d / c:.3f} dagster_s={d:.3f} cohortflow_s={c:.3f} steps={steps}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
