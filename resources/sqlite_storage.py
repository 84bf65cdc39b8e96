"""Dagster's default SQLite storage with its event log's connections kept open.

Dagster's ``SqliteEventLogStorage`` builds a SQLAlchemy engine for every connection it
opens, opens a fresh SQLite connection on it and closes and disposes of both afterwards:
once for each event it stores (twice for an asset event, which is mirrored into the index
shard) and once for each read. One attempt of two targets stores ~365 events and opens
~1,750 connections. Closing the last connection to a WAL database checkpoints the WAL into
the database file and deletes it, so each of those round trips costs ~1.8 ms where a write
on an open connection costs ~0.4 ms (measured on 2 cores; see ``docs/scaling.md`` §4).

Here each shard (the index and one file per run) keeps its engine and one open connection,
for the last :data:`KEPT_SHARDS` shards used. Nothing else changes: every use still takes
the storage's lock and runs in one transaction, with the same busy timeout; the files,
their schema, WAL journal and durability are Dagster's (a kept connection holds no lock
between uses, so other processes read and write the same files as before). The
webserver, the daemon and run workers may mix this storage with Dagster's own.

:class:`resources.instance.CohortflowInstance` makes this the default storage of the
instances it serves; a ``storage:`` block in ``dagster.yaml`` (PostgreSQL, say) replaces it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from dagster._serdes import ConfigurableClassData
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

#: Shards whose engine and connection are kept: the index and the shards of the latest runs.
KEPT_SHARDS = 8


class KeptEngineEventLogStorage(SqliteEventLogStorage):
    """:class:`SqliteEventLogStorage` with one engine and one open connection per shard."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()  # before super(): it connects
        self._pid = os.getpid()
        super().__init__(base_dir, inst_data)

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> KeptEngineEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        """The shard's engine (caller holds ``_db_lock``)."""
        if os.getpid() != self._pid:
            # a forked child must not use its parent's SQLite connections: forget them unclosed
            for engine in self._engines.values():
                engine.dispose(close=False)
            self._engines.clear()
            self._pid = os.getpid()
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = create_engine(
            self.conn_string_for_shard(shard),
            # one connection kept, used under _db_lock by one thread at a time (hence any
            # thread); Dagster's _initdb nests a second, opened and closed as before
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=4,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        self._engines[shard] = engine
        while len(self._engines) > KEPT_SHARDS:
            self._engines.popitem(last=False)[1].dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        # Dagster's _connect, with the shard's engine and connection kept between calls
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def _close_all(self) -> None:
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def wipe(self) -> None:
        self._close_all()  # Dagster deletes the run shards' files
        super().wipe()

    def upgrade(self) -> None:
        self._close_all()  # migrations open their own connections
        super().upgrade()

    def dispose(self) -> None:
        super().dispose()
        self._close_all()


class CohortflowSqliteStorage(DagsterSqliteStorage):
    """Dagster's default SQLite storage (runs, event log, schedules under ``base_dir``), with
    :class:`KeptEngineEventLogStorage` as its event log."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        # Dagster's constructor stays the one place that builds the run and schedule storages;
        # the event log it builds first is replaced (on an existing home that costs ~0.02 ms)
        super().__init__(base_dir, inst_data)
        self._event_log_storage = KeptEngineEventLogStorage(_event_logs_directory(base_dir))

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> CohortflowSqliteStorage:
        return cls.from_local(inst_data=inst_data, **config_value)


__all__ = ["CohortflowSqliteStorage", "KEPT_SHARDS", "KeptEngineEventLogStorage"]
