"""Partition keys typed by hand ("Add a partition" in the UI) are checked before anything
is written: a batch that is not 12 hex characters or not registered, an attempt that is
not a number, or an attempt that skips ahead, fail the run with one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance, MultiPartitionKey, instance_for_test

from cohortflow_dagster.definitions import build_definitions
from tests.conftest import FAST_SETTINGS


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _materialize(defs, instance: DagsterInstance, batch: str, attempt: str):
    job = defs.resolve_implicit_global_asset_job_def()
    key = MultiPartitionKey({"universe_batch": batch, "attempt": attempt})
    instance.add_dynamic_partitions("universe_batch", [batch])
    instance.add_dynamic_partitions("attempt", [attempt])
    return job.execute_in_process(
        instance=instance,
        partition_key=str(key),
        asset_selection=[
            a for a in job.asset_layer.executable_asset_keys if a.path[-1] == "universe_bars"
        ],
        raise_on_error=False,
    )


@pytest.mark.parametrize(
    ("batch", "attempt", "message"),
    [
        ("not-a-batch", "0", "invalid batch 'not-a-batch': expected exactly 12 lowercase hex"),
        ("0123456789ab", "x", "attempt partition key 'x' is not an attempt number"),
        ("0123456789ab", "0", "batch 0123456789ab is not registered"),
    ],
)
def test_a_hand_typed_key_fails_clearly_and_writes_nothing(
    tmp_path: Path, small_universe, batch, attempt, message
):
    data, _ = small_universe
    out = tmp_path / "out"
    out.mkdir()
    defs = build_definitions(str(data), str(out), str(FAST_SETTINGS))
    with instance_for_test() as instance:
        result = _materialize(defs, instance, batch, attempt)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error = failure.event_specific_data.error
    while error.cause is not None:
        error = error.cause
    assert message in error.message
    assert _files(out) == set()


def test_an_attempt_that_skips_ahead_is_refused(tmp_path: Path, small_universe):
    from cohortflow.intake import take_in
    from cohortflow.settings import load_settings

    data, _ = small_universe
    out = tmp_path / "out"
    batch = take_in(data, out, load_settings(FAST_SETTINGS)).record.batch
    before = _files(out)
    defs = build_definitions(str(data), str(out), str(FAST_SETTINGS))
    with instance_for_test() as instance:
        result = _materialize(defs, instance, batch, "3")
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    text = failure.event_specific_data.error.to_string()
    assert f"batch {batch} has no attempt 3" in text and "the next one is 0" in text
    assert _files(out) == before  # the registry record only: nothing of attempt 3
