"""Fit accounting: how much boosting work a run did, in row-rounds.

A *row-round* is one training row passed through one boosting round (a LightGBM or XGBoost
fit of ``n`` rows that trained ``r`` rounds is ``n * r`` row-rounds; an early-stopped fit
counts the rounds it trained). A permutation-importance prediction of ``n`` rows through a
model of ``t`` trees counts ``n * t``. Dividing a run's row-rounds by its wall time and by
the row-rounds per second of one large single fit on the same machine gives
``fit_efficiency``: how close the run comes to keeping the machine busy fitting
(``bench/stage_times.py``, ``make bench``).

The counter is process-wide and thread-safe (folds fitted side by side report from their
own threads): one lock and a few integer additions per fit, nothing per row or per round.
The model code reports through :func:`record`; readers take :func:`snapshot` before and
after a piece of work and subtract.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields

__all__ = ["KINDS", "FitCounts", "record", "snapshot"]

#: what is counted: LightGBM fits, XGBoost fits, permutation-importance predictions
KINDS = ("lightgbm", "xgboost", "permutation")


@dataclass(frozen=True)
class FitCounts:
    """Row-rounds per kind (see the module docstring) and the number of calls counted."""

    lightgbm: int = 0
    xgboost: int = 0
    permutation: int = 0
    calls: int = 0

    @property
    def row_rounds(self) -> int:
        """Every kind together: the numerator of fit_efficiency."""
        return self.lightgbm + self.xgboost + self.permutation

    def __sub__(self, other: FitCounts) -> FitCounts:
        return FitCounts(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    def __add__(self, other: FitCounts) -> FitCounts:
        return FitCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def to_dict(self) -> dict[str, int]:
        return {
            **{f.name: getattr(self, f.name) for f in fields(self)},
            "row_rounds": self.row_rounds,
        }


_lock = threading.Lock()
_totals = dict.fromkeys((*KINDS, "calls"), 0)


def record(kind: str, rows: int, rounds: int) -> None:
    """Count one fit of ``rows`` training rows for ``rounds`` boosting rounds (``kind``
    ``lightgbm`` or ``xgboost``), or one ``permutation`` prediction of ``rows`` rows through
    ``rounds`` trees."""
    if kind not in KINDS:
        raise ValueError(f"unknown fit kind {kind!r}; known: {KINDS}")
    work = int(rows) * int(rounds)
    with _lock:
        _totals[kind] += work
        _totals["calls"] += 1


def snapshot() -> FitCounts:
    """The process's totals so far (subtract two snapshots for a piece of work)."""
    with _lock:
        return FitCounts(**_totals)
