"""The one IO manager: (asset key, partition) -> the canonical path of DESIGN §2.

Each asset declares what it holds with the definition metadata ``cohortflow/kind``;
this class maps the kind to a :class:`cohortflow.store.Store` method and reports what it
wrote as Dagster metadata (path, sha256, rows, the files). The store does the real work
(formats, atomic writes, locks, completion markers), so it is tested without Dagster.

A single-run backfill over many partitions hands this IO manager a mapping
``{partition key: value}``; it writes each partition in turn.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from dagster import (
    ConfigurableIOManager,
    InputContext,
    MetadataValue,
    MultiPartitionKey,
    OutputContext,
)

from assets.partitions import split_key
from cohortflow.fsio import is_local, local_path
from cohortflow.layout import Scope
from cohortflow.store import StageSnapshots, Store, WrittenFile
from io_managers.keys import KIND_KEY, LOAD_KEY, STAGE_KEY
from resources.cohortflow import default_output_root


class LastPanel:
    """The feature panel this process read last, kept while its files are unchanged.

    Every step of an attempt reads the batch's panel (up to nine per target); in process
    they share one copy instead of decoding the same Parquet file each time (0.7 GB and
    ~1 s a read at 500 symbols). The key is the identity of both of its files (inode,
    size, mtime): a rewritten panel is an atomic rename, a new inode, so it is read
    again. One panel at most: the previous one is dropped before the next is read.
    Remote roots (``memory://``, object stores) are read every time.

    Steps must not modify the panel in place: pandas' copy-on-write (pandas 3) makes
    derived frames copies, and nothing in ``assets/`` or ``cohortflow/`` assigns into it.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._panel: Any = None
        self.reads = 0  # panels decoded (for tests)

    def get(self, store: Store, batch: str) -> Any:
        folder = store.work_dir(batch)
        if not is_local(folder):
            self.reads += 1
            return store.read_panel(batch)
        try:
            key = tuple(
                (st.st_ino, st.st_size, st.st_mtime_ns)
                for st in (
                    os.stat(local_path(folder / name)) for name in ("panel.parquet", "panel.json")
                )
            )
        except FileNotFoundError:
            return store.read_panel(batch)  # raises the store's own "not found" error
        key = (str(local_path(folder)), *key)
        if key != self._key:
            self._key, self._panel = None, None
            self._panel, self._key = store.read_panel(batch), key
            self.reads += 1
        return self._panel


LAST_PANEL = LastPanel()


def _cs(target: str, stage: str, batch: str, attempt: int) -> Scope:
    return Scope(target, stage, "CROSS_SECTIONAL", batch, attempt)


def _write_oof(
    store: Store, target: str, batch: str, attempt: int, value: Any
) -> list[WrittenFile]:
    scope = _cs(target, "TRAINING", batch, attempt)
    extra = {
        "folds": list(value.fold_metrics),
        "models": list(value.models),
        "features": {m: list(f) for m, f in value.features.items()},
        "params": dict(value.params),
    }
    written = store.write_oof(scope, value.frame, value.fold_plan.to_dict(), extra)
    # tuned hyper-parameters (settings.tune): one JSON in the attempt folder; untuned runs
    # carry an empty dict per model, which is no tuning result and gets no file
    if any(value.params.values()):
        from cohortflow.canonical import canonical_json_bytes

        written += store.write_folder(
            scope, "tuning", {"tuned_params.json": canonical_json_bytes(dict(value.params))}
        )
    return written


def _read_oof(store: Store, target: str, batch: str, attempt: int) -> Any:
    from cohortflow.oof import OOFResult
    from cohortflow.splits import FoldPlan

    scope = _cs(target, "TRAINING", batch, attempt)
    frame, plan = store.read_oof(scope)
    extra = store.read_json(scope.attempt_dir(store.root) / "oof" / "oof_metrics.json")
    return OOFResult(
        frame=frame,
        fold_plan=FoldPlan.from_dict(plan, frame["timestamp"].to_numpy()),
        fold_metrics=tuple(extra["folds"]),
        models=tuple(extra["models"]),
        params=extra["params"],
        features={m: tuple(f) for m, f in extra["features"].items()},
    )


def _write_stacking(
    store: Store, target: str, batch: str, attempt: int, value: Any
) -> list[WrittenFile]:
    return store.write_stacking(_cs(target, "TRAINING", batch, attempt), value)


def _read_stacking(store: Store, target: str, batch: str, attempt: int) -> Any:
    return store.read_stacking(_cs(target, "TRAINING", batch, attempt))


def _write_evaluation(
    store: Store, target: str, batch: str, attempt: int, value: Any
) -> list[WrittenFile]:
    from cohortflow.canonical import canonical_json_bytes

    scope = _cs(target, "TRAINING", batch, attempt)
    return store.write_folder(scope, "evaluation", {"evaluation.json": canonical_json_bytes(value)})


def read_evaluation(store: Store, target: str, batch: str, attempt: int) -> Any:
    """A target's evaluation.json (TRAINING, cross-sectional) of one batch × attempt."""
    import json

    folder = _cs(target, "TRAINING", batch, attempt).attempt_dir(store.root) / "evaluation"
    return json.loads((folder / "evaluation.json").read_text())


Writer = Callable[[Store, str, str, int, Any], list[WrittenFile]]
Reader = Callable[[Store, str, str, int], Any]

# kind -> (writer, reader); target is None for assets without a target prefix
ATTEMPT_KINDS: dict[str, tuple[Writer, Reader]] = {
    "feature_exclusions": (
        lambda s, t, b, a, v: s.write_exclusions(v),
        lambda s, t, b, a: s.read_exclusions(t, b, a),
    ),
    "cohort_snapshot": (
        lambda s, t, b, a, v: s.write_stage_snapshots(v),
        None,  # needs the stage: see _read_snapshots
    ),
    "feature_importances": (
        lambda s, t, b, a, v: s.write_importances(v),
        lambda s, t, b, a: s.read_importances(t, "FEATURE_SELECTION", b, a),
    ),
    "featureset": (
        lambda s, t, b, a, v: s.write_featuresets(v),
        lambda s, t, b, a: s.read_featuresets(t, b, a),
    ),
    "oof_dataset": (_write_oof, _read_oof),
    "stacking_model": (_write_stacking, _read_stacking),
    "evaluation": (_write_evaluation, read_evaluation),
    "report": (
        lambda s, t, b, a, v: s.write_report(b, a, "target_ranking", v),
        lambda s, t, b, a: s.read_report(b, a, "target_ranking"),
    ),
}


class CanonicalStoreIOManager(ConfigurableIOManager):
    """Writes every asset of the graph into the canonical tree under ``root`` (any UPath)."""

    root: str = default_output_root()

    def store(self) -> Store:
        return Store(self.root)

    # ------------------------------------------------------------------ output
    def handle_output(self, context: OutputContext, obj: Any) -> None:
        kind = context.definition_metadata.get(KIND_KEY)
        if kind is None:
            raise ValueError(f"asset {context.asset_key.to_user_string()} declares no {KIND_KEY}")
        keys = list(context.asset_partition_keys) if context.has_asset_partitions else []
        if len(keys) > 1:
            # single-run backfill: the asset returned one value per partition
            if not isinstance(obj, Mapping) or set(map(str, obj)) != set(map(str, keys)):
                raise ValueError(
                    f"{context.asset_key.to_user_string()}: a run over {len(keys)} partitions "
                    "must return a mapping {partition key: value}"
                )
            by_str = {str(k): v for k, v in obj.items()}
            written = []
            for key in keys:
                written += self._write_one(context, kind, key, by_str[str(key)])
        else:
            written = self._write_one(context, kind, keys[0] if keys else None, obj)
        context.add_output_metadata(self._metadata(written))

    def _write_one(
        self, context: OutputContext, kind: str, key: Any, obj: Any
    ) -> list[WrittenFile]:
        store = self.store()
        batch, attempt = split_key(key)
        if kind == "universe_bars":
            return store.write_universe(obj)
        if kind == "feature_panel":
            return store.write_panel(batch, obj)
        writer, _ = ATTEMPT_KINDS[kind]
        return writer(store, _target(context.asset_key.path), batch, attempt, obj)

    def _metadata(self, written: list[WrittenFile]) -> dict[str, Any]:
        if not written:
            return {"files": 0}
        main = max(written, key=lambda w: (w.rows is not None, w.size))
        listing = "\n".join(
            f"| `{w.relpath}` | {w.size:,} | `{w.sha256[:12]}` |"
            for w in sorted(written, key=lambda w: w.relpath)
        )
        meta: dict[str, Any] = {
            "path": MetadataValue.path(str(self.store().root / main.relpath)),
            "sha256": main.sha256,
            "files": len(written),
            "bytes": sum(w.size for w in written),
            "written": MetadataValue.md("| file | bytes | sha256 |\n|---|---:|---|\n" + listing),
        }
        if main.rows is not None:
            meta["rows"] = main.rows
        return meta

    # ------------------------------------------------------------------ input
    def load_input(self, context: InputContext) -> Any:
        upstream = context.upstream_output
        kind = upstream.definition_metadata.get(KIND_KEY) if upstream else None
        store = self.store()
        keys = list(context.asset_partition_keys) if context.has_asset_partitions else []
        if len(keys) > 1:
            return {k: self._read_one(store, context, kind, k) for k in keys}
        return self._read_one(store, context, kind, keys[0] if keys else None)

    def _read_one(self, store: Store, context: InputContext, kind: str | None, key: Any) -> Any:
        batch, attempt = split_key(key)
        if kind == "universe_bars":
            # an input may ask for the universe's files only (io_managers.keys.LOAD_KEY)
            load = (context.definition_metadata or {}).get(LOAD_KEY, "bars")
            return store.read_universe(batch, bars=load != "files")
        if kind == "feature_panel":
            return LAST_PANEL.get(store, batch)
        target = _target(context.asset_key.path)
        if kind == "cohort_snapshot":
            stage = context.upstream_output.definition_metadata[STAGE_KEY]
            return store.read_cohorts(target, stage, batch, attempt)
        if kind not in ATTEMPT_KINDS:
            raise ValueError(
                f"input {context.asset_key.to_user_string()}: its asset declares no known {KIND_KEY} ({kind!r})"
            )
        _, reader = ATTEMPT_KINDS[kind]
        return reader(store, target, batch, attempt)


def _target(path: list[str]) -> str | None:
    return path[0] if len(path) > 1 else None


__all__ = ["CanonicalStoreIOManager", "KIND_KEY", "LOAD_KEY", "MultiPartitionKey", "StageSnapshots"]
