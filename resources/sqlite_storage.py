"""Dagster's default SQLite storage with its event log's SQLAlchemy engines kept.

Dagster's ``SqliteEventLogStorage`` builds a SQLAlchemy engine for every connection it
opens and disposes of it afterwards: once for each event it stores (twice for an asset
event, which is mirrored into the index shard) and once for each read. One attempt of
two targets stores ~365 events and opens ~1,750 connections; building and disposing of
the engines took ~1.1 s of its ~3.6 s of connection handling (profiled on 2 cores).

Here each shard (the index and one file per run) keeps its engine, the last
:data:`KEPT_ENGINES` of them. Nothing else changes: the engines use ``NullPool``, so each
``connect`` still opens a fresh SQLite connection and closes it at the end, under the
storage's lock, in one transaction, with the same busy timeout; the files, their schema and
their durability are Dagster's. The webserver, the daemon and run workers may mix this
storage with Dagster's own on the same files.

:class:`resources.instance.CohortflowInstance` makes this the default storage of the
instances it serves; a ``storage:`` block in ``dagster.yaml`` (PostgreSQL, say) replaces it.
"""

from __future__ import annotations

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
from sqlalchemy.pool import NullPool

#: Engines kept per storage: the index shard and the shards of the latest runs.
KEPT_ENGINES = 8


class KeptEngineEventLogStorage(SqliteEventLogStorage):
    """:class:`SqliteEventLogStorage` that builds one engine per shard, not per connection."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()  # before super(): it connects
        super().__init__(base_dir, inst_data)

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> KeptEngineEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        """The shard's engine (caller holds ``_db_lock``)."""
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = create_engine(
            self.conn_string_for_shard(shard),
            poolclass=NullPool,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        )
        self._engines[shard] = engine
        while len(self._engines) > KEPT_ENGINES:
            self._engines.popitem(last=False)[1].dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        # Dagster's _connect, less the create_engine/dispose pair around each connection
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def dispose(self) -> None:
        super().dispose()
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()


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


__all__ = ["CohortflowSqliteStorage", "KEPT_ENGINES", "KeptEngineEventLogStorage"]
