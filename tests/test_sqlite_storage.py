"""The SQLite storage of cohortflow's DAGSTER_HOME: Dagster's own files and behaviour, one
SQLAlchemy engine and one open SQLite connection per shard instead of one per use."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dagster import DagsterInstance
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage
from sqlalchemy import event
from sqlalchemy.pool import Pool

import resources.sqlite_storage as sqlite_storage
from resources.sqlite_storage import (
    KEPT_SHARDS,
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


def count_connections() -> tuple[list[str], object]:
    """The SQLite connections opened from now on (any engine); call the second item to stop."""
    opened: list[str] = []

    def on_connect(dbapi_conn, record) -> None:
        opened.append(dbapi_conn.execute("PRAGMA database_list").fetchone()[2])

    event.listen(Pool, "connect", on_connect)
    return opened, lambda: event.remove(Pool, "connect", on_connect)


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


def test_one_connection_per_shard(tmp_path: Path) -> None:
    storage = KeptEngineEventLogStorage(str(tmp_path))
    storage.store_event(entry("run-a", "event 0"))  # creates the shard (a nested connection)
    opened, stop = count_connections()
    try:
        for i in range(1, 20):
            storage.store_event(entry("run-a", f"event {i}"))
        assert len(storage.get_logs_for_run("run-a")) == 20
        storage.store_event(entry("run-b", "another shard"))
    finally:
        stop()
    assert [Path(p).name for p in opened] == ["run-b.db", "run-b.db"]
    storage.dispose()


def test_wipe_lets_go_of_the_files_it_deletes(tmp_path: Path) -> None:
    storage = KeptEngineEventLogStorage(str(tmp_path))
    storage.store_event(entry("run-a", "before the wipe"))
    storage.wipe()
    storage.store_event(entry("run-a", "after the wipe"))
    # written to the new file, not through a connection to the deleted one
    theirs = SqliteEventLogStorage(str(tmp_path))
    assert [e.user_message for e in theirs.get_logs_for_run("run-a")] == ["after the wipe"]
    theirs.dispose()
    storage.dispose()


def test_a_forked_child_opens_its_own_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = KeptEngineEventLogStorage(str(tmp_path))
    storage.store_event(entry("run-a", "parent"))
    with storage.index_connection():
        pass
    assert sorted(storage._engines) == ["index", "run-a"]
    parents = storage._engines["run-a"]
    monkeypatch.setattr(sqlite_storage.os, "getpid", lambda: -1)  # as in a forked child
    storage.store_event(entry("run-a", "child"))
    assert storage._engines["run-a"] is not parents
    assert list(storage._engines) == ["run-a"]  # the parent's index engine forgotten too
    assert [e.user_message for e in storage.get_logs_for_run("run-a")] == ["parent", "child"]
    storage.dispose()
    parents.dispose()


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
    runs = [f"run-{i}" for i in range(KEPT_SHARDS + 4)]
    for run_id in runs:
        storage.store_event(entry(run_id, "hello"))
        engine = storage._engines[run_id]
        monkeypatch.setattr(engine, "dispose", lambda e=engine: disposed.append(e))
        built.append(engine)
    assert list(storage._engines) == runs[-KEPT_SHARDS:]  # the latest, oldest first
    assert disposed == built[:4]
    # a shard whose engine was let go is opened again
    assert [e.user_message for e in storage.get_logs_for_run(runs[0])] == ["hello"]
    assert list(storage._engines) == runs[-KEPT_SHARDS + 1 :] + [runs[0]]
    storage.dispose()
    assert not storage._engines
    assert sorted(map(id, disposed)) == sorted(map(id, built))
