"""The canonical store: every artifact kind, written in its format at its exact path.

``Store.write(kind, key, value)`` and ``Store.read(kind, key)`` are the only ways the
graph, the command line and the loader touch the tree; paths come from
:mod:`cohortflow.layout`, bytes from :mod:`cohortflow.formats`. The Dagster IO manager is
a thin adapter over this class, and everything here works without Dagster on any UPath
root (local folders, ``memory://``, object storage).

Attempt folders and their markers (DESIGN §4):

- The first write into an attempt folder puts ``_IN_PROGRESS`` there, under the folder's
  lock (two runs of one partition never interleave their files).
- A stage's cohort snapshots are written last; then ``_COMPLETE`` (which records every
  file's sha256) seals the folder and ``_IN_PROGRESS`` goes.
- A sealed attempt is history: a later write into it must reproduce its bytes exactly,
  which is a verified no-op (nothing is touched, ``metadata.json``'s ``run`` key
  included), or it is refused with :class:`~cohortflow.errors.SealedAttemptError`. An
  attempt folder with neither marker was written by something else and is treated alike.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from cohortflow.canonical import canonical_json_bytes, sha256_hex
from cohortflow.domain import SNAPSHOT_OF, ArtifactKind, Stage, View
from cohortflow.errors import ArtifactNotFoundError, InvalidNameError, SealedAttemptError
from cohortflow.formats import (
    csv_bytes,
    json_bytes,
    parquet_bytes,
    parse_json,
    prediction_parquet_bytes,
    read_bytes,
    read_csv,
    read_json,
    read_parquet,
    read_yaml,
    require_keys,
    yaml_bytes,
)
from cohortflow.fsio import atomic_write_many, exclusive_lock, remove_file, remove_stale_tmp
from cohortflow.layout import (
    CohortRecord,
    Scope,
    as_root,
    cohort_file,
    lock_path,
    parse_cohort_path,
    report_path,
    validate_batch,
    work_dir,
    work_file,
)
from cohortflow.snapshots import (
    Baseline,
    CohortDraft,
    ManifestRecord,
    finalize_cohort,
    manifest_records,
    manifest_sha256,
    metadata_digest,
)

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class AttemptKey:
    """Which artifact of the tree: a target's (``target``) or the batch's (``target=None``)
    for one batch (12 hex) and attempt (0, 1, ...)."""

    batch: str
    attempt: int
    target: str | None = None

    def __post_init__(self) -> None:
        validate_batch(self.batch)
        if isinstance(self.attempt, bool) or int(self.attempt) < 0:
            raise InvalidNameError(f"attempt must be a non-negative integer, got {self.attempt!r}")
        object.__setattr__(self, "attempt", int(self.attempt))

    def scope(
        self, stage: Stage, view: View = View.CROSS_SECTIONAL, symbol: str | None = None
    ) -> Scope:
        if self.target is None:
            raise InvalidNameError(f"batch {self.batch} attempt {self.attempt}: which target?")
        return Scope(self.target, stage, view, self.batch, self.attempt, symbol)


@dataclass(frozen=True)
class WrittenFile:
    """One file the store wrote (or found identical): what the IO manager shows."""

    relpath: str
    size: int
    sha256: str
    rows: int | None = None
    unchanged: bool = False


@dataclass(frozen=True)
class StageSnapshots:
    """A stage's cohorts plus the stage files that go into their attempt folders
    (relpath inside the attempt folder -> bytes), written before the cohorts."""

    stage: Stage
    target: str
    batch: str
    attempt: int
    drafts: tuple[CohortDraft, ...]
    extras: Mapping[Scope, Mapping[str, bytes]] = field(default_factory=dict)
    run_info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CohortView:
    """A cohort as read back from disk."""

    record: CohortRecord | None
    metadata: Mapping[str, Any]
    metrics: Mapping[str, Any]
    snapshot: Mapping[str, Any]
    diff_prev: Mapping[str, Any] | None
    drift: Mapping[str, Any] | None


Files = dict[Any, tuple[bytes, int | None]]  # path -> (bytes, rows)


class Store:
    """Reads and writes every artifact kind under one output root."""

    def __init__(self, root: str | Any) -> None:
        self.root = as_root(root)

    # ================================================================ the API
    def write(self, kind: ArtifactKind, key: AttemptKey, value: Any) -> list[WrittenFile]:
        """Write ``value`` (an artifact of ``kind``) for ``key``; see the module docstring."""
        kind = ArtifactKind(kind)
        if kind in _SNAPSHOT_KINDS:
            return self._write_snapshots(value)
        if kind is ArtifactKind.UNIVERSE_BARS:
            return self._write_work(key, "bars", *_universe_frame(value))
        if kind is ArtifactKind.FEATURE_PANEL:
            return self._write_work(key, "panel", *_panel_frame(value))
        if kind is ArtifactKind.RANKING_TABLE:
            path = report_path(self.root, key.batch, key.attempt, "target_ranking")
            return self._write_plain({path: (csv_bytes(value), len(value))}, key)
        return self.write_attempt_files(_ENCODERS[kind](self, key, value))

    def read(self, kind: ArtifactKind, key: AttemptKey, **options: Any) -> Any:
        """The artifact of ``kind`` for ``key`` as the graph uses it (options: ``bars=False``
        for a universe's files without its bars)."""
        kind = ArtifactKind(kind)
        return _READERS[kind](self, key, **options)

    # ================================================================ low level
    def rel(self, path: Any) -> str:
        return path.relative_to(self.root).as_posix()

    def _described(self, items: Sequence[tuple[Any, bytes, int | None]]) -> list[WrittenFile]:
        """Hash what is written: large files on a second thread while they are written
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

    def _unchanged(self, path: Any, data: bytes, rows: int | None) -> WrittenFile:
        return WrittenFile(self.rel(path), len(data), sha256_hex(data), rows, unchanged=True)

    def lock(self, scope: Scope):
        return exclusive_lock(scope.lock_path(self.root))

    def is_sealed(self, scope: Scope) -> bool:
        """Is this attempt folder history (``_COMPLETE``, or written by another system)?"""
        folder = scope.attempt_dir(self.root)
        if scope.complete_marker(self.root).exists():
            return True
        if scope.progress_marker(self.root).exists() or not folder.exists():
            return False
        return any(True for _ in folder.iterdir())  # files but no marker: external

    def attempt_sealed(
        self, batch: str, attempt: int, targets: Iterable[str] | None = None
    ) -> bool:
        """Is any folder of this batch × attempt sealed? (Its batch-level files then may
        not change either.)"""
        names = list(targets) if targets is not None else self.targets()
        return any(
            self.is_sealed(Scope(t, stage, View.CROSS_SECTIONAL, batch, attempt))
            for t in names
            for stage in Stage
        )

    def targets(self) -> list[str]:
        from cohortflow.layout import targets_dir

        folder = targets_dir(self.root)
        try:
            return sorted(p.name for p in folder.iterdir() if p.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    # ================================================================ attempt folders
    def write_attempt_files(self, files: Mapping[Scope, Files]) -> list[WrittenFile]:
        """Write files into attempt folders: each folder under its lock, with
        ``_IN_PROGRESS`` first; into a sealed folder only identical bytes (a no-op)."""
        written: list[WrittenFile] = []
        for scope in sorted(files, key=_scope_order):
            with self.lock(scope):
                if self.is_sealed(scope):
                    written += self._verify_sealed(scope, files[scope])
                    continue
                self._begin(scope)
                written += self._described(
                    [
                        (path, data, rows)
                        for path, (data, rows) in sorted(files[scope].items(), key=_by_str)
                    ]
                )
        return written

    def _begin(self, scope: Scope) -> None:
        """``_IN_PROGRESS`` into a folder cohortflow writes; sweep what a killed writer left."""
        marker = scope.progress_marker(self.root)
        if not marker.exists():
            atomic_write_many([(marker, b"")])
        remove_stale_tmp(scope.attempt_dir(self.root), recursive=True)

    def _verify_sealed(self, scope: Scope, files: Files) -> list[WrittenFile]:
        out, differ = [], []
        for path, (data, rows) in sorted(files.items(), key=_by_str):
            try:
                same = path.read_bytes() == data
            except FileNotFoundError:
                same = False
            if same:
                out.append(self._unchanged(path, data, rows))
            else:
                differ.append(self.rel(path))
        if differ:
            raise self._sealed_error(scope, differ)
        return out

    def _sealed_error(self, scope: Scope, differ: Sequence[str]) -> SealedAttemptError:
        shown = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
        return SealedAttemptError(
            f"{self.rel(scope.attempt_dir(self.root))} is sealed (a completed attempt never "
            f"changes) and this run would change {shown}; its inputs differ from the attempt's: "
            f"start attempt {scope.attempt + 1} instead (`cohortflow run` does it, and so does "
            "the data sensor)"
        )

    # ================================================================ batch-level files
    def _write_work(
        self, key: AttemptKey, name: str, frame: pd.DataFrame, info: Mapping[str, Any]
    ) -> list[WrittenFile]:
        """The attempt's working data: parquet plus a JSON sidecar (renamed in after it)."""
        return self._write_plain(
            {
                work_file(self.root, key.batch, key.attempt, name, "parquet"): (
                    parquet_bytes(frame),
                    len(frame),
                ),
                work_file(self.root, key.batch, key.attempt, name, "json"): (
                    json_bytes(info),
                    None,
                ),
            },
            key,
        )

    def _write_plain(self, files: Files, key: AttemptKey) -> list[WrittenFile]:
        """Batch-level files (working data, reports): identical bytes are left alone;
        different bytes are written unless the attempt is sealed. Under the attempt's
        working-data lock: two runs of one partition never interleave these either."""
        with exclusive_lock(lock_path(self.root, f"work-{key.batch}-{key.attempt}")):
            items, out = [], []
            for path, (data, rows) in sorted(files.items(), key=_by_str):
                try:
                    same = path.read_bytes() == data
                except FileNotFoundError:
                    same = None
                if same:
                    out.append(self._unchanged(path, data, rows))
                else:
                    items.append((path, data, rows, same is False))
            changed = [self.rel(p) for p, _, _, existed in items if existed]
            if changed and self.attempt_sealed(key.batch, key.attempt):
                raise SealedAttemptError(
                    f"batch {key.batch} attempt {key.attempt} is sealed and this run would "
                    f"change {', '.join(changed[:3])}; start attempt {key.attempt + 1} instead"
                )
            if items:
                remove_stale_tmp(work_dir(self.root, key.batch, key.attempt), recursive=True)
                out += self._described([(p, d, r) for p, d, r, _ in items])
            return out

    def read_universe(self, key: AttemptKey, *, bars: bool = True) -> Any:
        """The attempt's universe as stored; ``bars=False``: what it is (symbols, files and
        their hashes, signature) without reading its bars."""
        from pathlib import Path

        from cohortflow.bars import Skipped, SymbolFile, Universe
        from cohortflow.layout import data_file

        info = self._work_info(key, "bars")
        if bars:
            long = read_parquet(work_file(self.root, key.batch, key.attempt, "bars", "parquet"))
            by_symbol = {
                sym: frame[info["columns"][sym]].reset_index(drop=True)
                for sym, frame in long.groupby("symbol", sort=True, observed=True)
            }
        else:
            by_symbol = {}
        data_dir = Path(info["data_dir"])
        universe = Universe(
            symbols=tuple(info["symbols"]),
            files=tuple(
                SymbolFile(f["symbol"], data_file(data_dir, f["name"]), f["sha256"], f["size"])
                for f in info["files"]
            ),
            bars=by_symbol,
            skipped=tuple(Skipped(**k) for k in info["skipped"]),
            data_dir=data_dir,
        )
        if universe.universe_sig != info["universe_sig"]:
            raise ArtifactNotFoundError(
                f"{work_file(self.root, key.batch, key.attempt, 'bars', 'json')}: stored bars "
                f"are not universe {info['universe_sig']}"
            )
        return universe

    def read_panel(self, key: AttemptKey) -> Any:
        from cohortflow.features import Panel

        info = self._work_info(key, "panel")
        frame = read_parquet(work_file(self.root, key.batch, key.attempt, "panel", "parquet"))
        if isinstance(frame["symbol"].dtype, pd.CategoricalDtype):
            # Parquet keeps the values, not the category order: the panel's categories are
            # the sorted symbols (features.Panel), whatever order they first appear in
            symbols = frame["symbol"].cat.categories
            frame["symbol"] = frame["symbol"].cat.reorder_categories(sorted(symbols))
        return Panel(frame, tuple(info["computed"]), tuple(info["user"]), tuple(info["horizons"]))

    def _work_info(self, key: AttemptKey, name: str) -> dict:
        """The JSON that describes a working frame (written after its Parquet file)."""
        path = work_file(self.root, key.batch, key.attempt, name, "json")
        try:
            return read_json(path)
        except ArtifactNotFoundError:
            raise ArtifactNotFoundError(
                f"{name} not found for batch {key.batch} attempt {key.attempt}; expected "
                f"{path}; materialize the attempt's data assets first"
            ) from None

    # ================================================================ scopes
    def scopes(self, target: str, stage: Stage, batch: str, attempt: int) -> list[Scope]:
        """The cross-sectional scope and every symbol scope of the attempt on disk."""
        cs = Scope(target, stage, View.CROSS_SECTIONAL, batch, attempt)
        out = [cs]
        sy_root = Scope(target, stage, View.SYMBOL_SPECIFIC, batch, attempt, "X").view_dir(
            self.root
        )
        try:
            children = sorted(sy_root.iterdir(), key=lambda p: p.name)
        except (FileNotFoundError, NotADirectoryError):
            return out
        for child in children:
            if not child.name.startswith("symbol="):
                continue
            try:
                scope = Scope(target, stage, View.SYMBOL_SPECIFIC, batch, attempt, child.name[7:])
            except InvalidNameError:  # a stray folder must not break every reader
                log.warning("skipping %s: not a symbol folder of this tree", child)
                continue
            if scope.attempt_dir(self.root).exists():
                out.append(scope)
        return out

    def _found(self, out: dict, what: str, key: AttemptKey, expected: Any) -> dict:
        if not out:
            raise ArtifactNotFoundError(
                f"{what} not found for target {key.target} batch {key.batch} attempt "
                f"{key.attempt}; expected {expected}"
            )
        return out

    # ================================================================ snapshots
    def _write_snapshots(self, result: StageSnapshots) -> list[WrittenFile]:
        """The stage's extra files, then each cohort, then the markers that seal it."""
        from cohortflow.index import CohortIndex

        extras = {
            scope: {
                scope.artifact_path(self.root, rel): (data, None) for rel, data in files.items()
            }
            for scope, files in result.extras.items()
        }
        written = self.write_attempt_files(extras) if extras else []
        by_scope: dict[Scope, list[CohortDraft]] = {}
        for draft in result.drafts:
            by_scope.setdefault(draft.scope, []).append(draft)
        indexed: list[tuple[CohortRecord, dict]] = []
        for scope in sorted(by_scope, key=_scope_order):
            with self.lock(scope):
                if self.is_sealed(scope):
                    written += self._verify_sealed_cohorts(scope, by_scope[scope], result.run_info)
                    continue
                self._begin(scope)
                written += self._seal(scope, by_scope[scope], result.run_info, indexed)
        if indexed:
            CohortIndex(self.root).add_many(indexed)  # once complete: never a half attempt
        return written

    def _seal(
        self,
        scope: Scope,
        drafts: Sequence[CohortDraft],
        run_info: Mapping[str, Any],
        indexed: list[tuple[CohortRecord, dict]],
    ) -> list[WrittenFile]:
        records = manifest_records(scope.attempt_dir(self.root))
        items: list[tuple[Any, bytes, int | None]] = []
        cohorts: dict[str, dict[str, str]] = {}
        for draft in drafts:
            files = finalize_cohort(draft, records, self.find_baseline(draft), run_info)
            cohort_dir = scope.cohort_dir(self.root, files.cohort_id)
            digests = {}
            for name, doc in sorted(files.documents.items()):
                data = json_bytes(doc)
                items.append((scope.cohort_file(self.root, files.cohort_id, name), data, None))
                digests[name] = (
                    metadata_digest(doc) if name == "metadata.json" else sha256_hex(data)
                )
            # a stale diff from an earlier, unsealed write must not survive
            for optional in ("diff_prev.json", "drift.json"):
                if optional not in files.documents:
                    remove_file(cohort_file(cohort_dir, optional))
            cohorts[files.cohort_id] = digests
            indexed.append(
                (scope.record(files.cohort_id, draft.universe_sig), dict(draft.key_metrics))
            )
        written = self._described(items)
        return written + self._write_seal(scope, seal_document(records, cohorts))

    def _write_seal(self, scope: Scope, seal: Mapping[str, Any] | bytes) -> list[WrittenFile]:
        """``_COMPLETE`` (written last), then ``_IN_PROGRESS`` goes."""
        data = seal if isinstance(seal, bytes) else json_bytes(seal)
        written = self._described([(scope.complete_marker(self.root), data, None)])
        remove_file(scope.progress_marker(self.root))
        return written

    def seal_folder(
        self, scope: Scope, extra: Mapping[str, Any], seal: bytes | None = None
    ) -> list[WrittenFile]:
        """Seal an attempt folder whose files were copied in (``cohortflow migrate``): its
        seal records every file as it is on disk (plus ``extra``), or is ``seal``'s bytes
        (a seal copied along with its folder); its cohorts go into the index."""
        from cohortflow.index import CohortIndex

        folder = scope.attempt_dir(self.root)
        with self.lock(scope):
            if self.is_sealed(scope):
                return []
            if seal is None:
                cohorts = {}
                for child in sorted(folder.iterdir(), key=lambda p: p.name):
                    if child.name.startswith("cohort=") and child.is_dir():
                        cohorts[child.name.removeprefix("cohort=")] = {
                            f.name: (
                                metadata_digest(read_json(f))
                                if f.name == "metadata.json"
                                else sha256_hex(f.read_bytes())
                            )
                            for f in sorted(child.iterdir(), key=lambda p: p.name)
                            if f.is_file()
                        }
                seal = {**seal_document(manifest_records(folder), cohorts), **extra}
            written = self._write_seal(scope, seal)
        records = [
            r for r in (parse_cohort_path(self.root, c) for c in folder.iterdir()) if r is not None
        ]
        CohortIndex(self.root).add_many(records)
        return written

    def _verify_sealed_cohorts(
        self, scope: Scope, drafts: Sequence[CohortDraft], run_info: Mapping[str, Any]
    ) -> list[WrittenFile]:
        """A sealed folder's cohorts rebuilt from the same inputs must match what is on disk:
        metadata.json (but its ``run`` key), metrics.json and snapshot.json. Nothing is
        written; diff_prev.json and drift.json compared the cohort with what existed when
        it was sealed and stay as they are."""
        records = manifest_records(scope.attempt_dir(self.root))
        out, differ = [], []
        for draft in drafts:
            files = finalize_cohort(draft, records, None, run_info)
            for name in ("metadata.json", "metrics.json", "snapshot.json"):
                path = scope.cohort_file(self.root, files.cohort_id, name)
                data = json_bytes(files.documents[name])
                try:
                    on_disk = path.read_bytes()
                except FileNotFoundError:
                    differ.append(self.rel(path))
                    continue
                if name == "metadata.json":
                    same = metadata_digest(parse_json(path, on_disk)) == metadata_digest(
                        files.documents[name]
                    )
                else:
                    same = on_disk == data
                if same:
                    out.append(self._unchanged(path, on_disk, None))
                else:
                    differ.append(self.rel(path))
        if differ:
            raise self._sealed_error(scope, differ)
        return out

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
            and (s.view == View.SYMBOL_SPECIFIC or r.batch == s.batch)
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
            try:
                snap_bytes = read_bytes(record.file(self.root, "snapshot.json"))
                meta = read_json(record.file(self.root, "metadata.json"))
            except ArtifactNotFoundError:
                continue
            key = (str(meta.get("run", {}).get("finished_at", "")), record.path)
            if best is None or key > best[0]:
                best = (key, record, snap_bytes, meta)
        if best is None:
            return None
        _, record, snap_bytes, meta = best
        snapshot = parse_json(record.file(self.root, "snapshot.json"), snap_bytes)
        return Baseline(record.path, snapshot, meta, sha256_hex(snap_bytes))

    def read_cohorts(self, target: str, stage: Stage, batch: str, attempt: int) -> list[CohortView]:
        out = []
        for scope in self.scopes(target, stage, batch, attempt):
            folder = scope.attempt_dir(self.root)
            for child in sorted(folder.iterdir(), key=lambda p: p.name):
                if (
                    child.name.startswith("cohort=")
                    and cohort_file(child, "snapshot.json").exists()
                ):
                    out.append(self.read_cohort_dir(child, parse_cohort_path(self.root, child)))
        return out

    def read_cohort_dir(self, folder: Any, record: CohortRecord | None) -> CohortView:
        """A cohort folder's documents (each malformed file named in one line)."""
        from cohortflow.snapshots import normalize_scoring

        def load(name: str) -> Any:
            path = cohort_file(folder, name)
            return read_json(path) if path.exists() else None

        snapshot = load("snapshot.json")
        metrics = load("metrics.json")
        snapshot, metrics = normalize_scoring(snapshot, metrics, folder)
        return CohortView(
            record,
            load("metadata.json") or {},
            metrics or {},
            snapshot or {},
            load("diff_prev.json"),
            load("drift.json"),
        )


# --------------------------------------------------------------------------- the seal
def seal_document(
    records: Sequence[ManifestRecord], cohorts: Mapping[str, Mapping[str, str]]
) -> dict[str, Any]:
    """What ``_COMPLETE`` holds: the attempt's artifact manifest and every cohort file's
    sha256 (``metadata.json`` hashed without its ``run`` key), so that ``cohortflow
    verify`` can name each file that changed."""
    return {
        "artifacts_manifest_sha256": manifest_sha256(records),
        "artifacts": [{"relpath": r.relpath, "size": r.size, "sha256": r.sha256} for r in records],
        "cohorts": {cid: dict(sorted(files.items())) for cid, files in sorted(cohorts.items())},
    }


# --------------------------------------------------------------------------- encoders
def _universe_frame(universe: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
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
    return long, info


def _panel_frame(panel: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    info = {
        "computed": list(panel.computed),
        "user": list(panel.user),
        "horizons": list(panel.horizons),
    }
    return panel.frame, info


def _by_scope(
    items: Mapping[Scope, Any], files: Callable[[Scope, Any], Files]
) -> dict[Scope, Files]:
    return {scope: files(scope, value) for scope, value in items.items()}


def _encode_exclusions(store: Store, key: AttemptKey, items: Mapping[Scope, Any]) -> dict:
    return _by_scope(
        items,
        lambda s, e: {s.exclusions_path(store.root): (yaml_bytes(e.to_dict()), None)},
    )


def _encode_importances(store: Store, key: AttemptKey, items: Mapping[Scope, Any]) -> dict:
    return _by_scope(
        items,
        lambda s, by_model: {
            s.importances_path(store.root, model): (csv_bytes(frame), len(frame))
            for model, frame in by_model.items()
        },
    )


def _encode_featuresets(store: Store, key: AttemptKey, items: Mapping[Scope, Any]) -> dict:
    return _by_scope(
        items,
        lambda s, fs: {s.featureset_path(store.root): (json_bytes(fs.to_dict()), None)},
    )


def _encode_oof(store: Store, key: AttemptKey, value: Any) -> dict:
    scope = key.scope(Stage.TRAINING)
    extra = {
        "folds": list(value.fold_metrics),
        "models": list(value.models),
        "features": {m: list(f) for m, f in value.features.items()},
        "params": dict(value.params),
    }
    frame = value.frame
    files: Files = {
        scope.oof_path(store.root): (prediction_parquet_bytes(frame), len(frame)),
        scope.fold_plan_path(store.root, "oof"): (json_bytes(value.fold_plan.to_dict()), None),
        scope.oof_metrics_path(store.root): (json_bytes(extra), None),
    }
    # tuned hyper-parameters (settings.tune): untuned runs carry an empty dict per model,
    # which is no tuning result and gets no file
    if any(value.params.values()):
        files[scope.tuning_path(store.root)] = (json_bytes(dict(value.params)), None)
    return {scope: files}


def _encode_stacking(store: Store, key: AttemptKey, value: Any) -> dict:
    from cohortflow.stacking import stacking_files

    scope = key.scope(Stage.TRAINING)
    return {
        scope: {
            scope.stacking_file(store.root, name): (data, None)
            for name, data in stacking_files(value).items()
        }
    }


def _encode_json_doc(
    path_of: Callable[[Scope, Any], Any],
) -> Callable[[Store, AttemptKey, Any], dict]:
    def encode(store: Store, key: AttemptKey, doc: Any) -> dict:
        scope = key.scope(Stage.TRAINING)
        return {scope: {path_of(scope, store.root): (json_bytes(doc), None)}}

    return encode


_ENCODERS: dict[ArtifactKind, Callable[[Store, AttemptKey, Any], dict]] = {
    ArtifactKind.EXCLUSIONS: _encode_exclusions,
    ArtifactKind.IMPORTANCES: _encode_importances,
    ArtifactKind.FEATURESETS: _encode_featuresets,
    ArtifactKind.OOF: _encode_oof,
    ArtifactKind.STACKING: _encode_stacking,
    ArtifactKind.EVALUATION: _encode_json_doc(lambda s, root: s.evaluation_path(root)),
    ArtifactKind.PORTFOLIO: _encode_json_doc(lambda s, root: s.portfolio_path(root)),
}
_SNAPSHOT_KINDS = frozenset(SNAPSHOT_OF.values())


# --------------------------------------------------------------------------- readers
def _read_exclusions(store: Store, key: AttemptKey) -> dict[Scope, Any]:
    from cohortflow.leakage import Exclusions

    out = {}
    for scope in store.scopes(key.target, Stage.TARGET_RANKING, key.batch, key.attempt):
        path = scope.exclusions_path(store.root)
        if path.exists():
            doc = read_yaml(path)
            require_keys(path, doc, ("target", "attempt"), "feature exclusions file")
            out[scope] = Exclusions.from_dict(doc)
    return store._found(
        out, "exclusions", key, key.scope(Stage.TARGET_RANKING).exclusions_path(store.root)
    )


def _read_importances(
    store: Store, key: AttemptKey, stage: Stage = Stage.FEATURE_SELECTION
) -> dict:
    out: dict[Scope, dict[str, pd.DataFrame]] = {}
    for scope in store.scopes(key.target, stage, key.batch, key.attempt):
        folder = scope.importances_dir(store.root)
        if not folder.exists():
            continue
        out[scope] = {
            path.name.removesuffix("_importances.csv"): read_csv(
                path, columns=("feature", "importance", "rank", "share")
            )
            for path in sorted(folder.iterdir(), key=lambda p: p.name)
            if path.name.endswith("_importances.csv")
        }
    return store._found(out, "importances", key, key.scope(stage).importances_dir(store.root))


def _read_featuresets(
    store: Store, key: AttemptKey, stage: Stage = Stage.FEATURE_SELECTION
) -> dict:
    from cohortflow.selection import Featureset

    out = {}
    for scope in store.scopes(key.target, stage, key.batch, key.attempt):
        path = scope.featureset_path(store.root)
        if path.exists():
            doc = read_json(path)
            require_keys(path, doc, ("target", "view", "features"), "featureset file")
            out[scope] = Featureset.from_dict(doc)
    return store._found(out, "featureset", key, key.scope(stage).featureset_path(store.root))


def _read_oof(store: Store, key: AttemptKey) -> Any:
    from cohortflow.oof import OOF_KEY_COLUMNS, OOFResult
    from cohortflow.splits import FoldPlan

    scope = key.scope(Stage.TRAINING)
    frame = read_parquet(scope.oof_path(store.root), columns=OOF_KEY_COLUMNS)
    plan_path = scope.fold_plan_path(store.root, "oof")
    plan = read_json(plan_path)
    require_keys(plan_path, plan, ("horizon", "embargo", "folds"), "fold plan")
    extra = read_json(scope.oof_metrics_path(store.root))
    return OOFResult(
        frame=frame,
        fold_plan=FoldPlan.from_dict(plan, frame["timestamp"].to_numpy()),
        fold_metrics=tuple(extra["folds"]),
        models=tuple(extra["models"]),
        params=extra["params"],
        features={m: tuple(f) for m, f in extra["features"].items()},
    )


def _read_stacking(store: Store, key: AttemptKey) -> Any:
    """The stack as a user loads it: native boosters and JSON, no code executed."""
    from cohortflow.stacking import stack_from_files

    scope = key.scope(Stage.TRAINING)
    if not scope.stacking_dir(store.root).exists():
        raise ArtifactNotFoundError(
            f"stacking model not found; expected {scope.stacking_dir(store.root)}"
        )
    return stack_from_files(lambda name: read_bytes(scope.stacking_file(store.root, name)))


def read_test_predictions(store: Store, key: AttemptKey) -> pd.DataFrame:
    from cohortflow.stacking import FILES

    scope = key.scope(Stage.TRAINING)
    return read_parquet(
        scope.stacking_file(store.root, FILES["predictions"]), columns=("timestamp", "y_true")
    )


def _read_snapshots(stage: Stage) -> Callable[..., list[CohortView]]:
    return lambda store, key: store.read_cohorts(key.target, stage, key.batch, key.attempt)


_READERS: dict[ArtifactKind, Callable[..., Any]] = {
    ArtifactKind.UNIVERSE_BARS: lambda store, key, bars=True: store.read_universe(key, bars=bars),
    ArtifactKind.FEATURE_PANEL: lambda store, key: store.read_panel(key),
    ArtifactKind.EXCLUSIONS: _read_exclusions,
    ArtifactKind.IMPORTANCES: _read_importances,
    ArtifactKind.FEATURESETS: _read_featuresets,
    ArtifactKind.OOF: _read_oof,
    ArtifactKind.STACKING: _read_stacking,
    ArtifactKind.EVALUATION: lambda store, key: read_json(
        key.scope(Stage.TRAINING).evaluation_path(store.root)
    ),
    ArtifactKind.PORTFOLIO: lambda store, key: read_json(
        key.scope(Stage.TRAINING).portfolio_path(store.root)
    ),
    ArtifactKind.RANKING_TABLE: lambda store, key: read_csv(
        report_path(store.root, key.batch, key.attempt, "target_ranking")
    ),
    **{kind: _read_snapshots(stage) for stage, kind in SNAPSHOT_OF.items()},
}


def _scope_order(scope: Scope) -> tuple:
    return (scope.target, scope.stage, scope.view, scope.symbol or "", scope.batch, scope.attempt)


def _by_str(item: tuple[Any, Any]) -> str:
    return str(item[0])


__all__ = [
    "AttemptKey",
    "CohortView",
    "StageSnapshots",
    "Store",
    "WrittenFile",
    "canonical_json_bytes",
    "read_test_predictions",
    "seal_document",
]
