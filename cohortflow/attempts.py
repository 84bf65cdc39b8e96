"""Which attempt of a batch to run, and why: the one decision of ``cohortflow run``, the
data sensor, the attempt sensor and a run launched from the UI.

A sealed (complete) attempt is history and never changes. So:

- the same inputs as the latest sealed attempt: nothing to run (unless it found leaks and
  the leak-fix chain may go on: then attempt n+1, reason ``leaks_found``);
- other bar files, settings or code: attempt n+1, reason ``bars_changed``,
  ``settings_changed`` or ``code_changed`` (every difference is recorded in ``changes``);
- the latest attempt is incomplete (killed, partly materialized): run it again to complete
  it; with other inputs too, unless part of it is already sealed (then n+1).

``attempt_limit`` bounds the automatic leak-fix chain (attempts in a row whose reason is
``leaks_found``, counted with the attempt that started the chain), never a user's reruns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cohortflow.domain import AttemptReason, Stage, View
from cohortflow.layout import attempt_scopes, folder_state
from cohortflow.registry import AttemptRecord, BatchFile, BatchRecord, bars_fingerprint


class AttemptState(StrEnum):
    ABSENT = "absent"  # nothing written
    INCOMPLETE = "incomplete"  # written in part
    SEALED = "sealed"  # every folder of every target complete


@dataclass(frozen=True)
class AttemptStatus:
    """An attempt on disk: its state, and whether any of its folders is already sealed
    (then a rerun with other inputs must go to a new attempt)."""

    state: AttemptState
    any_sealed: bool = False


ABSENT = AttemptStatus(AttemptState.ABSENT)


@dataclass(frozen=True)
class AttemptInputs:
    """What an attempt runs on: the bar files, the settings and the code."""

    files: tuple[BatchFile, ...]
    settings_fingerprint: str
    code_version: str
    settings: Mapping[str, Any]

    @property
    def bars_fingerprint(self) -> str:
        return bars_fingerprint(self.files)

    def record(
        self, attempt: int, reason: AttemptReason, changes: Sequence[str] = ()
    ) -> AttemptRecord:
        return AttemptRecord(
            attempt=attempt,
            reason=reason,
            files=self.files,
            settings_fingerprint=self.settings_fingerprint,
            code_version=self.code_version,
            settings=dict(self.settings),
            changes=tuple(changes),
        )


# the order in which a difference names the reason of a new attempt
_CHANGE_ORDER = (
    AttemptReason.BARS_CHANGED,
    AttemptReason.SETTINGS_CHANGED,
    AttemptReason.CODE_CHANGED,
)


def changes(record: AttemptRecord, inputs: AttemptInputs) -> list[AttemptReason]:
    """Which inputs differ between an attempt's record and ``inputs``."""
    out = []
    if record.bars_fingerprint != inputs.bars_fingerprint:
        out.append(AttemptReason.BARS_CHANGED)
    if record.settings_fingerprint != inputs.settings_fingerprint:
        out.append(AttemptReason.SETTINGS_CHANGED)
    if record.code_version != inputs.code_version:
        out.append(AttemptReason.CODE_CHANGED)
    return out


def describe_changes(record: AttemptRecord, inputs: AttemptInputs) -> str:
    """The differing inputs in words, with both fingerprints (for error messages)."""
    parts = []
    for change in changes(record, inputs):
        if change is AttemptReason.BARS_CHANGED:
            old, new = (
                {f.symbol: f.sha256 for f in record.files},
                {f.symbol: f.sha256 for f in inputs.files},
            )
            moved = sorted(s for s in set(old) | set(new) if old.get(s) != new.get(s))
            parts.append(
                f"bars fingerprint {record.bars_fingerprint[:12]} -> {inputs.bars_fingerprint[:12]} "
                f"(files of {', '.join(moved[:5])})"
            )
        elif change is AttemptReason.SETTINGS_CHANGED:
            keys = sorted(
                k
                for k in set(record.settings) | set(inputs.settings)
                if record.settings.get(k) != inputs.settings.get(k)
            )
            parts.append(
                f"settings fingerprint {record.settings_fingerprint[:12]} -> "
                f"{inputs.settings_fingerprint[:12]}"
                + (f" ({', '.join(keys[:6])})" if keys else "")
            )
        else:
            parts.append(f"code version {record.code_version} -> {inputs.code_version}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Decision:
    """What to run: ``attempt`` (None: nothing), whether it is a new record, and why."""

    attempt: int | None
    record: AttemptRecord | None
    new: bool
    message: str


def leak_chain(record: BatchRecord, attempt: int) -> int:
    """Attempts in the leak-fix chain that ends with ``attempt``: it, and the attempts
    before it back to (and with) the first whose reason is not ``leaks_found``."""
    by_number = {a.attempt: a for a in record.attempts}
    n, length = attempt, 1
    while n in by_number and by_number[n].reason is AttemptReason.LEAKS_FOUND and n > 0:
        n, length = n - 1, length + 1
    return length


def decide(
    record: BatchRecord,
    states: Mapping[int, AttemptStatus],
    inputs: AttemptInputs,
    leaks_in: Mapping[int, bool],
    attempt_limit: int,
) -> Decision:
    """The attempt to run for ``inputs`` (see the module docstring).

    ``states``: each attempt on disk (:func:`attempt_states`); ``leaks_in[n]``: whether
    sealed attempt ``n`` found leaks.
    """
    numbers = sorted(set(states) | {a.attempt for a in record.attempts})
    if not numbers:
        return Decision(0, inputs.record(0, AttemptReason.REQUESTED), True, "new batch: attempt 0")
    n = numbers[-1]
    latest = record.attempt(n)
    status = states.get(n, ABSENT)
    state = status.state
    if state is not AttemptState.SEALED:
        if latest is None:
            # folders without a record (another system, or a registry from before records)
            if state is AttemptState.ABSENT:
                return Decision(n, inputs.record(n, AttemptReason.REQUESTED), True, f"attempt {n}")
            return Decision(
                n + 1,
                inputs.record(n + 1, AttemptReason.REQUESTED),
                True,
                f"attempt {n} has no record of its inputs: attempt {n + 1}",
            )
        diff = changes(latest, inputs)
        if not diff:
            return Decision(n, latest, False, f"attempt {n} is incomplete: completing it")
        if state is AttemptState.ABSENT:
            updated = inputs.record(n, latest.reason, latest.changes)
            return Decision(n, updated, True, f"attempt {n} has not started: with today's inputs")
        if not status.any_sealed:
            updated = inputs.record(n, latest.reason, latest.changes)
            return Decision(
                n,
                updated,
                True,
                f"attempt {n} is incomplete and not sealed: rerun with today's inputs",
            )
    else:
        diff = changes(latest, inputs) if latest is not None else [AttemptReason.REQUESTED]
        if not diff:
            if leaks_in.get(n) and leak_chain(record, n) < int(attempt_limit):
                return Decision(
                    n + 1,
                    inputs.record(n + 1, AttemptReason.LEAKS_FOUND),
                    True,
                    f"attempt {n} found leaks: attempt {n + 1} without them",
                )
            why = "no change since" if not leaks_in.get(n) else "leak-fix limit reached after"
            return Decision(None, None, False, f"{why} sealed attempt {n}: nothing to run")
    reason = next((r for r in _CHANGE_ORDER if r in diff), AttemptReason.REQUESTED)
    return Decision(
        n + 1,
        inputs.record(n + 1, reason, [c.value for c in diff]),
        True,
        f"{', '.join(c.value for c in diff)} since attempt {n}: attempt {n + 1}",
    )


def attempt_states(root: Any, batch: str, targets: Sequence[str]) -> dict[int, AttemptStatus]:
    """Every attempt of a batch found on disk, from its folders' markers: SEALED when every
    stage folder of every target is complete (both views), INCOMPLETE otherwise."""
    complete: dict[int, list[bool]] = {}
    cs_folders: dict[int, int] = {}
    for scope in attempt_scopes(root, batch, targets):
        complete.setdefault(scope.attempt, []).append(folder_state(scope.attempt_dir(root))[0])
        if scope.view == View.CROSS_SECTIONAL:
            cs_folders[scope.attempt] = cs_folders.get(scope.attempt, 0) + 1
    expected = len(targets) * len(Stage)
    return {
        n: AttemptStatus(
            AttemptState.SEALED
            if cs_folders.get(n, 0) == expected and all(flags)
            else AttemptState.INCOMPLETE,
            any(flags),
        )
        for n, flags in sorted(complete.items())
    }


__all__ = [
    "ABSENT",
    "AttemptInputs",
    "AttemptState",
    "AttemptStatus",
    "Decision",
    "attempt_states",
    "changes",
    "decide",
    "describe_changes",
    "leak_chain",
]
