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

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cohortflow.errors import CohortflowError, SealedAttemptError, StoreError
from cohortflow.formats import read_bytes, read_json
from cohortflow.fsio import TMP_PREFIX, is_local, local_path
from cohortflow.index import CohortIndex
from cohortflow.layout import (
    ATTEMPT_ARTIFACT_DIRS,
    COMPLETE_MARKER,
    LAYOUT_CURRENT,
    METADATA_FILE,
    PROGRESS_MARKER,
    SYMBOL_SPECIFIC,
    CohortRecord,
    Scope,
    as_root,
    batch_of,
    cohort_file,
    validate_cohort_id,
    walk_cohorts,
)
from cohortflow.store import Store

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


def _read_meta(cohort_dir: Any) -> dict[str, Any]:
    try:
        data = read_json(cohort_file(cohort_dir, METADATA_FILE))
    except CohortflowError:
        return {}
    return data


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


def _files(folder: Any, top: tuple[str, ...] | None = None) -> list[tuple[str, Any]]:
    """(relpath, path) of the regular files under ``folder``, sorted; no links, no temp
    files, no markers; ``top``: only these sub-folders of ``folder`` (and no file of its
    own)."""
    found = []
    stack = [("", folder)]
    while stack:
        prefix, current = stack.pop()
        try:
            children = list(current.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            continue
        for child in children:
            rel = f"{prefix}{child.name}"
            if is_local(child) and os.path.islink(local_path(child)):
                continue
            if top is not None and not prefix and child.name not in top:
                continue
            if child.is_dir():
                stack.append((rel + "/", child))
            elif not child.name.startswith(TMP_PREFIX) and child.name not in (
                COMPLETE_MARKER,
                PROGRESS_MARKER,
            ):
                found.append((rel, child))
    return sorted(found, key=lambda item: item[0])


def _attempt_files(old_root: Any, record: CohortRecord) -> list[tuple[str, Any]]:
    """Per-attempt artifact files next to ``record``'s cohort, relative to its container."""
    container = record.dir(old_root).parent
    if record.layout == LAYOUT_CURRENT:
        # current attempts are copied as they are (fold plans, stacking, ...), but cohorts
        return [item for item in _files(container) if not item[0].startswith("cohort=")]
    return _files(container, top=ATTEMPT_ARTIFACT_DIRS)


def _same_root(a: Any, b: Any) -> bool:
    if is_local(a) and is_local(b):
        return os.path.realpath(local_path(a)) == os.path.realpath(local_path(b))
    return str(a) == str(b)


def _copy(store: Store, scope: Scope, files: list[tuple[str, Any]]) -> tuple[int, list[str]]:
    """Copy files into the attempt folder of ``scope`` through the store: identical ones
    are left alone, a different one in the way is never overwritten. Returns (written,
    errors)."""
    items, errors = {}, []
    for rel, src in files:
        dst = scope.artifact_path(store.root, rel)
        try:
            data = read_bytes(src)
            if dst.exists() and read_bytes(dst) != data:
                errors.append(f"{dst} already exists with different content; not overwritten")
            items[dst] = (data, None)
        except (CohortflowError, OSError) as exc:
            errors.append(f"{src}: {exc}")
    if errors:
        return 0, errors
    try:
        written = store.write_attempt_files({scope: items})
    except SealedAttemptError:
        return 0, [
            f"{store.rel(scope.attempt_dir(store.root))}: its attempt is already complete in "
            "the new root (sealed); adding files would change it"
        ]
    except (CohortflowError, OSError) as exc:
        return 0, [str(exc)]
    return sum(1 for w in written if not w.unchanged), []


def migrate(old_root: Any, new_root: Any) -> MigrationReport:
    """Copy every cohort of ``old_root`` (any layout) into the canonical layout of ``new_root``.

    Returns one item per cohort found: ``migrated`` (files copied), ``skipped`` (already
    there and identical, universe unknown, or an incomplete attempt) or ``failed`` (a
    different file in the way, or a copy that did not verify).
    """
    old_root, new_root = as_root(old_root), as_root(new_root)
    if _same_root(old_root, new_root):
        raise StoreError(f"migrate needs two different roots, got {old_root} twice")
    store = Store(new_root)
    records = list(walk_cohorts(old_root, include_incomplete=True))
    outcome: dict[str, MigrationItem] = {}
    # (source container, destination attempt) -> cohorts; an attempt's artifacts are copied once
    groups: dict[tuple[str, Scope], list[CohortRecord]] = defaultdict(list)
    for record in records:
        if not record.complete:
            outcome[record.path] = MigrationItem(
                record.path, None, SKIPPED, "attempt incomplete (_IN_PROGRESS, no _COMPLETE)"
            )
            continue
        scope, reason = _scope_for(old_root, record)
        if scope is None:
            outcome[record.path] = MigrationItem(record.path, None, SKIPPED, reason)
            continue
        groups[(record.container_path(), scope)].append(record)

    sources: dict[Scope, list[CohortRecord]] = defaultdict(list)
    failed: dict[Scope, bool] = defaultdict(bool)
    for (_, scope), members in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1].attempt_relpath())
    ):
        first = members[0]
        artifact_written, artifact_errors = _copy(store, scope, _attempt_files(old_root, first))
        sources[scope].append(first)
        for record in members:
            cohort_files = [
                (f"cohort={record.cohort_id}/{rel}", src)
                for rel, src in _files(record.dir(old_root))
            ]
            written, errors = _copy(store, scope, cohort_files)
            errors = errors + artifact_errors
            new_rel = scope.record(record.cohort_id).path
            if errors:
                failed[scope] = True
                item = MigrationItem(record.path, new_rel, FAILED, "; ".join(errors))
            elif written or artifact_written:
                item = MigrationItem(
                    record.path, new_rel, MIGRATED, f"copied {written + artifact_written} files"
                )
            else:
                item = MigrationItem(record.path, new_rel, SKIPPED, "already migrated (identical)")
            outcome[record.path] = item

    for scope, from_ in sorted(sources.items(), key=lambda kv: kv[0].attempt_relpath()):
        reason = _finish_attempt(store, old_root, scope, from_, failed[scope])
        if reason:
            prefix = scope.attempt_relpath() + "/"
            for path, item in list(outcome.items()):
                if item.status == MIGRATED and item.new and item.new.startswith(prefix):
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
    store: Store, old_root: Any, scope: Scope, sources: list[CohortRecord], failed: bool
) -> str:
    """Seal the attempt last; returns why not ('' when sealed).

    A current-layout attempt copied alone keeps its own seal when it had one. Any other
    attempt gets the seal the store writes (every file's sha256) plus ``migrated_from``:
    the old folders it came from.
    """
    if scope.complete_marker(store.root).exists():
        return ""  # complete before (earlier run or earlier writer): left as it is
    if not scope.progress_marker(store.root).exists():
        return ""  # nothing was written here (the folder belongs to someone else)
    if failed:
        return "attempt left incomplete (no _COMPLETE): another cohort of it failed"
    own = None
    if len(sources) == 1 and sources[0].layout == LAYOUT_CURRENT:
        marker = scope.complete_marker(old_root)  # the same place in the old tree
        own = read_bytes(marker) if marker.exists() else None
    store.seal_folder(scope, {"migrated_from": sorted(s.container_path() for s in sources)}, own)
    return ""
