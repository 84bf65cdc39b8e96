"""The data sensor: new universe -> partition + run; nothing twice; changed file -> re-run.
The attempt sensor: leaks in attempt n -> attempt n+1, within the limit."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from dagster import DagsterInstance, build_sensor_context, instance_for_test

from cohortflow_dagster.definitions import build_definitions
from cohortflow_dagster.partitions import attempt_key


def _tick(defs, inst: DagsterInstance, name: str, cursor: str | None):
    sensor = (
        defs.resolve_sensor_def(name)
        if hasattr(defs, "resolve_sensor_def")
        else defs.get_sensor_def(name)
    )
    ctx = build_sensor_context(
        instance=inst,
        instance_ref=inst.get_ref(),
        definitions=defs,
        cursor=cursor,
        resources={"cohortflow": defs.resources["cohortflow"]},
    )
    data = sensor.evaluate_tick(ctx)
    # apply what the daemon would: the partitions the sensor asked for
    for req in data.dynamic_partitions_requests or []:
        inst.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return data


def _seal(root: Path, batch: str, attempt: int, targets=("fwd_ret_5", "fwd_ret_10")) -> None:
    """Mark every stage folder of an attempt sealed, as a finished run leaves them."""
    from cohortflow.domain import Stage
    from cohortflow.layout import Scope

    for target in targets:
        for stage in Stage:
            scope = Scope(target, stage, "CROSS_SECTIONAL", batch, attempt)
            scope.attempt_dir(root).mkdir(parents=True, exist_ok=True)
            scope.complete_marker(root).write_text("{}")
            scope.progress_marker(root).unlink(missing_ok=True)


def test_data_sensor_new_universe_then_nothing_then_changed_file(
    tmp_path: Path, small_universe, fast_settings_path
):
    from cohortflow.registry import BatchRegistry

    data, _ = small_universe
    out = tmp_path / "out"
    defs = build_definitions(str(data), str(out), str(fast_settings_path))
    with instance_for_test() as inst:
        first = _tick(defs, inst, "data_sensor", None)
        assert len(first.run_requests) == 1
        req = first.run_requests[0]
        batch = req.partition_key.keys_by_dimension["universe_batch"]
        assert req.partition_key == attempt_key(batch, 0)
        assert req.tags["cohortflow/reason"] == "requested"
        assert req.run_key == req.tags["cohortflow/run_key"]
        assert inst.get_dynamic_partitions("universe_batch") == [batch]
        assert inst.get_dynamic_partitions("attempt") == ["0"]
        record = BatchRegistry(out).get(batch)
        assert [(a.attempt, a.reason.value) for a in record.attempts] == [(0, "requested")]

        second = _tick(defs, inst, "data_sensor", first.cursor)
        assert second.run_requests == []
        assert "no change" in second.skip_message

        # the run of attempt 0 seals it; a first tick with no cursor (a new daemon after
        # `cohortflow run`) starts nothing: the decision reads the sealed attempt on disk
        _seal(out, batch, 0)
        fresh = _tick(defs, inst, "data_sensor", None)
        assert fresh.run_requests == []
        assert "no change since sealed attempt 0" in fresh.skip_message

        # touching a file without changing it requests nothing either
        victim = sorted(data.glob("*.parquet"))[0]
        os.utime(victim, None)
        third = _tick(defs, inst, "data_sensor", fresh.cursor)
        assert third.run_requests == []

        # a changed file of the same universe runs a NEW attempt; attempt 0 stays as it is
        frame = pd.read_parquet(victim)
        frame.loc[frame.index[-1], "close"] *= 1.01
        frame.to_parquet(victim, index=False)
        fourth = _tick(defs, inst, "data_sensor", third.cursor)
        assert len(fourth.run_requests) == 1
        assert fourth.run_requests[0].partition_key == attempt_key(batch, 1)
        assert fourth.run_requests[0].tags["cohortflow/reason"] == "bars_changed"
        assert fourth.run_requests[0].run_key != req.run_key
        record = BatchRegistry(out).get(batch)
        assert [(a.attempt, a.reason.value) for a in record.attempts] == [
            (0, "requested"),
            (1, "bars_changed"),
        ]
        assert record.attempt(0).bars_fingerprint != record.attempt(1).bars_fingerprint


def test_data_sensor_runs_a_new_attempt_when_the_settings_change(
    tmp_path: Path, small_universe, fast_settings_path
):
    data, _ = small_universe
    out = tmp_path / "out"
    with instance_for_test() as inst:
        defs = build_definitions(str(data), str(out), str(fast_settings_path))
        first = _tick(defs, inst, "data_sensor", None)
        batch = first.run_requests[0].partition_key.keys_by_dimension["universe_batch"]
        _seal(out, batch, 0)
        changed = tmp_path / "changed.yaml"
        changed.write_text(fast_settings_path.read_text().replace("n_splits: 3", "n_splits: 4"))
        defs = build_definitions(str(data), str(out), str(changed))
        tick = _tick(defs, inst, "data_sensor", first.cursor)
        (req,) = tick.run_requests
        assert req.partition_key == attempt_key(batch, 1)
        assert req.tags["cohortflow/reason"] == "settings_changed"


def test_data_sensor_names_an_unreadable_file_in_the_skip_reason(
    tmp_path: Path, small_universe, fast_settings_path
):
    data, _ = small_universe
    (data / "BROKEN.csv").write_text("timestamp,close\n2020-01-01,abc\n")
    defs = build_definitions(str(data), str(tmp_path / "out"), str(fast_settings_path))
    with instance_for_test() as inst:
        tick = _tick(defs, inst, "data_sensor", None)
        assert tick.run_requests == []
        assert "BROKEN.csv" in tick.skip_message
        assert inst.get_dynamic_partitions("universe_batch") == []


def test_data_sensor_new_symbol_is_a_new_universe(
    tmp_path: Path, small_universe, fast_settings_path
):
    data, _ = small_universe
    defs = build_definitions(str(data), str(tmp_path / "out"), str(fast_settings_path))
    with instance_for_test() as inst:
        first = _tick(defs, inst, "data_sensor", None)
        src = sorted(data.glob("*.parquet"))[0]
        shutil.copy(src, data / "EXTRA.parquet")
        second = _tick(defs, inst, "data_sensor", first.cursor)
        assert len(second.run_requests) == 1
        b1 = first.run_requests[0].partition_key.keys_by_dimension["universe_batch"]
        b2 = second.run_requests[0].partition_key.keys_by_dimension["universe_batch"]
        assert b1 != b2
        assert sorted(inst.get_dynamic_partitions("universe_batch")) == sorted([b1, b2])


# --------------------------------------------------------------------------- attempt sensor
def _finished_run(inst: DagsterInstance, partition: str):
    """A real successful run carrying a batch × attempt partition tag, and its success event."""
    from dagster import DagsterEventType, job, op

    @op
    def noop():
        return None

    @job
    def probe():
        noop()

    result = probe.execute_in_process(instance=inst, tags={"dagster/partition": partition})
    run = inst.get_run_by_id(result.run_id)
    event = inst.all_logs(result.run_id, of_type=DagsterEventType.RUN_SUCCESS)[0].dagster_event
    return run, event


def _write_attempt(
    root: Path, targets, attempt: int, leaks: dict[str, list[str]], complete=True, reason=None
) -> str:
    """A registered batch with attempts 0..``attempt`` recorded, attempt ``attempt``'s
    exclusions written (finding ``leaks``) and, if ``complete``, every folder sealed."""
    from cohortflow.domain import ArtifactKind, AttemptReason
    from cohortflow.layout import Scope
    from cohortflow.leakage import Exclusion, Exclusions
    from cohortflow.registry import AttemptRecord, BatchRecord, BatchRegistry
    from cohortflow.store import AttemptKey, Store

    files = [
        {"symbol": s, "name": f"{s}.parquet", "sha256": c * 64, "size": 1}
        for s, c in (("AAA", "a"), ("BBB", "b"))
    ]
    record = BatchRegistry(root).register(BatchRecord.from_symbols(("AAA", "BBB"), files))
    batch = record.batch
    for n in range(attempt + 1):
        why = AttemptReason.REQUESTED if n == 0 else (reason or AttemptReason.LEAKS_FOUND)
        BatchRegistry(root).add_attempt(batch, AttemptRecord(n, why, tuple(files), "s", "c"))
    store = Store(root)
    for t in targets:
        entries = tuple(
            Exclusion(f, "lookahead", {"rows_changed": 5}, attempt) for f in leaks.get(t, [])
        )
        scope = Scope(t, "TARGET_RANKING", "CROSS_SECTIONAL", batch, attempt)
        store.write(
            ArtifactKind.EXCLUSIONS,
            AttemptKey(batch, attempt, t),
            {scope: Exclusions(t, attempt, entries)},
        )
    if complete:
        _seal(root, batch, attempt, targets)
    return batch


@pytest.mark.parametrize(
    ("leaks", "complete", "expected"),
    [
        ({"fwd_ret_5": ["demo_leak_centered_ret"]}, True, 1),  # leaks found -> attempt 1
        ({}, True, None),  # no leak -> nothing
        ({"fwd_ret_5": ["demo_leak_centered_ret"]}, False, None),  # attempt not finished -> wait
    ],
)
def test_attempt_sensor_starts_the_next_attempt_only_after_leaks(
    tmp_path: Path, fast_settings_path, leaks, complete, expected
):
    from dagster import SensorResult

    targets = ("fwd_ret_5", "fwd_ret_10")
    batch = _write_attempt(tmp_path / "out", targets, 0, leaks, complete)
    result = _attempt_sensor_after(tmp_path, fast_settings_path, batch, 0)
    if expected is None:
        assert not isinstance(result, SensorResult), result
    else:
        assert isinstance(result, SensorResult)
        (req,) = result.run_requests
        assert req.partition_key == attempt_key(batch, expected)
        assert req.tags["cohortflow/reason"] == "leaks_found"
        assert result.dynamic_partitions_requests[0].partition_keys == [str(expected)]


def test_attempt_limit_stops_the_loop(tmp_path: Path, fast_settings_path):
    from dagster import SensorResult

    leaks = {"fwd_ret_5": ["x_leak"]}
    batch = _write_attempt(tmp_path / "out", ("fwd_ret_5", "fwd_ret_10"), 1, leaks)
    # fast settings: attempt_limit 2, so attempt 1 is the last even though it found a leak
    result = _attempt_sensor_after(tmp_path, fast_settings_path, batch, 1)
    assert not isinstance(result, SensorResult)


def test_a_rerun_of_an_earlier_attempt_starts_nothing(tmp_path: Path, fast_settings_path):
    """A partial backfill of attempt 0 after attempt 1 exists: no second attempt 1."""
    from dagster import SensorResult

    out = tmp_path / "out"
    leaks = {"fwd_ret_5": ["x_leak"]}
    batch = _write_attempt(out, ("fwd_ret_5", "fwd_ret_10"), 0, leaks)
    _write_attempt(out, ("fwd_ret_5", "fwd_ret_10"), 1, {})
    result = _attempt_sensor_after(tmp_path, fast_settings_path, batch, 0)
    assert not isinstance(result, SensorResult)
    assert "not the latest" in str(result.skip_message)


def test_the_leak_fix_limit_counts_the_chain_not_a_users_reruns(tmp_path: Path, fast_settings_path):
    """Attempt 1 exists because the settings changed: attempt 1's leaks still get attempt 2
    under attempt_limit 2 (the chain is attempts 1, 2)."""
    from dagster import SensorResult

    from cohortflow.domain import AttemptReason

    leaks = {"fwd_ret_5": ["x_leak"]}
    batch = _write_attempt(
        tmp_path / "out",
        ("fwd_ret_5", "fwd_ret_10"),
        1,
        leaks,
        reason=AttemptReason.SETTINGS_CHANGED,
    )
    result = _attempt_sensor_after(tmp_path, fast_settings_path, batch, 1)
    assert isinstance(result, SensorResult)
    assert result.run_requests[0].partition_key == attempt_key(batch, 2)


def _attempt_sensor_after(tmp_path: Path, settings_path: Path, batch: str, attempt: int):
    """What the attempt sensor returns for a finished run of ``batch`` × ``attempt`` whose
    files are under ``tmp_path / "out"``."""
    from dagster import build_run_status_sensor_context

    from cohortflow_dagster.sensors.attempts import attempt_sensor

    defs = build_definitions(str(tmp_path / "data"), str(tmp_path / "out"), str(settings_path))
    with instance_for_test() as inst:
        run, event = _finished_run(inst, str(attempt_key(batch, attempt)))
        ctx = build_run_status_sensor_context(
            sensor_name="attempt_sensor",
            dagster_instance=inst,
            dagster_run=run,
            dagster_event=event,
            resources={"cohortflow": defs.resources["cohortflow"]},
        )
        return attempt_sensor(ctx)
