"""The canonical store: each artifact kind written in its format at its exact path.

The Dagster IO manager is a thin adapter over :class:`Store`; everything here also works
from a script or a test without Dagster, on any UPath root (local folders, ``memory://``,
object storage).

Writes into an attempt folder hold the attempt's lock (so two runs of one partition
never interleave), withdraw the attempt's ``_COMPLETE`` marker first, and only the
cohort-snapshot write of a stage puts the marker back, after every file is in place.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from upath import UPath

from cohortflow.canonical import canonical_json, canonical_json_bytes, normalize, sha256_hex
from cohortflow.errors import ArtifactNotFoundError, InvalidNameError, StoreError
from cohortflow.fsio import (
    atomic_write_many,
    exclusive_lock,
    remove_file,
    remove_stale_tmp,
)
from cohortflow.layout import (
    COMPLETE_MARKER,
    CohortRecord,
    Scope,
    validate_batch,
)
from cohortflow.names import validate_name
from cohortflow.parquet import column_compression
from cohortflow.snapshots import (
    Baseline,
    CohortDraft,
    finalize_cohort,
    manifest_records,
    manifest_sha256,
)

log = logging.getLogger(__name__)

WORK_DIR = "_work"
REPORTS_DIR = "reports"
# files at least this large are hashed on _HASHER while they are written
_HASH_ON_THREAD_BYTES = 1 << 20


def _new_hasher() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="cohortflow-sha256")


_HASHER = _new_hasher()


def _hasher_after_fork() -> None:
    # a forked child has the executor but not its thread: work queued there would wait forever
    global _HASHER
    _HASHER = _new_hasher()


os.register_at_fork(after_in_child=_hasher_after_fork)


# --------------------------------------------------------------------------- encoders
def csv_bytes(frame: pd.DataFrame) -> bytes:
    """CSV with fixed float format and LF line ends: byte-identical for equal frames."""
    return frame.to_csv(index=False, float_format="%.12g", lineterminator="\n").encode("utf-8")


def yaml_bytes(doc: Any) -> bytes:
    return yaml.safe_dump(
        normalize(doc), sort_keys=True, default_flow_style=False, allow_unicode=True, width=100
    ).encode("utf-8")


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Deterministic parquet: no index, no dictionary pages (3x faster on floats); zstd on
    every column but the floating-point ones (see :func:`column_compression`)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, use_dictionary=False, **column_compression(table.schema))
    return buf.getvalue()


def read_parquet(path: Any) -> pd.DataFrame:
    with path.open("rb") as fh:
        frame = pq.read_table(fh).to_pandas()
    # Arrow's allocator keeps the freed read buffers (about 1.5x the frame) for reuse; hand
    # them back, or every step's numpy work stacks on top of them (0.8 -> 0.4 GB RSS after
    # reading a 0.3 GB panel)
    pa.default_memory_pool().release_unused()
    return frame


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class WrittenFile:
    """One file the store wrote: the facts the IO manager shows as Dagster metadata."""

    relpath: str
    size: int
    sha256: str
    rows: int | None = None


@dataclass(frozen=True)
class StageSnapshots:
    """A stage's cohorts plus the stage artifacts that go into their attempt folders
    (relpath inside the attempt folder -> bytes), written before the cohorts."""

    stage: str
    target: str
    batch: str
    attempt: int
    drafts: tuple[CohortDraft, ...]
    extras: Mapping[Scope, Mapping[str, bytes]] = field(default_factory=dict)
    run_info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CohortView:
    """A cohort as read back from disk."""

    record: CohortRecord
    metadata: Mapping[str, Any]
    metrics: Mapping[str, Any]
    snapshot: Mapping[str, Any]
    diff_prev: Mapping[str, Any] | None
    drift: Mapping[str, Any] | None


class Store:
    """Reads and writes every artifact kind under one output root."""

    def __init__(self, root: str | Any) -> None:
        self.root = UPath(root)

    # ---------------------------------------------------------------- low level
    def rel(self, path: Any) -> str:
        return UPath(path).relative_to(self.root).as_posix()

    def _write(self, path: Any, data: bytes, rows: int | None = None) -> WrittenFile:
        return self._write_all([(path, data, rows)])[0]

    def _write_all(self, items: Sequence[tuple[Any, bytes, int | None]]) -> list[WrittenFile]:
        """Write files atomically (one fsync per folder, :func:`atomic_write_many`) and
        describe them; large files are hashed on a second thread while they are written
        (hashlib and the writes release the GIL: 15 ms of a 23 MB OOF write)."""
        pending = [
            _HASHER.submit(sha256_hex, data) if len(data) >= _HASH_ON_THREAD_BYTES else None
            for _, data, _ in items
        ]
        atomic_write_many([(path, data) for path, data, _ in items])
        return [
            WrittenFile(self.rel(path), len(data), f.result() if f else sha256_hex(data), rows)
            for (path, data, rows), f in zip(items, pending, strict=True)
        ]

    def read_json(self, path: Any) -> Any:
        if not path.exists():
            raise ArtifactNotFoundError(f"not found: {path}")
        return json.loads(path.read_text())

    def _begin_attempt_write(self, scope: Scope) -> None:
        """Withdraw the completion marker and sweep temp files a killed writer left."""
        remove_file(scope.complete_marker(self.root))
        remove_stale_tmp(scope.attempt_dir(self.root), recursive=True)

    def lock(self, scope: Scope):
        return exclusive_lock(scope.lock_path(self.root))

    # ---------------------------------------------------------------- batch level
    def work_dir(self, batch: str) -> Any:
        return self.root / WORK_DIR / f"batch_{validate_batch(batch)}"

    def write_frame(
        self, batch: str, name: str, frame: pd.DataFrame, info: Mapping
    ) -> list[WrittenFile]:
        """Batch-level working data (bars, the feature panel): parquet plus a JSON sidecar."""
        validate_name("artifact", name)
        folder = self.work_dir(batch)
        # the JSON is renamed into place after the Parquet file: readers look for both
        return self._write_all(
            [
                (folder / f"{name}.parquet", parquet_bytes(frame), len(frame)),
                (folder / f"{name}.json", canonical_json_bytes(info), None),
            ]
        )

    def read_frame(self, batch: str, name: str) -> tuple[pd.DataFrame, dict]:
        info = self.read_frame_info(batch, name)
        return read_parquet(self.work_dir(batch) / f"{name}.parquet"), info

    def read_frame_info(self, batch: str, name: str) -> dict:
        """The JSON that describes a batch frame (written after its Parquet file)."""
        folder = self.work_dir(batch)
        path = folder / f"{name}.parquet"
        if not path.exists():
            raise ArtifactNotFoundError(
                f"{name} not found for batch {batch}; expected {path}; "
                f"materialize the batch's {name} asset first"
            )
        return json.loads((folder / f"{name}.json").read_text())

    def write_universe(self, universe: Any) -> list[WrittenFile]:
        """The validated bars of a universe (long format) and what it is."""
        frames = [universe.bars[s].assign(symbol=s) for s in universe.symbols]
        long = pd.concat(frames, ignore_index=True)
        long = long[
            ["timestamp", "symbol", *[c for c in long.columns if c not in ("timestamp", "symbol")]]
        ]
        info = {
            "universe_sig": universe.universe_sig,
            "symbols": list(universe.symbols),
            "data_dir": str(universe.data_dir),
            "files": [
                {"symbol": f.symbol, "name": f.path.name, "sha256": f.sha256, "size": f.size}
                for f in universe.files
            ],
            "skipped": [
                {"symbol": k.symbol, "path": k.path, "reason": k.reason} for k in universe.skipped
            ],
            "columns": {s: list(universe.bars[s].columns) for s in universe.symbols},
        }
        return self.write_frame(universe.batch, "bars", long, info)

    def read_universe(self, batch: str, *, bars: bool = True) -> Any:
        """The batch's universe as stored; ``bars=False``: what it is (symbols, files and
        their hashes, signature) without reading its bars."""
        from pathlib import Path

        from cohortflow.bars import Skipped, SymbolFile, Universe

        if bars:
            long, info = self.read_frame(batch, "bars")
            by_symbol = {
                sym: frame[info["columns"][sym]].reset_index(drop=True)
                for sym, frame in long.groupby("symbol", sort=True, observed=True)
            }
        else:
            info, by_symbol = self.read_frame_info(batch, "bars"), {}
        data_dir = Path(info["data_dir"])
        universe = Universe(
            symbols=tuple(info["symbols"]),
            files=tuple(
                SymbolFile(f["symbol"], data_dir / f["name"], f["sha256"], f["size"])
                for f in info["files"]
            ),
            bars=by_symbol,
            skipped=tuple(Skipped(**k) for k in info["skipped"]),
            data_dir=data_dir,
        )
        if universe.universe_sig != info["universe_sig"]:
            raise StoreError(
                f"{self.work_dir(batch)}: stored bars do not match universe {info['universe_sig']}"
            )
        return universe

    def write_panel(self, batch: str, panel: Any) -> list[WrittenFile]:
        info = {
            "computed": list(panel.computed),
            "user": list(panel.user),
            "horizons": list(panel.horizons),
        }
        return self.write_frame(batch, "panel", panel.frame, info)

    def read_panel(self, batch: str) -> Any:
        from cohortflow.features import Panel

        frame, info = self.read_frame(batch, "panel")
        return Panel(frame, tuple(info["computed"]), tuple(info["user"]), tuple(info["horizons"]))

    # ---------------------------------------------------------------- scopes
    def scopes(self, target: str, stage: str, batch: str, attempt: int) -> list[Scope]:
        """The cross-sectional scope and every symbol scope that exists on disk."""
        cs = Scope(target, stage, "CROSS_SECTIONAL", batch, attempt)
        out = [cs]
        sy_root = Scope(target, stage, "SYMBOL_SPECIFIC", batch, attempt, "X").view_dir(self.root)
        if sy_root.exists():
            for child in sorted(sy_root.iterdir(), key=lambda p: p.name):
                if child.name.startswith("symbol="):
                    try:
                        scope = Scope(
                            target, stage, "SYMBOL_SPECIFIC", batch, attempt, child.name[7:]
                        )
                    except InvalidNameError:  # a stray folder must not break every reader
                        log.warning("skipping %s: not a symbol folder of this tree", child)
                        continue
                    if scope.attempt_dir(self.root).exists():
                        out.append(scope)
        return out

    def write_attempt_files(self, files: Mapping[Scope, Mapping[str, bytes]]) -> list[WrittenFile]:
        """Write artifact files into attempt folders (relpath inside the attempt folder)."""
        written = []
        for scope in sorted(files, key=_scope_order):
            with self.lock(scope):
                self._begin_attempt_write(scope)
                base = scope.attempt_dir(self.root)
                for relpath, data in sorted(files[scope].items()):
                    written.append(self._write(base / relpath, data))
        return written

    # ---------------------------------------------------------------- exclusions
    def write_exclusions(self, items: Mapping[Scope, Any]) -> list[WrittenFile]:
        """``items``: scope -> :class:`cohortflow.leakage.Exclusions` (YAML, sorted)."""
        return self.write_attempt_files(
            {
                s: {
                    s.exclusions_path(self.root)
                    .relative_to(s.attempt_dir(self.root))
                    .as_posix(): yaml_bytes(e.to_dict())
                }
                for s, e in items.items()
            }
        )

    def read_exclusions(
        self, target: str, batch: str, attempt: int, stage: str = "TARGET_RANKING"
    ) -> dict[Scope, Any]:
        from cohortflow.leakage import Exclusions

        out = {}
        for scope in self.scopes(target, stage, batch, attempt):
            path = scope.exclusions_path(self.root)
            if path.exists():
                out[scope] = Exclusions.from_dict(yaml.safe_load(path.read_text()))
        if not out:
            raise ArtifactNotFoundError(
                f"exclusions not found for target {target} batch {batch} attempt {attempt}; "
                f"expected {Scope(target, stage, 'CROSS_SECTIONAL', batch, attempt).exclusions_path(self.root)}"
            )
        return out

    # ---------------------------------------------------------------- importances
    def write_importances(
        self, items: Mapping[Scope, Mapping[str, pd.DataFrame]]
    ) -> list[WrittenFile]:
        files = {}
        for scope, by_model in items.items():
            base = scope.attempt_dir(self.root)
            files[scope] = {
                scope.importances_path(self.root, model).relative_to(base).as_posix(): csv_bytes(
                    frame
                )
                for model, frame in by_model.items()
            }
        return self.write_attempt_files(files)

    def read_importances(
        self, target: str, stage: str, batch: str, attempt: int
    ) -> dict[Scope, dict[str, pd.DataFrame]]:
        out: dict[Scope, dict[str, pd.DataFrame]] = {}
        for scope in self.scopes(target, stage, batch, attempt):
            folder = scope.attempt_dir(self.root) / "feature_importances"
            if not folder.exists():
                continue
            models = {}
            for path in sorted(folder.iterdir(), key=lambda p: p.name):
                if path.name.endswith("_importances.csv"):
                    with path.open("rb") as fh:
                        models[path.name[: -len("_importances.csv")]] = pd.read_csv(fh)
            out[scope] = models
        return out

    # ---------------------------------------------------------------- featuresets
    def write_featuresets(self, items: Mapping[Scope, Any]) -> list[WrittenFile]:
        return self.write_attempt_files(
            {
                s: {
                    s.featureset_path(self.root)
                    .relative_to(s.attempt_dir(self.root))
                    .as_posix(): canonical_json_bytes(fs.to_dict())
                }
                for s, fs in items.items()
            }
        )

    def read_featuresets(
        self, target: str, batch: str, attempt: int, stage: str = "FEATURE_SELECTION"
    ) -> dict[Scope, Any]:
        from cohortflow.selection import Featureset

        out = {}
        for scope in self.scopes(target, stage, batch, attempt):
            path = scope.featureset_path(self.root)
            if path.exists():
                out[scope] = Featureset.from_dict(json.loads(path.read_text()))
        if not out:
            raise ArtifactNotFoundError(
                f"featureset not found for target {target} batch {batch} attempt {attempt}; "
                f"expected {Scope(target, stage, 'CROSS_SECTIONAL', batch, attempt).featureset_path(self.root)}"
            )
        return out

    # ---------------------------------------------------------------- OOF
    def write_oof(
        self,
        scope: Scope,
        frame: pd.DataFrame,
        fold_plan: Mapping,
        extra: Mapping[str, Any] | None = None,
    ) -> list[WrittenFile]:
        from cohortflow.oof import (
            parquet_bytes as oof_parquet_bytes,  # fixed schema, no pandas metadata
        )

        with self.lock(scope):
            self._begin_attempt_write(scope)
            files = [
                (scope.oof_path(self.root), oof_parquet_bytes(frame), len(frame)),
                (scope.fold_plan_path(self.root, "oof"), canonical_json_bytes(fold_plan), None),
            ]
            if extra:
                metrics = scope.attempt_dir(self.root) / "oof" / "oof_metrics.json"
                files.append((metrics, canonical_json_bytes(extra), None))
            return self._write_all(files)

    def read_oof(self, scope: Scope) -> tuple[pd.DataFrame, dict]:
        path = scope.oof_path(self.root)
        if not path.exists():
            raise ArtifactNotFoundError(f"OOF dataset not found; expected {path}")
        plan = json.loads(scope.fold_plan_path(self.root, "oof").read_text())
        return read_parquet(path), plan

    # ---------------------------------------------------------------- stacking model
    def write_stacking(self, scope: Scope, result: Any) -> list[WrittenFile]:
        """Save the stack in native formats (``cohortflow.stacking.save_stacking`` into a
        scratch folder), then write its files into ``stacking/`` like any other artifact."""
        import tempfile
        from pathlib import Path

        from cohortflow.stacking import save_stacking

        with tempfile.TemporaryDirectory(prefix="cohortflow-stack-") as tmp:
            paths = save_stacking(result, tmp)
            files = {Path(p).relative_to(tmp).as_posix(): Path(p).read_bytes() for p in paths}
        return self.write_folder(scope, "stacking", files)

    def read_stacking(self, scope: Scope) -> Any:
        """The stack as a user loads it: native boosters and JSON, no code executed."""
        import tempfile
        from pathlib import Path

        from cohortflow.fsio import is_local, local_path
        from cohortflow.stacking import load_stacking

        folder = scope.stacking_dir(self.root)
        if not folder.exists():
            raise ArtifactNotFoundError(f"stacking model not found; expected {folder}")
        if is_local(folder):
            return load_stacking(local_path(folder))
        with tempfile.TemporaryDirectory(prefix="cohortflow-stack-") as tmp:
            for child in folder.iterdir():
                (Path(tmp) / child.name).write_bytes(child.read_bytes())
            return load_stacking(tmp)

    def read_test_predictions(self, scope: Scope) -> pd.DataFrame:
        path = scope.stacking_dir(self.root) / "test_predictions.parquet"
        if not path.exists():
            raise ArtifactNotFoundError(f"test predictions not found; expected {path}")
        return read_parquet(path)

    # ---------------------------------------------------------------- any folder of files
    def write_folder(
        self, scope: Scope, folder: str, files: Mapping[str, bytes]
    ) -> list[WrittenFile]:
        return self.write_attempt_files(
            {scope: {f"{folder}/{name}": data for name, data in files.items()}}
        )

    # ---------------------------------------------------------------- cohort snapshots
    def write_stage_snapshots(self, result: StageSnapshots) -> list[WrittenFile]:
        """Write the stage's extra artifacts, then each cohort, then the completion markers."""
        from cohortflow.index import CohortIndex

        written = self.write_attempt_files(result.extras) if result.extras else []
        index = CohortIndex(self.root)
        by_scope: dict[Scope, list[CohortDraft]] = {}
        for draft in result.drafts:
            by_scope.setdefault(draft.scope, []).append(draft)
        for scope in sorted(by_scope, key=_scope_order):
            with self.lock(scope):
                attempt_dir = scope.attempt_dir(self.root)
                records = manifest_records(attempt_dir)
                cohort_ids: list[str] = []
                indexed: list[tuple[CohortRecord, dict]] = []
                for draft in by_scope[scope]:
                    baseline = self.find_baseline(draft)
                    files = finalize_cohort(draft, records, baseline, result.run_info)
                    cohort_dir = scope.cohort_dir(self.root, files.cohort_id)
                    for name, doc in sorted(files.documents.items()):
                        written.append(self._write(cohort_dir / name, canonical_json(doc).encode()))
                    # a stale diff from an earlier run without a baseline must not survive
                    for optional in ("diff_prev.json", "drift.json"):
                        if optional not in files.documents:
                            remove_file(cohort_dir / optional)
                    indexed.append(
                        (scope.record(files.cohort_id, draft.universe_sig), dict(draft.key_metrics))
                    )
                    cohort_ids.append(files.cohort_id)
                marker = {
                    "artifacts_manifest_sha256": manifest_sha256(records),
                    "cohorts": sorted(cohort_ids),
                }
                written.append(
                    self._write(scope.complete_marker(self.root), canonical_json_bytes(marker))
                )
                # indexed only once complete: the index never lists a half-written attempt
                index.add_many(indexed)
        return written

    def find_baseline(self, draft: CohortDraft) -> Baseline | None:
        """The previous comparable snapshot: same target, stage, view, and universe (CS)
        or symbol (SY); the latest earlier attempt of the batch, else another cohort of the
        same attempt (changed data), else (symbol view) the same symbol in another batch."""
        from cohortflow.index import CohortIndex

        s = draft.scope
        index = CohortIndex(self.root)
        if not index.exists():
            return None
        candidates = [
            r
            for r in index.list(target=s.target, stage=s.stage, view=s.view, symbol=s.symbol)
            if r.cohort_id != draft.cohort_id
            and (s.view == "SYMBOL_SPECIFIC" or r.batch == s.batch)
        ]
        same_batch = [r for r in candidates if r.batch == s.batch]
        earlier = [r for r in same_batch if r.attempt < s.attempt]
        if earlier:
            top = max(r.attempt for r in earlier)
            pool = [r for r in earlier if r.attempt == top]
        else:
            pool = [r for r in same_batch if r.attempt == s.attempt] or [
                r for r in candidates if r.batch != s.batch
            ]
        best: tuple[Any, ...] | None = None
        for record in pool:
            folder = self.root / record.path
            try:
                snap_bytes = (folder / "snapshot.json").read_bytes()
                meta = json.loads((folder / "metadata.json").read_text())
            except FileNotFoundError:
                continue
            key = (str(meta.get("run", {}).get("finished_at", "")), record.path)
            if best is None or key > best[0]:
                best = (key, record, snap_bytes, meta)
        if best is None:
            return None
        _, record, snap_bytes, meta = best
        return Baseline(record.path, json.loads(snap_bytes), meta, sha256_hex(snap_bytes))

    def read_cohorts(self, target: str, stage: str, batch: str, attempt: int) -> list[CohortView]:
        from cohortflow.layout import parse_cohort_path

        out = []
        for scope in self.scopes(target, stage, batch, attempt):
            folder = scope.attempt_dir(self.root)
            for child in sorted(folder.iterdir(), key=lambda p: p.name):
                if child.name.startswith("cohort=") and (child / "snapshot.json").exists():
                    out.append(self.read_cohort_dir(child, parse_cohort_path(self.root, child)))
        return out

    def read_cohort_dir(self, folder: Any, record: CohortRecord | None) -> CohortView:
        def load(name: str) -> Any:
            path = folder / name
            return json.loads(path.read_text()) if path.exists() else None

        snapshot = load("snapshot.json")
        metrics = load("metrics.json")
        if (
            snapshot
            and metrics
            and snapshot.get("scoring_schema_version") != metrics.get("schema", {}).get("scoring")
        ):
            raise StoreError(
                f"{folder}: snapshot.json scoring_schema_version {snapshot.get('scoring_schema_version')} "
                f"!= metrics.json schema.scoring {metrics.get('schema', {}).get('scoring')}"
            )
        return CohortView(
            record,
            load("metadata.json") or {},
            metrics or {},
            snapshot or {},
            load("diff_prev.json"),
            load("drift.json"),
        )

    # ---------------------------------------------------------------- verification
    def verify_manifest(self, scope: Scope) -> tuple[bool, str]:
        """Do the attempt's files still match the manifest its cohorts recorded?"""
        folder = scope.attempt_dir(self.root)
        marker = scope.complete_marker(self.root)
        if not marker.exists():
            return False, f"{self.rel(folder)}: attempt not complete (no {COMPLETE_MARKER})"
        recorded = json.loads(marker.read_text())["artifacts_manifest_sha256"]
        actual = manifest_sha256(manifest_records(folder))
        if recorded != actual:
            return False, f"{self.rel(folder)}: manifest {actual} != recorded {recorded}"
        return True, f"{self.rel(folder)}: manifest {actual} matches"

    # ---------------------------------------------------------------- reports
    def report_dir(self, batch: str, attempt: int) -> Any:
        return (
            self.root / REPORTS_DIR / f"batch_{validate_batch(batch)}" / f"attempt_{int(attempt)}"
        )

    def write_report(
        self, batch: str, attempt: int, name: str, frame: pd.DataFrame
    ) -> list[WrittenFile]:
        validate_name("report", name)
        return [
            self._write(
                self.report_dir(batch, attempt) / f"{name}.csv", csv_bytes(frame), rows=len(frame)
            )
        ]

    def read_report(self, batch: str, attempt: int, name: str) -> pd.DataFrame:
        path = self.report_dir(batch, attempt) / f"{name}.csv"
        if not path.exists():
            raise ArtifactNotFoundError(f"report {name} not found; expected {path}")
        with path.open("rb") as fh:
            return pd.read_csv(fh)


def _scope_order(scope: Scope) -> tuple:
    return (scope.target, scope.stage, scope.view, scope.symbol or "", scope.batch, scope.attempt)
