"""The data sensor: new universe -> partition + run; nothing twice; changed file -> re-run.
The attempt sensor: leaks in attempt n -> attempt n+1, within the limit."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
from dagster import DagsterInstance, build_sensor_context, instance_for_test

from assets.partitions import attempt_key
from definitions import build_definitions


def _tick(defs, inst: DagsterInstance, name: str, cursor: str | None):
    sensor = defs.resolve_sensor_def(name) if hasattr(defs, "resolve_sensor_def") else defs.get_sensor_def(name)
    ctx = build_sensor_context(
        instance=inst, instance_ref=inst.get_ref(), definitions=defs, cursor=cursor,
        resources={"cohortflow": defs.resources["cohortflow"]},
    )
    data = sensor.evaluate_tick(ctx)
    # apply what the daemon would: the partitions the sensor asked for
    for req in data.dynamic_partitions_requests or []:
        inst.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return data


def test_data_sensor_new_universe_then_nothing_then_changed_file(tmp_path: Path, small_universe, fast_settings_path):
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


def test_data_sensor_names_an_unreadable_file_in_the_skip_reason(tmp_path: Path, small_universe, fast_settings_path):
    data, _ = small_universe
    (data / "BROKEN.csv").write_text("timestamp,close\n2020-01-01,abc\n")
    defs = build_definitions(str(data), str(tmp_path / "out"), str(fast_settings_path))
    with instance_for_test() as inst:
        tick = _tick(defs, inst, "data_sensor", None)
        assert tick.run_requests == []
        assert "BROKEN.csv" in tick.skip_message
        assert inst.get_dynamic_partitions("universe_batch") == []


def test_data_sensor_new_symbol_is_a_new_universe(tmp_path: Path, small_universe, fast_settings_path):
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
