"""What the data sensor, the attempt sensor, the UI's runs and ``cohortflow run`` share:
take in a data folder, register its batch, decide which attempt to run
(:func:`cohortflow.attempts.decide`) and load an attempt's own bar files."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from cohortflow.attempts import AttemptInputs, AttemptState, Decision, attempt_states, decide
from cohortflow.bars import SymbolFile, Universe, check_clocks, load_universe, read_bar_file
from cohortflow.canonical import fingerprint, sha256_file
from cohortflow.domain import Stage, View
from cohortflow.errors import ArtifactNotFoundError, DataError, SettingsError
from cohortflow.features import check_user_columns, feature_specs, warmup_bars
from cohortflow.fsio import lock_if_free, remove_file, remove_stale_tmp
from cohortflow.layout import (
    Scope,
    as_root,
    attempt_scopes,
    data_file,
    lock_path,
    registry_dir,
    report_path,
    sorted_attempts,
    work_dir,
)
from cohortflow.registry import AttemptRecord, BatchFile, BatchRecord, BatchRegistry
from cohortflow.settings import Settings
from cohortflow.version import code_version

logger = logging.getLogger(__name__)

#: the held-out test period must hold at least this many dates (and the horizon): fewer
#: say nothing about a model
MIN_TEST_DATES = 10
#: the stack's walk-forward validation trains first on this share of the OOF dates
#: (cohortflow.stacking: WalkForward's default min_train_fraction)
_STACK_FIRST_TRAIN = 0.3


def folder_signature(data_dir: str | Path) -> str:
    """A cheap change detector: names, sizes and mtimes of the folder's files (no reads).
    The sensor compares it with its cursor before doing any real work."""
    folder = Path(data_dir)
    if not folder.is_dir():
        return "missing"
    h = hashlib.sha256()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        st = entry.stat()
        h.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def batch_files(universe: Universe) -> tuple[BatchFile, ...]:
    return tuple(BatchFile(f.symbol, f.path.name, f.sha256, f.size) for f in universe.files)


def inputs_of(
    files: tuple[BatchFile, ...],
    settings: Settings,
    overrides: Mapping[str, Any] | None = None,
) -> AttemptInputs:
    """The inputs of an attempt run on ``files`` with ``settings`` and today's code
    (``overrides``: what of ``settings`` a run set from the Launchpad)."""
    fields = settings.fingerprint_fields()
    return AttemptInputs(files, fingerprint(fields), code_version(), fields, dict(overrides or {}))


def batch_record(universe: Universe, settings: Settings) -> BatchRecord:
    return BatchRecord.from_symbols(
        universe.symbols,
        files=batch_files(universe),
        settings_fingerprint=fingerprint(settings.fingerprint_fields()),
    )


@dataclass(frozen=True)
class Intake:
    """A universe found in a data folder and what the registry knew of it before."""

    universe: Universe
    record: BatchRecord
    previous: BatchRecord | None

    @property
    def is_new(self) -> bool:
        return self.previous is None


def take_in(
    data_dir: str | Path, root: Any, settings: Settings, *, source: str = "settings"
) -> Intake:
    """Load and validate the folder's universe and register its batch. Every check that
    can run before the graph runs here, before anything is written: the bar files
    (:func:`cohortflow.bars.load_universe`), user-column names (:func:`check_universe`)
    and the settings' bounds on this data; DataError or SettingsError (``source`` names
    the settings in its lines) otherwise."""
    universe = load_universe(data_dir, settings)
    check_universe(universe, settings, source)
    sweep_debris(root, universe.batch, settings.targets)
    registry = BatchRegistry(root)
    previous = next((r for r in registry.list() if r.batch == universe.batch), None)
    if previous is not None:
        heal_index(root, previous)
    record = registry.register(batch_record(universe, settings))
    return Intake(universe, record, previous)


def sweep_debris(root: Any, batch: str, targets: Iterable[str] = ()) -> list[Path]:
    """Delete what killed writes left: temporary files in the registry and in the batch's
    working data and reports (issue 21: a killed write's 10 MB ``.tmp-bars.parquet.*`` in
    a sealed attempt's ``_work/`` was never cleaned, as nothing writes there again), and
    the ``_IN_PROGRESS`` marker of an attempt folder of ``targets`` that is sealed (its
    writer was killed between writing the seal and removing the marker: the seal is what
    counts). Each folder only while no writer holds its lock. Other temporary files in
    attempt folders are swept by their next writer
    (:meth:`cohortflow.store.Store.write_attempt_files`); a sealed folder is never written
    again.
    """
    removed: list[Path] = []
    with lock_if_free(lock_path(root, "registry")) as free:
        if free:
            removed += remove_stale_tmp(registry_dir(root))
    work = work_dir(root, batch, 0).parent
    reports = report_path(root, batch, 0, "any").parent.parent
    for n in sorted(set(sorted_attempts(work)) | set(sorted_attempts(reports))):
        with lock_if_free(lock_path(root, f"work-{batch}-{n}")) as free:
            if free:
                removed += remove_stale_tmp(work_dir(root, batch, n), recursive=True)
                removed += remove_stale_tmp(report_path(root, batch, n, "any").parent)
    base = as_root(root)
    for scope in attempt_scopes(base, batch, list(targets)) if targets else ():
        marker = scope.progress_marker(base)
        if not (scope.complete_marker(base).exists() and marker.exists()):
            continue
        with lock_if_free(scope.lock_path(base)) as free:
            if free and marker.exists():
                remove_file(marker)
                removed.append(marker)
    if removed:
        logger.info("swept %d file(s) of killed writes: %s", len(removed), removed)
    return removed


def heal_index(root: Any, record: BatchRecord) -> None:
    """Index what killed runs of this batch sealed but did not index
    (:meth:`cohortflow.index.CohortIndex.heal`; one query per attempt when nothing is
    missing)."""
    from cohortflow.index import CohortIndex

    index = CohortIndex(root)
    for a in record.attempts:
        index.heal(
            record.batch, a.attempt, [f"fwd_ret_{h}" for h in a.settings.get("horizons", ())]
        )


def check_universe(universe: Universe, settings: Settings, source: str = "settings") -> None:
    """The checks of a universe with these settings that need no tree: user-column names
    that clash with standard features, targets, label ends or ``symbol``
    (:func:`cohortflow.features.check_user_columns`), and :func:`check_room`."""
    check_user_columns(universe)
    check_room(universe, settings, source)


def _labelled_dates(universe: Universe, settings: Settings, horizon: int) -> int:
    """Dates of the panel with a ``fwd_ret_{horizon}`` label: each symbol's bars after the
    features' warm-up, less its last ``horizon`` bars, united over symbols."""
    frames = list(universe.bars.values())
    common = set.intersection(*(set(f.columns) for f in frames)) if frames else set()
    warmup = warmup_bars(feature_specs(common, settings))  # as build_panel drops it
    spans = [
        frame["timestamp"].to_numpy()[warmup : len(frame) - horizon]
        for frame in universe.bars.values()
    ]
    return len(np.unique(np.concatenate(spans))) if spans else 0


def check_room(universe: Universe, settings: Settings, source: str = "settings") -> None:
    """Refuse settings the data has no room for, before anything runs (issue 21: with
    ``n_splits: 1000`` a run went on for minutes). For every horizon ``h`` (embargo ``e``):
    the held-out test period (``test_fraction`` of the labelled dates) holds at least
    ``max(MIN_TEST_DATES, h)`` dates; the training window before it (less ``h + e`` dates
    of gap) gives every one of ``n_splits`` purged folds at least ``h + e`` dates, and the
    stack's walk-forward validation ``n_splits`` test dates after its first training share
    and gap. One line per problem: ``{source}: {key}: ...``."""
    problems = []
    for h in settings.horizons:
        e = settings.embargo_for(h)
        dates = _labelled_dates(universe, settings, h)
        n_test = max(1, round(settings.test_fraction * dates))
        train = dates - n_test - (h + e)
        where = (
            f"fwd_ret_{h}: {dates} labelled dates in {universe.data_dir}, {n_test} held out, "
            f"{max(train, 0)} to train on"
        )
        if train < 2 * (h + e):
            key = "embargo" if settings.embargo is not None and settings.embargo > h else "horizons"
            problems.append(
                f"{source}: {key}: horizon {h} with embargo {e} leaves too few dates to train "
                f"on: two folds need {2 * (h + e)} ({where}); use a shorter horizon"
                + (" or embargo" if key == "embargo" else "")
                + ", or more dates"
            )
            continue
        if n_test < max(MIN_TEST_DATES, h):
            problems.append(
                f"{source}: test_fraction: {settings.test_fraction:g} holds out {n_test} "
                f"date(s), fewer than {max(MIN_TEST_DATES, h)} ({where}); raise it, or add "
                "dates"
            )
            continue
        stack_room = train - math.ceil(_STACK_FIRST_TRAIN * train) - e
        most = min(train // (h + e), stack_room)
        if settings.n_splits > most:
            problems.append(
                f"{source}: n_splits: {settings.n_splits} folds do not fit: each needs at "
                f"least h + embargo = {h + e} dates ({where}); use n_splits <= {most}"
            )
    if problems:
        raise SettingsError("\n".join(problems), problems=tuple(problems))


def leaks_found(root: Any, batch: str, attempt: int, targets: tuple[str, ...]) -> bool:
    """Did any target's exclusions of this attempt find leaks (still in its inputs)?"""
    from cohortflow.domain import ArtifactKind
    from cohortflow.store import AttemptKey, Store

    store = Store(root)
    for target in targets:
        try:
            items = store.read(ArtifactKind.EXCLUSIONS, AttemptKey(batch, attempt, target))
        except ArtifactNotFoundError:
            continue
        cs = next(v for s, v in items.items() if s.view == View.CROSS_SECTIONAL)
        if cs.found_here():
            return True
    return False


def plan_attempt(
    root: Any, record: BatchRecord, inputs: AttemptInputs, settings: Settings
) -> Decision:
    """:func:`cohortflow.attempts.decide` for a batch run on ``inputs``."""
    states = attempt_states(root, record.batch, settings.targets)
    sealed = sorted(n for n, s in states.items() if s.state is AttemptState.SEALED)
    leaks = {n: leaks_found(root, record.batch, n, settings.targets) for n in sealed[-1:]}
    return decide(record, states, inputs, leaks, settings.attempt_limit)


def plan_after(root: Any, record: BatchRecord, attempt: int, settings: Settings) -> Decision:
    """What follows a finished attempt, on that attempt's own inputs: n+1 when it found
    leaks and the leak-fix chain may go on (the attempt sensor's decision; a change of
    bars or settings is the data sensor's to see)."""
    own = record.attempt(attempt)
    if own is None or record.latest is None or record.latest.attempt != attempt:
        return Decision(
            None,
            None,
            False,
            f"attempt {attempt} is not the latest recorded of batch {record.batch}",
        )
    return plan_attempt(root, record, AttemptInputs.of(own), settings)


def record_decision(root: Any, batch: str, decision: Decision) -> None:
    """Write a new attempt record (nothing when the decision reuses one)."""
    if decision.new and decision.record is not None:
        BatchRegistry(root).add_attempt(batch, decision.record)


def load_files(
    data_dir: str | Path, files: tuple[BatchFile, ...], owner: str, registry_file: Any = None
) -> Universe:
    """The universe of exactly ``files`` (of ``owner``, "batch B attempt N", for errors),
    read from ``data_dir``. The folder may hold more files (another universe); each of
    these must be there with the content recorded for it, else one DataError says which
    files differ and how (``registry_file``, the record's file, tells a file changed since
    it was recorded from a record written since by another run with other files).
    """
    folder = Path(data_dir)
    found, differ = [], []
    for f in files:
        path = data_file(folder, f.name)
        if not path.is_file():
            raise DataError(
                path,
                f"file of {owner} is gone; restore it, or run the folder as it is now "
                "(a new attempt)",
            )
        digest = sha256_file(path)
        if digest != f.sha256:
            differ.append((path, f, digest))
        found.append(SymbolFile(f.symbol, path, f.sha256, f.size))
    if differ:
        raise _files_differ(folder, owner, differ, registry_file)
    bars, zones = {}, {}
    for f in found:
        bars[f.symbol], zones[f.symbol] = read_bar_file(f.path)
    notes = check_clocks([(f.path, bars[f.symbol]["timestamp"], zones[f.symbol]) for f in found])
    return Universe(
        symbols=tuple(sorted(f.symbol for f in files)),
        files=tuple(found),
        bars=MappingProxyType(bars),
        skipped=(),
        data_dir=folder,
        notes=notes,
    )


def _mtime(path: Any) -> float | None:
    try:
        return os.stat(path).st_mtime
    except (OSError, TypeError):
        return None


def _files_differ(
    folder: Path, owner: str, differ: list[tuple[Path, BatchFile, str]], registry_file: Any
) -> DataError:
    """Which files differ from the record, and the likelier reason: the file changed after
    the record was written, or the record was written after the file last changed (by
    another run of other files for the same symbols: the record moved, not the file)."""
    shown = "; ".join(
        f"{path.name}: {digest[:12]} here, {f.sha256[:12]} recorded ({f.size} bytes)"
        for path, f, digest in differ[:5]
    ) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
    recorded = _mtime(registry_file) if registry_file is not None else None
    newest = max((_mtime(path) or 0.0) for path, _, _ in differ)
    if recorded is not None and newest < recorded:
        return DataError(
            folder,
            f"{owner} is now recorded with other files than this folder's ({shown}); these "
            "files did not change since, so another run recorded the same symbols from "
            "other files in this output root meanwhile. Runs of different data for the same "
            "symbols must go one after another (or into different output roots): run "
            "`cohortflow run` again when the other run is done",
        )
    return DataError(
        folder,
        f"{len(differ)} file(s) changed since {owner} was recorded ({shown}); changed "
        "files make a new attempt: run `cohortflow run` or let the data sensor see the folder",
    )


def attempt_scope(target: str, batch: str, attempt: int) -> Scope:
    """The folder whose marker says the attempt's training for ``target`` is complete."""
    return Scope(target, Stage.TRAINING, View.CROSS_SECTIONAL, batch, attempt)


__all__ = [
    "Intake",
    "attempt_scope",
    "batch_files",
    "batch_record",
    "check_room",
    "check_universe",
    "heal_index",
    "folder_signature",
    "inputs_of",
    "leaks_found",
    "load_files",
    "prepare_attempt",
    "plan_after",
    "plan_attempt",
    "record_decision",
    "sweep_debris",
    "take_in",
]


def prepare_attempt(
    root: Any,
    data_dir: str | Path,
    batch: str,
    attempt: int,
    settings: Settings,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Universe, AttemptRecord]:
    """The universe an attempt runs on, checked against the attempt's record before
    anything is written: the batch must be registered; the attempt recorded, or the next
    one after a sealed attempt (a run launched from the UI starts it: its reason is what
    differs, ``requested`` if nothing does); a sealed attempt's inputs must be today's
    (else :class:`SealedAttemptError` names the input that differs and how to start a new
    attempt). An unsealed attempt takes today's settings and code. ``overrides``: the
    settings a run set from the Launchpad (they are in ``settings`` already), recorded
    with the attempt.
    """
    from cohortflow.attempts import changes, describe_changes
    from cohortflow.domain import AttemptReason
    from cohortflow.errors import SealedAttemptError
    from cohortflow.store import Store

    registry = BatchRegistry(root)
    record = registry.get(batch)
    own = record.attempt(attempt)
    if own is None:
        latest = record.latest
        expected = 0 if latest is None else latest.attempt + 1
        if attempt != expected:
            raise ArtifactNotFoundError(
                f"batch {batch} has no attempt {attempt}: its attempts are "
                f"{[a.attempt for a in record.attempts] or 'none yet'}; the next one is "
                f"{expected} (`cohortflow run` and the sensors add attempts)"
            )
        if latest is not None and not Store(root).attempt_sealed(
            batch, latest.attempt, settings.targets
        ):
            raise ArtifactNotFoundError(
                f"batch {batch}: attempt {latest.attempt} is not complete yet; complete it "
                f"(`cohortflow run`, or materialize partition {batch}|{latest.attempt}) "
                f"before starting attempt {attempt}"
            )
        universe = load_files(data_dir, record.files, f"batch {batch}", registry.path(batch))
        check_universe(universe, settings)
        inputs = inputs_of(batch_files(universe), settings, overrides)
        diff = changes(latest, inputs) if latest is not None else []
        reason = diff[0] if diff else AttemptReason.REQUESTED
        own = registry.add_attempt(
            batch, inputs.record(attempt, reason, [d.value for d in diff])
        ).attempt(attempt)
        return universe, own
    universe = load_files(
        data_dir, own.files, f"batch {batch} attempt {attempt}", registry.path(batch)
    )
    check_universe(universe, settings)
    inputs = inputs_of(own.files, settings, overrides)
    if changes(own, inputs):
        if Store(root).attempt_sealed(batch, attempt, settings.targets):
            raise SealedAttemptError(
                f"batch {batch} attempt {attempt} is sealed (a completed attempt never changes) "
                f"and this run differs from it: {describe_changes(own, inputs)}; run it as a new "
                f"attempt: `cohortflow run` (or the data sensor) starts attempt "
                f"{(record.latest.attempt if record.latest else attempt) + 1}, or add attempt "
                "partition key "
                f"{(record.latest.attempt if record.latest else attempt) + 1} in the UI and "
                "materialize it"
            )
        own = registry.add_attempt(batch, inputs.record(attempt, own.reason, own.changes)).attempt(
            attempt
        )
    return universe, own
