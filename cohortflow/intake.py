"""What the data sensor, the attempt sensor, the UI's runs and ``cohortflow run`` share:
take in a data folder, register its batch, decide which attempt to run
(:func:`cohortflow.attempts.decide`) and load an attempt's own bar files."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cohortflow.attempts import AttemptInputs, AttemptState, Decision, attempt_states, decide
from cohortflow.bars import SymbolFile, Universe, load_universe, read_bars
from cohortflow.canonical import fingerprint, sha256_file
from cohortflow.domain import Stage, View
from cohortflow.errors import ArtifactNotFoundError, DataError
from cohortflow.layout import Scope, data_file
from cohortflow.registry import AttemptRecord, BatchFile, BatchRecord, BatchRegistry
from cohortflow.settings import Settings
from cohortflow.version import code_version


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


def inputs_of(files: tuple[BatchFile, ...], settings: Settings) -> AttemptInputs:
    """The inputs of an attempt run on ``files`` with ``settings`` and today's code."""
    fields = settings.fingerprint_fields()
    return AttemptInputs(files, fingerprint(fields), code_version(), fields)


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


def take_in(data_dir: str | Path, root: Any, settings: Settings) -> Intake:
    """Load and validate the folder's universe and register its batch (raises DataError
    before anything is written)."""
    universe = load_universe(data_dir, settings)
    registry = BatchRegistry(root)
    previous = next((r for r in registry.list() if r.batch == universe.batch), None)
    record = registry.register(batch_record(universe, settings))
    return Intake(universe, record, previous)


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
    inputs = AttemptInputs(own.files, own.settings_fingerprint, own.code_version, own.settings)
    return plan_attempt(root, record, inputs, settings)


def record_decision(root: Any, batch: str, decision: Decision) -> None:
    """Write a new attempt record (nothing when the decision reuses one)."""
    if decision.new and decision.record is not None:
        BatchRegistry(root).add_attempt(batch, decision.record)


def load_files(data_dir: str | Path, files: tuple[BatchFile, ...], owner: str) -> Universe:
    """The universe of exactly ``files`` (of ``owner``, "batch B attempt N", for errors),
    read from ``data_dir``. The folder may hold more files (another universe); each of
    these must be there with the content recorded for it.
    """
    folder = Path(data_dir)
    bars, found = {}, []
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
            raise DataError(
                path,
                f"changed since {owner} was recorded (sha256 {digest[:12]} != "
                f"{f.sha256[:12]}); changed files make a new attempt: run `cohortflow run` "
                "or let the data sensor see the folder",
            )
        bars[f.symbol] = read_bars(path)
        found.append(SymbolFile(f.symbol, path, f.sha256, f.size))
    return Universe(
        symbols=tuple(sorted(f.symbol for f in files)),
        files=tuple(found),
        bars=MappingProxyType(bars),
        skipped=(),
        data_dir=folder,
    )


def attempt_scope(target: str, batch: str, attempt: int) -> Scope:
    """The folder whose marker says the attempt's training for ``target`` is complete."""
    return Scope(target, Stage.TRAINING, View.CROSS_SECTIONAL, batch, attempt)


__all__ = [
    "Intake",
    "attempt_scope",
    "batch_files",
    "batch_record",
    "folder_signature",
    "inputs_of",
    "leaks_found",
    "load_files",
    "prepare_attempt",
    "plan_after",
    "plan_attempt",
    "record_decision",
    "take_in",
]


def prepare_attempt(
    root: Any, data_dir: str | Path, batch: str, attempt: int, settings: Settings
) -> tuple[Universe, AttemptRecord]:
    """The universe an attempt runs on, checked against the attempt's record before
    anything is written: the batch must be registered; the attempt recorded, or the next
    one after a sealed attempt (a run launched from the UI starts it: its reason is what
    differs, ``requested`` if nothing does); a sealed attempt's inputs must be today's
    (else :class:`SealedAttemptError` names the input that differs and how to start a new
    attempt). An unsealed attempt takes today's settings and code.
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
        universe = load_files(data_dir, record.files, f"batch {batch}")
        inputs = inputs_of(batch_files(universe), settings)
        diff = changes(latest, inputs) if latest is not None else []
        reason = diff[0] if diff else AttemptReason.REQUESTED
        own = registry.add_attempt(
            batch, inputs.record(attempt, reason, [d.value for d in diff])
        ).attempt(attempt)
        return universe, own
    universe = load_files(data_dir, own.files, f"batch {batch} attempt {attempt}")
    inputs = inputs_of(own.files, settings)
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
