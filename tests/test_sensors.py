"""The data sensor: new universe -> partition + run; nothing twice; changed file -> re-run.
The attempt sensor: leaks in attempt n -> attempt n+1, within the limit."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from dagster import DagsterInstance, build_sensor_context, instance_for_test

from cohortflow_dagster.assets.partitions import attempt_key
from cohortflow_dagster.definitions import build_definitions


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


def test_data_sensor_new_universe_then_nothing_then_changed_file(
    tmp_path: Path, small_universe, fast_settings_path
):
    data, _ = small_universe
    out = tmp_path / "out"
    defs = build_definitions(str(data), str(out), str(fast_settings_path))
    with instance_for_test() as inst:
        first = _tick(defs, inst, "data_sensor", None)
        assert len(first.run_requests) == 1
        req = first.run_requests[0]
        batch = req.partition_key.keys_by_dimension["universe_batch"]
        assert req.partition_key == attempt_key(batch, 0)
        assert req.tags["cohortflow/reason"] == "new universe"
        assert inst.get_dynamic_partitions("universe_batch") == [batch]
        assert inst.get_dynamic_partitions("attempt") == ["0"]
        assert (out / "_registry" / f"batch_{batch}.json").is_file()

        second = _tick(defs, inst, "data_sensor", first.cursor)
        assert second.run_requests == []
        assert "no change" in second.skip_message

        # touching a file without changing it requests nothing either
        victim = sorted(data.glob("*.parquet"))[0]
        os.utime(victim, None)
        third = _tick(defs, inst, "data_sensor", second.cursor or first.cursor)
        assert third.run_requests == []

        # a changed file of the same universe re-requests the latest attempt
        frame = pd.read_parquet(victim)
        frame.loc[frame.index[-1], "close"] *= 1.01
        frame.to_parquet(victim, index=False)
        fourth = _tick(defs, inst, "data_sensor", third.cursor or first.cursor)
        assert len(fourth.run_requests) == 1
        assert fourth.run_requests[0].partition_key == attempt_key(batch, 0)
        assert fourth.run_requests[0].tags["cohortflow/reason"] == "changed files"
        assert fourth.run_requests[0].run_key != req.run_key


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
    root: Path, targets, batch: str, attempt: int, leaks: dict[str, list[str]], complete=True
):
    from cohortflow.layout import Scope
    from cohortflow.leakage import Exclusion, Exclusions
    from cohortflow.store import Store

    store = Store(root)
    for t in targets:
        entries = tuple(
            Exclusion(f, "lookahead", {"rows_changed": 5}, attempt) for f in leaks.get(t, [])
        )
        store.write_exclusions(
            {
                Scope(t, "TARGET_RANKING", "CROSS_SECTIONAL", batch, attempt): Exclusions(
                    t, attempt, entries
                )
            }
        )
        if complete:
            marker = Scope(t, "TRAINING", "CROSS_SECTIONAL", batch, attempt).complete_marker(root)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("{}")


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

    batch = "ab12cd34ef56"
    _write_attempt(tmp_path / "out", ("fwd_ret_5", "fwd_ret_10"), batch, 0, leaks, complete)
    result = _attempt_sensor_after(tmp_path, fast_settings_path, batch, 0)
    if expected is None:
        assert not isinstance(result, SensorResult), result
    else:
        assert isinstance(result, SensorResult)
        (req,) = result.run_requests
        assert req.partition_key == attempt_key(batch, expected)
        assert result.dynamic_partitions_requests[0].partition_keys == [str(expected)]


def test_attempt_limit_stops_the_loop(tmp_path: Path, fast_settings_path):
    from dagster import SensorResult

    batch = "ab12cd34ef56"
    leaks = {"fwd_ret_5": ["x_leak"]}
    _write_attempt(tmp_path / "out", ("fwd_ret_5", "fwd_ret_10"), batch, 1, leaks)
    # fast settings: attempt_limit 2, so attempt 1 is the last even though it found a leak
    result = _attempt_sensor_after(tmp_path, fast_settings_path, batch, 1)
    assert not isinstance(result, SensorResult)


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
