"""Used the Dagster way, the tree stays whole (issue 14), through a real ``dagster dev``
(webserver and daemon, sensors on) and GraphQL:

1. after ``cohortflow run``, three ticks of each sensor start 0 runs;
2. a partial backfill (two assets) on a sealed attempt changes 0 bytes, keeps every
   marker and starts 0 runs behind it (attempt 1 exists: no second attempt 1);
3. a killed run leaves its attempt visibly incomplete (assets missing for the partition,
   ``_IN_PROGRESS`` folders, nothing listed, ``verify`` says so), and ``cohortflow run``
   completes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dagster_dev import (
    ADD_PARTITION,
    LAUNCH_BACKFILL,
    REPOSITORY,
    RUNS,
    DagsterDev,
    dagster_dev,
    make_workspace,
)

pytestmark = pytest.mark.slow
COHORTFLOW = Path(sys.executable).with_name("cohortflow")
TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 50) { status runIds timestamp } } }
  }
}
"""
MATERIALIZED = """
query Done($partitions: [String!]) {
  assetNodes { assetKey { path } assetMaterializations(partitions: $partitions) { partition } }
}
"""


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file of the tree a user keeps (the index and lock files aside)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in ("_locks", "_index")
    }


def cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(COHORTFLOW), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def ticks(dev: DagsterDev, sensor: str) -> list[dict[str, Any]]:
    answer = dev.graphql(TICKS, {"selector": {**REPOSITORY, "sensorName": sensor}})
    state = answer["sensorOrError"]["sensorState"]
    assert state["status"] == "RUNNING", state
    return state["ticks"]


def runs(dev: DagsterDev) -> list[dict[str, Any]]:
    return dev.graphql(RUNS)["runsOrError"]["results"]


def wait_for_ticks(dev: DagsterDev, after: float, n: int = 3, timeout_s: float = 240) -> None:
    """Until both sensors ticked ``n`` times after ``after`` (epoch seconds)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        counts = {
            s: sum(1 for t in ticks(dev, s) if float(t["timestamp"]) > after)
            for s in ("data_sensor", "attempt_sensor")
        }
        if min(counts.values()) >= n:
            return
        time.sleep(2)
    raise AssertionError(f"sensors ticked {counts} times in {timeout_s} s:\n{dev.log_tail()}")


def wait_for_runs(dev: DagsterDev, count: int, timeout_s: float = 600) -> list[dict[str, Any]]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        found = runs(dev)
        if len(found) >= count and all(
            r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in found
        ):
            return found
        time.sleep(3)
    raise AssertionError(f"runs did not finish: {runs(dev)}\n{dev.log_tail()}")


def launch(dev: DagsterDev, partitions: list[str], keys: list[str]) -> str:
    answer = dev.graphql(
        LAUNCH_BACKFILL,
        {
            "params": {
                "partitionNames": partitions,
                "assetSelection": [{"path": k.split("/")} for k in keys],
                "title": "test_ui_sealed",
            }
        },
    )["launchPartitionBackfill"]
    assert answer["__typename"] == "LaunchBackfillSuccess", answer
    return answer["backfillId"]


ENGINE_EVENTS = """
query Events($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run { eventConnection(limit: 500) { events { __typename ... on MessageEvent { message } } } }
  }
}
"""


def run_worker_pids(dev: DagsterDev) -> list[int]:
    """The processes executing the runs in progress: each run's engine event says
    "Executing steps in process (pid: N)"."""
    pids = []
    for run in runs(dev):
        if run["status"] != "STARTED":
            continue
        events = dev.graphql(ENGINE_EVENTS, {"runId": run["runId"]})["runOrError"]
        for event in events["eventConnection"]["events"]:
            match = re.search(r"in process \(pid: (\d+)\)", event.get("message") or "")
            if match:
                pids.append(int(match.group(1)))
    return sorted(set(pids))


def test_sealed_attempts_quiet_sensors_and_a_killed_run(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, max_concurrent_runs=1, with_leaks=True)
    env = {**ws.env(), "COHORTFLOW_SENSORS": "running", "COHORTFLOW_SENSOR_INTERVAL_S": "3"}
    root = ws.output_root
    args = ["--data", str(ws.data_dir), "--out", str(root), "--settings", str(ws.settings_path)]

    # attempt 0 finds the planted leaks, attempt 1 runs without them
    cli(env, "run", *args)
    registry = json.loads(next((root / "_registry").iterdir()).read_text())
    batch = registry["batch"]
    assert [(a["attempt"], a["reason"]) for a in registry["attempts"]] == [
        (0, "requested"),
        (1, "leaks_found"),
    ]
    sealed = tree_digest(root)
    markers = sorted(k for k in sealed if k.endswith("/_COMPLETE"))
    assert markers and not [k for k in sealed if k.endswith("/_IN_PROGRESS")]

    with dagster_dev(ws, "ui_sealed", env=env) as dev:
        # 1. three ticks of each sensor after `cohortflow run`: no run
        start = time.time()
        cli_runs = runs(dev)
        assert len(cli_runs) == 2
        assert {
            t["value"] for r in cli_runs for t in r["tags"] if t["key"] == "cohortflow/reason"
        } == {
            "requested",
            "leaks_found",
        }
        wait_for_ticks(dev, start)
        assert len(runs(dev)) == 2
        for sensor in ("data_sensor", "attempt_sensor"):
            assert all(not t["runIds"] for t in ticks(dev, sensor)), sensor

        # 2. a partial backfill of two assets on sealed attempt 0: a verified no-op
        launch(
            dev,
            [f"0|{batch}"],
            ["fwd_ret_5/feature_importances", "fwd_ret_5/featureset"],
        )
        done = wait_for_runs(dev, 3)
        assert [r["status"] for r in done].count("SUCCESS") == 3, done
        after_backfill = time.time()
        wait_for_ticks(dev, after_backfill)
        assert len(runs(dev)) == 3  # nothing started behind it: attempt 1 already exists
        assert tree_digest(root) == sealed  # 0 bytes changed, every marker kept

        # 3. a run of a new attempt, killed: visibly incomplete, then completed
        added = dev.graphql(ADD_PARTITION, {"selector": REPOSITORY, "name": "attempt", "key": "2"})[
            "addDynamicPartition"
        ]
        assert added["__typename"] == "AddDynamicPartitionSuccess", added
        everything = sorted(k for k in (t.split("/") for t in _asset_keys(dev)))
        launch(dev, [f"2|{batch}"], ["/".join(k) for k in everything])
        # killed while a training stage is being written (its OOF written, the stack not)
        training = f"stage=TRAINING/CROSS_SECTIONAL/batch_{batch}/attempt_2/_IN_PROGRESS"
        _wait(lambda: any(root.glob(f"targets/*/reproducibility/{training}")), 400, training)
        pids = run_worker_pids(dev)
        assert pids, "no run worker found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        time.sleep(2)
        materialized = dev.graphql(MATERIALIZED, {"partitions": [f"2|{batch}"]})["assetNodes"]
        missing = [
            "/".join(n["assetKey"]["path"]) for n in materialized if not n["assetMaterializations"]
        ]
        assert "fwd_ret_5/cohort_snapshot_training" in missing  # the UI shows what is missing

    from cohortflow.attempts import AttemptState, attempt_states

    incomplete = [p for p in root.rglob("attempt_2/_IN_PROGRESS")]
    assert incomplete, "the killed run left no folder marked in progress"
    states = attempt_states(root, batch, ("fwd_ret_5", "fwd_ret_10"))
    assert states[2].state is AttemptState.INCOMPLETE and states[1].state is AttemptState.SEALED
    listed = json.loads(cli(env, "cohorts", "list", "--root", str(root), "--json").stdout)
    on_disk = {
        p.parent.relative_to(root).as_posix()
        for p in root.rglob("cohort=*")
        if (p.parent / "_COMPLETE").exists()
    }
    assert {r["path"].rsplit("/", 1)[0] for r in listed} <= on_disk  # the index agrees
    assert not [r for r in listed if r["attempt"] == 2 and r["stage"] == "TRAINING"]
    verify = subprocess.run(
        [str(COHORTFLOW), "verify", "--root", str(root)], env=env, capture_output=True, text=True
    )
    assert verify.returncode == 0 and "incomplete: " in verify.stdout, verify.stdout[-2000:]

    rerun = cli(env, "run", *args)
    assert "attempt 2 is incomplete: completing it" in rerun.stderr, rerun.stderr[-2000:]
    assert not list(root.rglob("_IN_PROGRESS"))
    final = tree_digest(root)

    def earlier(digest: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in digest.items() if "/attempt_2" not in k and "_registry" not in k}

    assert earlier(final) == earlier(sealed)  # attempts 0 and 1 untouched throughout
    records = json.loads(next((root / "_registry").iterdir()).read_text())["attempts"]
    assert records[:2] == registry["attempts"]  # their records too; attempt 2 was added
    assert (records[2]["attempt"], records[2]["reason"]) == (2, "requested")
    verify = cli(env, "verify", "--root", str(root))
    assert "every file matches its seal" in verify.stdout


def _asset_keys(dev: DagsterDev) -> list[str]:
    return [
        "/".join(n["assetKey"]["path"])
        for n in dev.graphql(MATERIALIZED, {"partitions": []})["assetNodes"]
    ]


def _wait(condition, timeout_s: float, what: str) -> None:
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)
