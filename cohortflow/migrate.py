"""Copy a tree written in older layouts into the canonical layout of DESIGN §2.

Every cohort of ``old_root`` (any layout of the table) is copied, with the per-attempt
artifact folders that sit next to it, into
``.../{VIEW}/[symbol={S}/]batch_{sig12}/attempt_{n}/`` under ``new_root``. Current-layout
cohorts keep their paths. ``old_root`` is only read. Every copied file is written through
:mod:`cohortflow.fsio` and its sha256 checked against the source; an existing different
file in ``new_root`` is never overwritten (that cohort fails with the reason). Migrated
attempts get a ``_COMPLETE`` marker, written last, and the new root's index is rebuilt.
Running it again copies nothing and reports every cohort as skipped.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cohortflow.canonical import canonical_json, sha256_hex
from cohortflow.errors import CohortflowError, StoreError
from cohortflow.fsio import TMP_PREFIX, atomic_write_bytes, is_local, local_path
from cohortflow.index import CohortIndex
from cohortflow.layout import (
    ATTEMPT_ARTIFACT_DIRS,
    COMPLETE_MARKER,
    LAYOUT_CURRENT,
    METADATA_FILE,
    SYMBOL_SPECIFIC,
    CohortRecord,
    Scope,
    as_root,
    batch_of,
    validate_cohort_id,
    walk_cohorts,
)
from cohortflow.snapshots import manifest_records, manifest_sha256

logger = logging.getLogger(__name__)

MIGRATED, SKIPPED, FAILED = "migrated", "skipped", "failed"


class MigrationItem(NamedTuple):
    """What happened to one cohort: old path, new path (None if not placed), status, reason."""

    old: str
    new: str | None
    status: str
    reason: str


@dataclass
class MigrationReport:
    """Counts of cohorts migrated, skipped and failed, and one item per cohort (walk order)."""

    migrated: int = 0
    skipped: int = 0
    failed: int = 0
    items: list[MigrationItem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "migrated": self.migrated,
            "skipped": self.skipped,
            "failed": self.failed,
            "items": [item._asdict() for item in self.items],
        }


class _Conflict(CohortflowError):
    """A file could not be copied (different file in place, or verification failed)."""


def _read_meta(cohort_dir: Any) -> dict[str, Any]:
    try:
        data = json.loads((cohort_dir / METADATA_FILE).read_bytes())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _scope_for(old_root: Any, record: CohortRecord) -> tuple[Scope | None, str]:
    """The canonical scope of ``record``'s attempt, or None and why it cannot be placed."""
    batch = record.batch
    if batch is None and record.universe_sig is not None:
        batch = batch_of(record.universe_sig)
    if batch is None:
        return None, (
            "universe unknown: no batch_/universe= folder and no universe_sig in metadata.json"
        )
    symbol = record.symbol
    if record.view == SYMBOL_SPECIFIC and symbol is None:
        symbol = _read_meta(record.dir(old_root)).get("symbol")
        if not isinstance(symbol, str):
            return None, "SYMBOL_SPECIFIC cohort without symbol= folder or metadata symbol"
    try:
        scope = Scope(record.target, record.stage, record.view, batch, record.attempt, symbol)
        validate_cohort_id(record.cohort_id)
    except CohortflowError as exc:
        return None, f"cannot be placed in the canonical layout: {exc}"
    return scope, ""


def _files(folder: Any, skip_cohorts: bool = False) -> Iterator[tuple[str, ...]]:
    """Relative parts of the regular files under ``folder``, sorted; no links, no temp files."""
    if is_local(folder):
        base = local_path(folder)
        if not base.is_dir():
            return
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel = os.path.relpath(dirpath, base)
            prefix = () if rel == "." else tuple(rel.split(os.sep))
            if skip_cohorts and not prefix:
                dirnames[:] = [d for d in dirnames if not d.startswith("cohort=")]
            for name in filenames:
                full = os.path.join(dirpath, name)
                if not name.startswith(TMP_PREFIX) and not os.path.islink(full):
                    found.append((*prefix, name))
        yield from sorted(found)
        return
    if not folder.is_dir():
        return
    found = []
    stack: list[tuple[str, ...]] = [()]
    while stack:
        prefix = stack.pop()
        current = folder.joinpath(*prefix) if prefix else folder
        for child in current.iterdir():
            if child.is_dir():
                if not (skip_cohorts and not prefix and child.name.startswith("cohort=")):
                    stack.append((*prefix, child.name))
            elif not child.name.startswith(TMP_PREFIX):
                found.append((*prefix, child.name))
    yield from sorted(found)


def _copy(src: Any, dst: Any, allow_new: bool) -> bool:
    """Copy one file; True if written, False if an identical file was already there.

    ``allow_new`` is False for an attempt that is already complete in the new root: its
    files may match, but adding one would change what its marker's manifest covers.
    """
    data = src.read_bytes()
    digest = sha256_hex(data)
    if dst.exists():
        if sha256_hex(dst.read_bytes()) == digest:
            return False
        raise _Conflict(f"{dst} already exists with different content; not overwritten")
    if not allow_new:
        raise _Conflict(
            f"{dst}: its attempt is already complete in the new root (has {COMPLETE_MARKER}); "
            "adding files would change it"
        )
    atomic_write_bytes(dst, data)
    if sha256_hex(dst.read_bytes()) != digest:
        raise _Conflict(f"{dst}: sha256 after copy differs from the source {src}")
    return True


def _copy_tree(
    src_dir: Any, dst_dir: Any, rel_files: list[tuple[str, ...]], allow_new: bool
) -> tuple[int, list[str]]:
    """Copy ``rel_files`` from ``src_dir`` to ``dst_dir``; returns (written, errors)."""
    written, errors = 0, []
    for parts in rel_files:
        try:
            written += _copy(src_dir.joinpath(*parts), dst_dir.joinpath(*parts), allow_new)
        except (_Conflict, OSError) as exc:
            errors.append(str(exc))
    return written, errors


def _attempt_files(old_root: Any, record: CohortRecord) -> list[tuple[str, ...]]:
    """Per-attempt artifact files next to ``record``'s cohort, relative to its container."""
    container = record.dir(old_root).parent
    if record.layout == LAYOUT_CURRENT:
        # current attempts are copied as they are (fold plans, stacking, ...); the marker
        # is written after everything else
        return [p for p in _files(container, skip_cohorts=True) if p != (COMPLETE_MARKER,)]
    return [(d, *p) for d in ATTEMPT_ARTIFACT_DIRS for p in _files(container / d)]


def _same_root(a: Any, b: Any) -> bool:
    if is_local(a) and is_local(b):
        return os.path.realpath(local_path(a)) == os.path.realpath(local_path(b))
    return str(a) == str(b)


def migrate(old_root: Any, new_root: Any) -> MigrationReport:
    """Copy every cohort of ``old_root`` (any layout) into the canonical layout of ``new_root``.

    Returns one item per cohort found: ``migrated`` (files copied), ``skipped`` (already
    there and identical, universe unknown, or an incomplete attempt) or ``failed`` (a
    different file in the way, or a copy that did not verify).
    """
    old_root, new_root = as_root(old_root), as_root(new_root)
    if _same_root(old_root, new_root):
        raise StoreError(f"migrate needs two different roots, got {old_root} twice")
    records = list(walk_cohorts(old_root, include_incomplete=True))
    outcome: dict[str, MigrationItem] = {}
    # (source container, destination attempt) -> cohorts; an attempt's artifacts are copied once
    groups: dict[tuple[str, str], list[tuple[CohortRecord, Scope]]] = defaultdict(list)
    for record in records:
        if not record.complete:
            outcome[record.path] = MigrationItem(
                record.path, None, SKIPPED, "attempt incomplete (no _COMPLETE marker)"
            )
            continue
        scope, reason = _scope_for(old_root, record)
        if scope is None:
            outcome[record.path] = MigrationItem(record.path, None, SKIPPED, reason)
            continue
        groups[(record.container_path(), scope.attempt_relpath())].append((record, scope))

    attempt_sources: dict[str, list[CohortRecord]] = defaultdict(list)
    attempt_failed: dict[str, bool] = defaultdict(bool)
    sealed: dict[str, bool] = {}  # destination attempts complete before this run
    for (_, dest_attempt), members in sorted(groups.items()):
        first, scope = members[0]
        if dest_attempt not in sealed:
            sealed[dest_attempt] = scope.complete_marker(new_root).exists()
        allow_new = not sealed[dest_attempt]
        artifact_written, artifact_errors = _copy_tree(
            first.dir(old_root).parent,
            scope.attempt_dir(new_root),
            _attempt_files(old_root, first),
            allow_new,
        )
        attempt_sources[dest_attempt].append(first)
        for record, scope in members:
            src = record.dir(old_root)
            dst = scope.cohort_dir(new_root, record.cohort_id)
            new_rel = scope.record(record.cohort_id).path
            written, errors = _copy_tree(src, dst, list(_files(src)), allow_new)
            errors = errors + artifact_errors
            if errors:
                attempt_failed[dest_attempt] = True
                item = MigrationItem(record.path, new_rel, FAILED, "; ".join(errors))
            elif written or artifact_written:
                item = MigrationItem(
                    record.path, new_rel, MIGRATED, f"copied {written + artifact_written} files"
                )
            else:
                item = MigrationItem(record.path, new_rel, SKIPPED, "already migrated (identical)")
            outcome[record.path] = item

    for dest_attempt, sources in sorted(attempt_sources.items()):
        reason = _finish_attempt(old_root, new_root, dest_attempt, sources, attempt_failed)
        if reason:
            for path, item in list(outcome.items()):
                if item.status == MIGRATED and item.new and item.new.startswith(dest_attempt + "/"):
                    outcome[path] = item._replace(status=FAILED, reason=reason)

    report = MigrationReport(items=[outcome[r.path] for r in records])
    for item in report.items:
        setattr(report, item.status, getattr(report, item.status) + 1)
    CohortIndex(new_root).rebuild()
    logger.info(
        "migrated %s -> %s: %d migrated, %d skipped, %d failed",
        old_root,
        new_root,
        report.migrated,
        report.skipped,
        report.failed,
    )
    return report


def _finish_attempt(
    old_root: Any,
    new_root: Any,
    dest_attempt: str,
    sources: list[CohortRecord],
    attempt_failed: dict[str, bool],
) -> str:
    """Write the attempt's ``_COMPLETE`` marker last; returns why not ('' when written).

    A current-layout attempt copied alone keeps its own marker. Any other attempt gets the
    marker the store writes (``artifacts_manifest_sha256`` over its artifacts as copied,
    and its cohorts) plus ``migrated_from``: the old folders it came from.
    """
    attempt_dir = new_root.joinpath(*dest_attempt.split("/"))
    marker = attempt_dir / COMPLETE_MARKER
    if marker.exists():
        return ""  # complete before (earlier run or earlier writer): left as it is
    if attempt_failed[dest_attempt]:
        return "attempt left incomplete (no _COMPLETE): another cohort of it failed"
    if len(sources) == 1 and sources[0].layout == LAYOUT_CURRENT:
        data = (sources[0].dir(old_root).parent / COMPLETE_MARKER).read_bytes()
    else:
        cohorts = sorted(
            p.name.removeprefix("cohort=")
            for p in attempt_dir.iterdir()
            if p.name.startswith("cohort=") and p.is_dir()
        )
        doc = {
            "artifacts_manifest_sha256": manifest_sha256(manifest_records(attempt_dir)),
            "cohorts": cohorts,
            "migrated_from": sorted(s.container_path() for s in sources),
        }
        data = canonical_json(doc).encode("utf-8")
    atomic_write_bytes(marker, data)
    if sha256_hex(marker.read_bytes()) != sha256_hex(data):
        return f"{marker}: sha256 after writing differs"
    return ""
