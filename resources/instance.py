"""The Dagster instance cohortflow's ``DAGSTER_HOME`` names (``instance_class`` in
``dagster.yaml``): Dagster's own, with dynamic-partition membership remembered briefly.

Both partition dimensions are dynamic, and Dagster checks that a run's two keys exist each
time it builds an input or output context: about 20 times a step, 768 queries for one
attempt of two targets. On the default SQLite storage each query opens two connections (a
table check and the lookup), ~2.6 ms together: 2 s of a 100 s run, more than the whole
graph's own bookkeeping. Here a key found to exist is trusted for
``dynamic_partition_ttl_s`` seconds (5 by default) and asked again after that; a key that is absent is never remembered, and deleting
a key through this instance forgets it at once. A key deleted by another process (the
webserver, say) still reads as present here for at most that long; nothing in cohortflow
depends on a deletion being seen sooner (the data sensor re-adds its keys on every request).

``cohortflow`` writes this into a new ``dagster.yaml`` (``cli.main.ensure_dagster_home``)::

    instance_class:
      module: resources.instance
      class: CohortflowInstance

An existing ``dagster.yaml`` is left alone; add those lines to it to get the same. Where
``dagster.yaml`` names no storage, the instance's storage is
:class:`resources.sqlite_storage.CohortflowSqliteStorage` (Dagster's SQLite files, the event
log's connections kept open) instead of Dagster's ``DagsterSqliteStorage``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from dagster import DagsterInstance, Field
from dagster._core.instance.ref import InstanceRef
from dagster._serdes import ConfigurableClassData

DEFAULT_TTL_S = 5.0

INSTANCE_CLASS_YAML = "instance_class:\n  module: resources.instance\n  class: CohortflowInstance\n"


class CohortflowInstance(DagsterInstance):
    """:class:`dagster.DagsterInstance` that remembers which dynamic partition keys exist."""

    def __init__(self, *args: Any, dynamic_partition_ttl_s: float = DEFAULT_TTL_S, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._ttl_s = float(dynamic_partition_ttl_s)
        self._seen: dict[tuple[str, str], float] = {}  # (definition, key) -> when found
        self._seen_lock = threading.Lock()
        self._clock = time.monotonic  # tests swap in a fake clock

    # the two hooks Dagster's config loader asks a custom instance class for
    @classmethod
    def config_schema(cls) -> dict[str, Field]:
        """``dynamic_partition_ttl_s`` in ``dagster.yaml``; 0 turns the memory off."""
        return {"dynamic_partition_ttl_s": Field(float, is_required=False)}

    @staticmethod
    def config_defaults(base_dir: str) -> Mapping[str, Any]:
        """Dagster's defaults, with the SQLite storage of ``resources/sqlite_storage.py``
        (same files, connections kept open) where ``dagster.yaml`` names no storage."""
        defaults = dict(InstanceRef.config_defaults(base_dir))
        for key, dagster_class, ours in (
            ("storage", "DagsterSqliteStorage", "CohortflowSqliteStorage"),
            ("event_log_storage", "SqliteEventLogStorage", "KeptEngineEventLogStorage"),
        ):
            data = defaults[key]
            if data.class_name != dagster_class:  # Dagster's default moved: look again
                raise RuntimeError(f"unexpected default {key} in Dagster: {data.class_name}")
            defaults[key] = ConfigurableClassData(
                "resources.sqlite_storage", ours, data.config_yaml
            )
        return defaults

    def has_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> bool:
        key = (partitions_def_name, partition_key)
        now = self._clock()
        with self._seen_lock:
            found_at = self._seen.get(key)
        if found_at is not None and now - found_at < self._ttl_s:
            return True
        exists = super().has_dynamic_partition(partitions_def_name, partition_key)
        with self._seen_lock:
            if exists:
                self._seen[key] = now
            else:
                self._seen.pop(key, None)
        return exists

    def delete_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> None:
        with self._seen_lock:
            self._seen.pop((partitions_def_name, partition_key), None)
        super().delete_dynamic_partition(partitions_def_name, partition_key)


__all__ = ["CohortflowInstance", "DEFAULT_TTL_S", "INSTANCE_CLASS_YAML"]
