"""The SQLite storage of cohortflow's DAGSTER_HOME: Dagster's own files and behaviour, one
SQLAlchemy engine per shard instead of one per connection."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dagster import DagsterInstance
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage

import resources.sqlite_storage as sqlite_storage
from resources.sqlite_storage import (
    KEPT_ENGINES,
    CohortflowSqliteStorage,
    KeptEngineEventLogStorage,
)


def entry(run_id: str, message: str) -> EventLogEntry:
    return EventLogEntry(
        error_info=None,
        level=20,
        user_message=message,
        run_id=run_id,
        timestamp=time.time(),
        step_key=None,
        job_name="job",
        dagster_event=None,
    )


def count_engines(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The connection strings of the engines the storage builds from now on."""
    built: list[str] = []
    real = sqlite_storage.create_engine

    def create(conn_string: str, **kwargs):
        built.append(conn_string)
        return real(conn_string, **kwargs)

    monkeypatch.setattr(sqlite_storage, "create_engine", create)
    return built


def test_the_home_uses_it(dagster_home: Path) -> None:
    instance = DagsterInstance.get()
    try:
        assert type(instance._event_storage) is KeptEngineEventLogStorage
        ref = instance.get_ref()  # what run workers and the daemon rebuild the instance from
        assert ref.storage_data.class_name == "CohortflowSqliteStorage"
        assert type(ref.storage) is CohortflowSqliteStorage
    finally:
        instance.dispose()


def test_a_storage_block_in_dagster_yaml_wins(dagster_home: Path) -> None:
    with (dagster_home / "dagster.yaml").open("a") as f:
        f.write(f"storage:\n  sqlite:\n    base_dir: {dagster_home}\n")
    instance = DagsterInstance.get()
    try:
        assert type(instance._event_storage) is SqliteEventLogStorage
        assert type(instance.get_ref().storage) is DagsterSqliteStorage
    finally:
        instance.dispose()


def test_one_engine_per_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = KeptEngineEventLogStorage(str(tmp_path))
    built = count_engines(monkeypatch)
    for i in range(20):
        storage.store_event(entry("run-a", f"event {i}"))
    storage.get_logs_for_run("run-a")
    storage.get_logs_for_run("run-a")
    assert [Path(s).name for s in built] == ["run-a.db"]
    assert len(storage.get_logs_for_run("run-a")) == 20
    storage.dispose()


def test_dagster_reads_what_it_wrote_and_back(tmp_path: Path) -> None:
    ours = KeptEngineEventLogStorage(str(tmp_path))
    ours.store_event(entry("run-b", "from ours"))
    theirs = SqliteEventLogStorage(str(tmp_path))
    theirs.store_event(entry("run-b", "from dagster"))
    ours.store_event(entry("run-b", "ours again"))
    expected = ["from ours", "from dagster", "ours again"]
    assert [e.user_message for e in theirs.get_logs_for_run("run-b")] == expected
    assert [e.user_message for e in ours.get_logs_for_run("run-b")] == expected
    ours.dispose()
    theirs.dispose()


def test_kept_engines_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = KeptEngineEventLogStorage(str(tmp_path))
    built, disposed = [], []
    runs = [f"run-{i}" for i in range(KEPT_ENGINES + 4)]
    for run_id in runs:
        storage.store_event(entry(run_id, "hello"))
        engine = storage._engines[run_id]
        monkeypatch.setattr(engine, "dispose", lambda e=engine: disposed.append(e))
        built.append(engine)
    assert list(storage._engines) == runs[-KEPT_ENGINES:]  # the latest, oldest first
    assert disposed == built[:4]
    # a shard whose engine was let go is opened again
    assert [e.user_message for e in storage.get_logs_for_run(runs[0])] == ["hello"]
    assert list(storage._engines) == runs[-KEPT_ENGINES + 1 :] + [runs[0]]
    storage.dispose()
    assert not storage._engines
    assert sorted(map(id, disposed)) == sorted(map(id, built))
