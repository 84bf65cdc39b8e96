"""Same data + same settings + same code => byte-identical artifacts and the same cohort ids
(DESIGN §4). The whole graph (every attempt) runs twice with ``cohortflow run``, in two
processes with different hash seeds, two output roots and two DAGSTER_HOMEs; every file
must be identical except the ``run`` key of metadata.json. The index and the lock files
(``_index/``, ``_locks/``) are bookkeeping, not artifacts, and are not compared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
FAST = PROJECT / "config" / "fast.yaml"
COHORTFLOW = Path(sys.executable).parent / "cohortflow"  # the console script
NOT_ARTIFACTS = ("_index", "_locks")
# the Dagster event log in memory: its SQLite file costs half the wall time of a small run
# and no compute logs: Dagster captures each step's output through `tail -F` children, which
# can outlive the run and hold its stdout open (a pipe read to EOF then waits for them)
IN_MEMORY_HOME = (
    "telemetry:\n  enabled: false\n"
    "event_log_storage:\n  module: dagster._core.storage.event_log\n"
    "  class: InMemoryEventLogStorage\n"
    "compute_logs:\n  module: dagster._core.storage.noop_compute_log_manager\n"
    "  class: NoOpComputeLogManager\n"
)

pytestmark = pytest.mark.slow


def run_twice(data: Path, base: Path, settings: Path = FAST) -> tuple[Path, Path]:
    """``cohortflow run`` on ``data`` into ``base/out_a`` and ``base/out_b`` at the same time,
    each with its own DAGSTER_HOME and PYTHONHASHSEED (set iteration order differs)."""
    procs, roots = [], []
    for name, seed in (("a", "1"), ("b", "2")):
        home = base / f"dagster_home_{name}"
        home.mkdir()
        (home / "dagster.yaml").write_text(IN_MEMORY_HOME)
        out = base / f"out_{name}"
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "PYTHONHASHSEED": seed,
            "OMP_WAIT_POLICY": "PASSIVE",
        }
        cmd = [
            str(COHORTFLOW),
            "run",
            "--data",
            str(data),
            "--out",
            str(out),
            "--settings",
            str(settings),
        ]
        # output to files, not pipes: the run's exit is what we wait for, not the EOF of a
        # pipe that a lingering grandchild may still hold
        logs = (base / f"run_{name}.out", base / f"run_{name}.err")
        with logs[0].open("w") as out_f, logs[1].open("w") as err_f:
            procs.append(
                (subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=out_f, stderr=err_f), logs)
            )
        roots.append(out)
    for proc, (out_log, err_log) in procs:
        proc.wait(timeout=300)
        assert proc.returncode == 0, err_log.read_text()[-3000:]
        assert "cohortflow: done" in out_log.read_text()
    return roots[0], roots[1]


def artifacts(root: Path) -> dict[str, Path]:
    return {
        p.relative_to(root).as_posix(): p
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in NOT_ARTIFACTS
    }


def without_run(path: Path) -> dict:
    doc = json.loads(path.read_text())
    assert set(doc["run"]) >= {"dagster_run_id", "finished_at", "host"}
    del doc["run"]
    return doc


def assert_identical_trees(a: Path, b: Path) -> dict[str, int]:
    """Every artifact byte-identical (metadata.json: without its run key); returns counts."""
    files_a, files_b = artifacts(a), artifacts(b)
    assert sorted(files_a) == sorted(files_b)
    differ, run_ids = [], set()
    counts = {"files": len(files_a), "parquet": 0, "metadata": 0}
    for rel in sorted(files_a):
        pa, pb = files_a[rel], files_b[rel]
        if rel.endswith("/metadata.json"):
            counts["metadata"] += 1
            run_ids.add(json.loads(pa.read_text())["run"]["dagster_run_id"])
            run_ids.add(json.loads(pb.read_text())["run"]["dagster_run_id"])
            if without_run(pa) != without_run(pb):
                differ.append(rel)
            continue
        counts["parquet"] += rel.endswith(".parquet")
        if pa.read_bytes() != pb.read_bytes():
            differ.append(rel)
    assert differ == [], f"{len(differ)} file(s) differ: {differ[:20]}"
    # the runs really were two runs: the one key left out of the comparison differs
    assert len(run_ids) >= 2
    cohorts_a = sorted(p.name for p in a.rglob("cohort=*"))
    cohorts_b = sorted(p.name for p in b.rglob("cohort=*"))
    assert cohorts_a and cohorts_a == cohorts_b
    return counts


def test_synthetic_universe_twice_is_byte_identical(tmp_path: Path) -> None:
    from cohortflow.synthetic import generate

    # planted leaks: two attempts, so diff_prev.json and drift.json are compared too; one
    # horizon keeps two concurrent runs short on two shared cores
    generate(tmp_path / "data", fmt="parquet", n_symbols=4, n_bars=300, n_noise=2, seed=5)
    settings = tmp_path / "settings.yaml"
    settings.write_text(FAST.read_text().replace("horizons: [5, 10]", "horizons: [10]"))
    assert "horizons: [10]" in settings.read_text()
    t0 = time.perf_counter()
    a, b = run_twice(tmp_path / "data", tmp_path, settings)
    print(f"\ntwo concurrent runs, synthetic: {time.perf_counter() - t0:.1f} s")
    counts = assert_identical_trees(a, b)
    # bars and panel of each attempt's working data; OOF and test predictions × 2 attempts
    assert counts["parquet"] == 2 * 2 + 2 * 2
    assert list(a.rglob("diff_prev.json")) and list(a.rglob("drift.json"))
    assert sorted(p.name for p in (a / "reports").rglob("attempt_*")) == ["attempt_0", "attempt_1"]


def test_builtin_real_data_twice_is_byte_identical(tmp_path: Path) -> None:
    from cohortflow.sampledata import write_sample_universe

    write_sample_universe(tmp_path / "data")  # AAPL GOOG IBM MSFT (FB is left out: 196 rows)
    t0 = time.perf_counter()
    a, b = run_twice(tmp_path / "data", tmp_path)
    print(f"\ntwo concurrent runs, real data: {time.perf_counter() - t0:.1f} s")
    counts = assert_identical_trees(a, b)
    assert counts["parquet"] >= 2 + 2 * 2  # bars, panel; OOF + test predictions × 2 targets
    registry = json.loads(next((a / "_registry").iterdir()).read_text())
    assert registry["symbols"] == ["AAPL", "GOOG", "IBM", "MSFT"]
