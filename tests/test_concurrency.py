"""Safety under concurrency and kills (DESIGN §4), at the level of the whole graph.

1. Four processes materialize the same partition at the same moment: afterwards every
   file is whole, no temporary file remains, every attempt folder is complete, its
   manifest matches its files and it holds one cohort.
2. A process materializing attempt 1 is killed with SIGKILL while its training stage runs:
   no visible file is partial, readers skip the incomplete attempts, and a rerun
   completes with every manifest verifying.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

PROJECT = Path(__file__).resolve().parent.parent
FAST = PROJECT / "config" / "fast.yaml"
TARGET = "fwd_ret_5"
NOT_ARTIFACTS = ("_index", "_locks")

# One process: build the code location, wait for the go signal, materialize one partition.
WORKER = """
import json, sys, time, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
from dagster import DagsterInstance
from cohortflow_dagster.partitions import attempt_key
from cohortflow_dagster.definitions import build_definitions
data, out, settings, batch, attempt, ready, go = sys.argv[1:8]
job = build_definitions(data, out, settings).resolve_job_def("cohortflow_job")
instance = DagsterInstance.ephemeral()
instance.add_dynamic_partitions("universe_batch", [batch])
instance.add_dynamic_partitions("attempt", [attempt])
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
result = job.execute_in_process(
    partition_key=attempt_key(batch, int(attempt)),
    instance=instance,
    run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
    raise_on_error=False,
)
print(json.dumps({"success": result.success}))
"""


def write_settings(path: Path) -> Path:
    """fast.yaml with one horizon: four graphs at once on two cores must stay short."""
    raw = yaml.safe_load(FAST.read_text())
    raw["horizons"] = [5]
    path.write_text(yaml.safe_dump(raw, sort_keys=True))
    return path


def register(tmp_path: Path, n_bars: int = 260) -> tuple[Path, Path, Path, str]:
    from cohortflow.intake import take_in
    from cohortflow.settings import load_settings
    from cohortflow.synthetic import generate

    data, out = tmp_path / "data", tmp_path / "out"
    generate(data, fmt="parquet", n_symbols=3, n_bars=n_bars, n_noise=2, seed=6)
    settings = write_settings(tmp_path / "settings.yaml")
    batch = take_in(data, out, load_settings(settings)).record.batch
    return data, out, settings, batch


def start_worker(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, *args],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.01) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


# --------------------------------------------------------------------------- the tree
def attempt_folders(root: Path, attempt: int | None = None) -> list[Path]:
    """Every current-layout attempt folder of every target, stage and view."""
    pattern = "attempt_*" if attempt is None else f"attempt_{attempt}"
    return sorted(
        p
        for p in (root / "targets").glob(f"*/reproducibility/stage=*/**/batch_*/{pattern}")
        if p.is_dir()
    )


def scope_of(root: Path, folder: Path):
    from cohortflow.layout import Scope

    parts = folder.relative_to(root).parts
    target, stage, view = parts[1], parts[3][len("stage=") :], parts[4]
    symbol = parts[5][len("symbol=") :] if view == "SYMBOL_SPECIFIC" else None
    batch, attempt = parts[-2][len("batch_") :], int(parts[-1][len("attempt_") :])
    return Scope(target, stage, view, batch, attempt, symbol)


def visible_artifacts(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not p.name.startswith(".")
        and p.relative_to(root).parts[0] not in NOT_ARTIFACTS
    )


def assert_whole(path: Path) -> None:
    """The file parses completely in its format (a torn write would not)."""
    if path.suffix == ".parquet":
        pq.read_table(path)
    elif path.suffix == ".json" or path.name == "_COMPLETE":
        json.loads(path.read_text())
    elif path.suffix == ".yaml":
        assert isinstance(yaml.safe_load(path.read_text()), dict), path
    elif path.suffix == ".csv":
        import pandas as pd

        assert len(pd.read_csv(path).columns) > 1, path
    elif path.name == "_IN_PROGRESS":  # the marker of an attempt being written: empty
        assert path.read_bytes() == b"", path
    elif path.suffix == ".txt":  # LightGBM's text model
        import lightgbm

        assert lightgbm.Booster(model_str=path.read_text()).num_trees() > 0, path
    else:
        raise AssertionError(f"unexpected artifact {path}")


def assert_attempt_complete_and_verified(root: Path, folder: Path) -> None:
    from cohortflow.store import Store
    from cohortflow.verify import verify_folder

    assert (folder / "_COMPLETE").is_file(), f"{folder} incomplete"
    assert not (folder / "_IN_PROGRESS").exists(), f"{folder} still marked in progress"
    assert verify_folder(Store(root), scope_of(root, folder)) == []
    cohorts = [p for p in folder.iterdir() if p.name.startswith("cohort=")]
    assert len(cohorts) == 1, f"{folder}: {[p.name for p in cohorts]}"
    snapshot = json.loads((cohorts[0] / "snapshot.json").read_text())
    marker = json.loads((folder / "_COMPLETE").read_text())
    assert snapshot["artifacts_manifest_sha256"] == marker["artifacts_manifest_sha256"]


# --------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_four_processes_materializing_one_partition_at_once(tmp_path: Path) -> None:
    from cohortflow.index import CohortIndex

    data, out, settings, batch = register(tmp_path)
    go = tmp_path / "go"
    workers = []
    for i in range(4):
        ready = tmp_path / f"ready_{i}"
        workers.append(
            (
                ready,
                start_worker([str(data), str(out), str(settings), batch, "0", str(ready), str(go)]),
            )
        )
    t0 = time.perf_counter()

    def all_ready() -> bool:
        for _, proc in workers:
            if proc.poll() is not None:
                raise AssertionError(f"a worker exited early: {proc.communicate()[1][-3000:]}")
        return all(ready.exists() for ready, _ in workers)

    wait_for(all_ready, 180, "4 workers to load the code location")
    go.touch()  # all four start materializing now
    t1 = time.perf_counter()
    for _, proc in workers:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        assert json.loads(stdout.strip().splitlines()[-1]) == {"success": True}, stderr[-3000:]
    print(f"\n4 concurrent runs: {time.perf_counter() - t1:.1f} s (+{t1 - t0:.1f} s start-up)")

    assert list(out.rglob(".tmp-*")) == []
    files = visible_artifacts(out)
    assert len(files) > 50
    for path in files:
        assert_whole(path)
    folders = attempt_folders(out)
    # 1 target × (TR: CS + 3 symbols, FS: CS + 3 symbols, TRAINING: CS)
    assert len(folders) == 9
    for folder in folders:
        assert_attempt_complete_and_verified(out, folder)
    # the index lists each cohort once, however many runs added it
    records = CohortIndex(out).list()
    assert len(records) == len({(r.cohort_id, r.path) for r in records}) == 9


@pytest.mark.slow
def test_killed_run_leaves_no_partial_file_and_a_rerun_completes(tmp_path: Path) -> None:
    from dagster import DagsterInstance

    from cohortflow.index import CohortIndex
    from cohortflow.layout import latest_complete_attempt, walk_cohorts
    from cohortflow_dagster.definitions import build_definitions
    from cohortflow_dagster.partitions import attempt_key

    data, out, settings, batch = register(tmp_path)
    job = build_definitions(str(data), str(out), str(settings)).resolve_job_def("cohortflow_job")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("universe_batch", [batch])
    instance.add_dynamic_partitions("attempt", ["0", "1"])
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    t0 = time.perf_counter()
    assert job.execute_in_process(
        partition_key=attempt_key(batch, 0), instance=instance, run_config=quiet
    ).success
    t_first = time.perf_counter() - t0

    def training_folder(attempt: int) -> Path:
        return (
            out
            / f"targets/{TARGET}/reproducibility/stage=TRAINING/CROSS_SECTIONAL/batch_{batch}/attempt_{attempt}"
        )

    def selection_folder(attempt: int) -> Path:
        return (
            out
            / f"targets/{TARGET}/reproducibility/stage=FEATURE_SELECTION/CROSS_SECTIONAL/batch_{batch}/attempt_{attempt}"
        )

    go = tmp_path / "go"
    go.touch()
    proc = start_worker(
        [str(data), str(out), str(settings), batch, "1", str(tmp_path / "ready"), str(go)]
    )

    # kill once attempt 1's selection is complete and its training folder is being written
    def training_under_way() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended before it could be killed: {proc.communicate()[1][-3000:]}"
            )
        return (selection_folder(1) / "_COMPLETE").exists() and (
            training_folder(1) / "oof"
        ).exists()

    wait_for(training_under_way, 180, "attempt 1's training stage to start", poll_s=0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    # no visible file is partial; the killed stage's folder is incomplete
    for path in visible_artifacts(out):
        assert_whole(path)
    incomplete = [f for f in attempt_folders(out, 1) if not (f / "_COMPLETE").exists()]
    assert training_folder(1) in incomplete
    for folder in attempt_folders(out):
        if folder not in incomplete:
            assert_attempt_complete_and_verified(out, folder)

    # readers skip incomplete attempts
    listed = list(walk_cohorts(out))
    assert listed and all((out / r.path).parent.joinpath("_COMPLETE").exists() for r in listed)
    assert not [r for r in listed if (out / r.path).parent in incomplete]
    assert {(r.stage, r.attempt) for r in listed if r.view == "CROSS_SECTIONAL"} == {
        ("TARGET_RANKING", 0),
        ("TARGET_RANKING", 1),
        ("FEATURE_SELECTION", 0),
        ("FEATURE_SELECTION", 1),
        ("TRAINING", 0),
    }
    assert latest_complete_attempt(out, batch, TARGET, "TRAINING") == 0
    assert latest_complete_attempt(out, batch, TARGET, "FEATURE_SELECTION") == 1
    assert not CohortIndex(out).list(stage="TRAINING", attempt=1)

    # a rerun of the killed partition completes, every manifest verifies
    t0 = time.perf_counter()
    assert job.execute_in_process(
        partition_key=attempt_key(batch, 1), instance=instance, run_config=quiet
    ).success
    print(f"\nattempt 0: {t_first:.1f} s; rerun of attempt 1: {time.perf_counter() - t0:.1f} s")
    assert list((out / "targets").rglob(".tmp-*")) == []
    for folder in attempt_folders(out):
        assert_attempt_complete_and_verified(out, folder)
    assert len(attempt_folders(out)) == 2 * 9
    assert latest_complete_attempt(out, batch, TARGET, "TRAINING") == 1
    assert len(CohortIndex(out).list(stage="TRAINING", attempt=1)) == 1
