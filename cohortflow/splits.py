"""Leakage-safe splits of a panel: purged k-fold with an embargo, walk-forward, hold-out.

Splits are made on DATES (the sorted unique row timestamps: the global date grid), never on
rows, so every symbol's bars of one date fall on the same side. Horizons and gaps are
counted in bars of that grid; the embargo in each symbol's own bars (below).

Purging (López de Prado, *Advances in Financial Machine Learning*, ch. 7): a training row
is kept only if its label window ``[t, label_end]`` does not overlap the span of the test
dates, nor the label windows of the test rows themselves (a row starting inside a test
row's label window would train on returns the test period is scored on). ``label_end`` is
the timestamp of the bar ``horizon`` bars later *for that symbol*, so a symbol with a gap
in its history has a longer window than ``horizon`` bars of the global grid. For a panel
(several symbols) ``label_end`` is therefore required: without it a symbol with a gap would
be purged by ``horizon`` grid bars only, i.e. too little. Where it is NaT (the last bars of
a history), or for a single series without it, ``t + horizon`` bars of the grid is used.

Embargo (AFML 7.4.2, as in purgedcv, timeseriescv and skfolio): the *purged test span* of a
run of test dates ``[a, b]`` ends at ``reach``, the latest label end of its test rows (at
least ``b``). After it, each symbol's next ``embargo`` bars *of its own history* are dropped
from training too: features are serially correlated beyond the label (a 20-bar volatility
at ``reach + 1`` still holds most of the test period's bars). The embargo starts after the
purge, so it always removes something: with ``embargo = 0`` training resumes at ``reach +
1``; the default ``embargo = horizon`` (``Settings.embargo`` None) keeps ``horizon`` more
bars out, i.e. training resumes ``2 * horizon`` bars after the last test date of a symbol
without gaps. Own bars are counted per symbol when ``symbols`` are passed to ``split``; for
a panel without them the embargo is counted on the date grid (the same for symbols without
gaps; shorter in time for a symbol with a gap after ``reach``), and the fold plan says so.

Purging and the embargo are applied per date: a date's label window ends at the latest
label end among its rows, and a date leaves training when any of its rows is purged or
embargoed. This costs at most the other rows of such a date, and it makes every fold a set
of dates, which is what ``fold_plan.json`` records (DESIGN §3) and what lets a plan be
rebuilt exactly from it. The plan also records, per fold, how many rows the purge and the
embargo removed.

Everything is vectorised over rows (``searchsorted``, ``reduceat``, ``bincount``); Python
loops run only over folds and test segments.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import BaseCrossValidator
from sklearn.model_selection._split import GroupsConsumerMixin

logger = logging.getLogger(__name__)

__all__ = [
    "subsample",
    "EMBARGO_ON_DATE_GRID",
    "EMBARGO_ON_SYMBOL_BARS",
    "Fold",
    "FoldDates",
    "FoldPlan",
    "Holdout",
    "PurgedKFold",
    "WalkForward",
    "holdout_of",
    "holdout_split",
    "make_fold_plan",
    "purge_and_embargo",
    "purged_train_dates",
    "split_train_test",
]


# --------------------------------------------------------------------------- inputs


EMBARGO_ON_SYMBOL_BARS = "symbol_bars"
EMBARGO_ON_DATE_GRID = "date_grid"


def subsample(rows: np.ndarray, cap: int, seed: Sequence[int]) -> np.ndarray:
    """``rows`` if there are at most ``cap``, else a seeded uniform subset of ``cap`` of them,
    sorted (uniform over dates and symbols: a fixed stride could alias with the number of
    symbols)."""
    if rows.size <= cap:
        return rows
    pick = np.random.default_rng(list(seed)).choice(rows.size, size=cap, replace=False)
    return rows[np.sort(pick)]


def to_datetime64(values: Any, what: str) -> np.ndarray:
    """``values`` as a ``datetime64[ns]`` numpy array (NaT kept); ValueError if unparsable."""
    arr = values.to_numpy() if isinstance(values, pd.Series | pd.Index) else np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind != "M":
        try:
            arr = pd.to_datetime(arr).to_numpy()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what} must be timestamps: {exc}") from exc
    return arr.astype("datetime64[ns]", copy=False)


def _n_samples(X: Any) -> int:
    shape = getattr(X, "shape", None)
    return int(shape[0]) if shape is not None else len(X)


@dataclass(frozen=True)
class _Grid:
    """The global date grid of a set of rows, where each row's label window ends on it, and
    each row's place in its own symbol's history (for the embargo)."""

    dates: np.ndarray  # sorted unique timestamps, datetime64[ns]
    row_date: np.ndarray  # int64 per row: index of its date in ``dates``
    row_label_end: np.ndarray  # int64 per row: grid index of its label end (may exceed the grid)
    date_label_end: np.ndarray  # int64 per date: latest label end among its rows
    # int64 symbol code per row and the row's 0-based position in that symbol's own bars;
    # None for a panel whose symbols were not given (the embargo is then counted on the grid)
    row_symbol: np.ndarray | None = None
    row_own_bar: np.ndarray | None = None

    @property
    def n_dates(self) -> int:
        return len(self.dates)

    @property
    def embargo_basis(self) -> str:
        """What the embargo counts: each symbol's own bars, or dates of the pooled grid."""
        return EMBARGO_ON_DATE_GRID if self.row_symbol is None else EMBARGO_ON_SYMBOL_BARS

    def rows(self, date_mask: np.ndarray) -> np.ndarray:
        """Row indices (ascending) whose date is selected by ``date_mask``."""
        return np.flatnonzero(date_mask[self.row_date])

    def n_rows(self, date_mask: np.ndarray) -> int:
        """Rows on the dates selected by ``date_mask``."""
        return int(np.count_nonzero(date_mask[self.row_date]))

    def embargo_after(self, reach: int, embargo: int) -> np.ndarray:
        """Dates holding a row among its symbol's next ``embargo`` own bars after date ``reach``.

        Only symbols with a bar at or before ``reach`` are embargoed (a symbol that starts
        later shares no history with the test period). Without symbol codes: the
        ``embargo`` grid dates after ``reach``.
        """
        out = np.zeros(self.n_dates, dtype=bool)
        if embargo <= 0:
            return out
        if self.row_symbol is None or self.row_own_bar is None:
            out[reach + 1 : reach + 1 + embargo] = True
            return out
        n_symbols = int(self.row_symbol.max()) + 1
        before = np.bincount(self.row_symbol[self.row_date <= reach], minlength=n_symbols)
        seen = before[self.row_symbol]
        hit = (self.row_date > reach) & (seen > 0) & (self.row_own_bar < seen + embargo)
        out[self.row_date[hit]] = True
        return out


def _date_index(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(unique sorted dates, per-row date index, start row of each date if rows are sorted)."""
    if len(ts) and bool(np.all(ts[1:] >= ts[:-1])):
        # the panel convention (sorted by timestamp): an O(n) pass instead of a sort
        starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
        counts = np.diff(np.r_[starts, len(ts)])
        return ts[starts], np.repeat(np.arange(len(starts), dtype=np.int64), counts), starts
    dates, inverse = np.unique(ts, return_inverse=True)
    return dates, inverse.astype(np.int64, copy=False), None


def _symbol_codes(symbols: Any, n_rows: int) -> np.ndarray:
    """int64 code per row of ``symbols`` (any labels; a Categorical's codes are reused)."""
    if isinstance(symbols, pd.Series) and isinstance(symbols.dtype, pd.CategoricalDtype):
        codes = symbols.cat.codes.to_numpy().astype(np.int64)
    else:
        arr = symbols.to_numpy() if isinstance(symbols, pd.Series | pd.Index) else symbols
        codes, _ = pd.factorize(np.asarray(arr), sort=False)
        codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 1 or len(codes) != n_rows:
        raise ValueError(f"symbols has {len(codes)} values but there are {n_rows} rows")
    if (codes < 0).any():
        raise ValueError("symbols contains missing values")
    return codes


def _own_bars(row_symbol: np.ndarray, row_date: np.ndarray) -> np.ndarray:
    """Each row's 0-based position among its symbol's rows in date order (its own bar index)."""
    order = np.lexsort((row_date, row_symbol))
    sym, day = row_symbol[order], row_date[order]
    if bool(np.any((sym[1:] == sym[:-1]) & (day[1:] == day[:-1]))):
        i = int(np.flatnonzero((sym[1:] == sym[:-1]) & (day[1:] == day[:-1]))[0])
        raise ValueError(f"a symbol has two rows on one date (rows {order[i]} and {order[i + 1]})")
    starts = np.flatnonzero(np.r_[True, sym[1:] != sym[:-1]])
    pos = np.arange(len(order), dtype=np.int64)
    pos -= np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    out = np.empty(len(order), dtype=np.int64)
    out[order] = pos
    return out


def build_grid(
    timestamps: Any,
    label_end: Any,
    horizon: int,
    n_rows: int | None = None,
    symbols: Any = None,
) -> _Grid:
    """The date grid of ``timestamps`` with each row's label-window end as a grid index.

    ``label_end`` (per row, NaT allowed) is mapped to the last grid date not after it; NaT
    means ``t + horizon`` bars of the grid. ``label_end=None`` is accepted for a single
    series only: a panel (several symbols, or several rows on one date) without it raises,
    because its symbols' gaps would be under-purged. ``symbols`` (per row, optional) lets the
    embargo count each symbol's own bars; a single series needs none.
    """
    ts = to_datetime64(timestamps, "groups (the row timestamps)")
    if n_rows is not None and len(ts) != n_rows:
        raise ValueError(f"groups has {len(ts)} timestamps but X has {n_rows} rows")
    if len(ts) == 0:
        raise ValueError("no rows to split")
    if np.isnat(ts).any():
        raise ValueError("groups (the row timestamps) contains NaT")
    dates, row_date, starts = _date_index(ts)
    row_symbol = None if symbols is None else _symbol_codes(symbols, len(ts))
    several = len(dates) < len(ts) or (row_symbol is not None and bool(np.any(row_symbol > 0)))
    if label_end is None:
        if several:
            raise ValueError(
                "label_end is required for a panel (several symbols, or several rows on one "
                "date): each row's label window ends at its own symbol's bar `horizon` bars "
                "later, which lies beyond `horizon` dates of the pooled grid wherever that "
                "symbol has a gap, so purging by the grid would leave such rows in training. "
                f"Pass label_end= (the panel's label_end_{horizon} column; NaT where unknown)"
            )
        row_le = row_date + horizon
    else:
        le = to_datetime64(label_end, "label_end")
        if len(le) != len(ts):
            raise ValueError(f"label_end has {len(le)} values but there are {len(ts)} rows")
        row_le = np.searchsorted(dates, le, side="right").astype(np.int64) - 1
        nat = np.isnat(le)
        row_le[nat] = row_date[nat] + horizon
        if bool(np.any(row_le < row_date)):
            bad = int(np.flatnonzero(row_le < row_date)[0])
            raise ValueError(
                f"label_end before its own timestamp at row {bad} "
                f"({le[bad]} < {ts[bad]}): label windows must end at or after the bar"
            )
    if starts is not None:
        date_le = np.maximum.reduceat(row_le, starts)
    else:
        date_le = np.full(len(dates), -1, dtype=np.int64)
        np.maximum.at(date_le, row_date, row_le)
    if row_symbol is None and not several:
        row_symbol = np.zeros(len(ts), dtype=np.int64)  # one series: its bars are the grid
    own = None if row_symbol is None else _own_bars(row_symbol, row_date)
    return _Grid(dates, row_date, row_le, date_le, row_symbol, own)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in ``mask`` as inclusive (first, last) index pairs."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


@dataclass(frozen=True)
class FoldDates:
    """One fold as boolean masks over the date grid: disjoint test, train, purged, embargoed
    dates (dates in none of them are simply not used, e.g. after a walk-forward test block)."""

    test: np.ndarray
    train: np.ndarray
    purged: np.ndarray
    embargoed: np.ndarray


def purge_and_embargo(test: np.ndarray, grid: _Grid, embargo: int) -> FoldDates:
    """Purged and embargoed dates around the ``test`` dates, and the training dates left.

    For each maximal run ``[a, b]`` of test dates, ``reach`` is the latest label end of its
    test dates (at least ``b``). Purged: every date whose label window
    ``[d, date_label_end[d]]`` overlaps ``[a, reach]``. Embargoed: the dates of each
    symbol's next ``embargo`` own bars after ``reach`` (:meth:`_Grid.embargo_after`), unless
    purged or tested.
    """
    d = np.arange(len(test))
    purged = np.zeros(len(test), dtype=bool)
    embargoed = np.zeros(len(test), dtype=bool)
    for a, b in _runs(test):
        reach = max(b, int(grid.date_label_end[a : b + 1].max()))
        purged |= (d <= reach) & (grid.date_label_end >= a)
        embargoed |= grid.embargo_after(reach, embargo)
    purged &= ~test
    embargoed &= ~test & ~purged
    return FoldDates(test, ~test & ~purged & ~embargoed, purged, embargoed)


def purged_train_dates(test: np.ndarray, date_label_end: np.ndarray, embargo: int) -> np.ndarray:
    """Dates that may train a model scored on the ``test`` dates (boolean masks over the grid).

    :func:`purge_and_embargo` on a bare date grid: the embargo is the ``embargo`` dates after
    each test run's ``reach`` (counted on the grid, not per symbol).
    """
    n = len(test)
    grid = _Grid(np.arange(n), np.arange(n), np.asarray(date_label_end), np.asarray(date_label_end))
    return purge_and_embargo(np.asarray(test, dtype=bool), grid, embargo).train


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# --------------------------------------------------------------------------- splitters


class _DateSplitter(GroupsConsumerMixin, BaseCrossValidator):
    """What both date splitters share: ``split`` takes the row timestamps as ``groups``
    (plus ``label_end`` and ``symbols``) and yields the rows of each fold's dates."""

    __metadata_request__split = {"groups": True, "label_end": True, "symbols": True}
    n_splits: int
    horizon: int

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """Number of folds (``n_splits``)."""
        return self.n_splits

    def split(
        self, X: Any, y: Any = None, groups: Any = None, label_end: Any = None, symbols: Any = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train_rows, test_rows)`` index arrays, one pair per fold."""
        grid = self._grid(X, groups, label_end, symbols)
        for dates in self._fold_dates(grid):
            yield grid.rows(dates.train), grid.rows(dates.test)

    def _grid(self, X: Any, groups: Any, label_end: Any, symbols: Any) -> _Grid:
        if groups is None:
            raise ValueError(
                f"{type(self).__name__} splits on dates: pass groups= the row timestamps"
            )
        return build_grid(groups, label_end, self.horizon, _n_samples(X), symbols)

    def _fold_dates(self, grid: _Grid) -> Iterator[FoldDates]:
        raise NotImplementedError


class PurgedKFold(_DateSplitter):
    """K-fold over dates with purging and an embargo (López de Prado, AFML ch. 7).

    The sorted unique dates are cut into ``n_splits`` contiguous test blocks (the first
    ``n_dates % n_splits`` blocks one date longer, as in ``KFold``). Training uses the other
    dates minus those whose label windows reach the test block or its rows' label windows
    (purged, on both sides) and minus each symbol's next ``embargo`` own bars after that
    purged span (embargoed). Every date is tested exactly once.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds, at least 2.
    horizon : int, default=1
        Label horizon in bars; used where a row's ``label_end`` is NaT (or for a single
        series without ``label_end``).
    embargo : int or None, default=None
        Bars of each symbol dropped from training after the purged span of each test block;
        None means ``horizon``; 0 means none.

    ``split(X, y=None, groups=None, label_end=None, symbols=None)``: ``groups`` are the row
    timestamps (required); ``label_end`` the per-row end of the label window (required for
    a panel, NaT allowed); ``symbols`` the per-row symbol (optional: without it a panel's
    embargo is counted on the date grid).

    Examples
    --------
    >>> import numpy as np
    >>> from cohortflow.splits import PurgedKFold
    >>> dates = np.arange("2020-01-01", "2020-01-11", dtype="datetime64[D]")
    >>> ts = np.repeat(dates, 2)  # two symbols, ten dates; rows 2d, 2d+1 are date d
    >>> label_end = np.repeat(np.r_[dates[1:], np.datetime64("NaT")], 2)  # one bar later
    >>> cv = PurgedKFold(n_splits=5, horizon=1)
    >>> for train, test in cv.split(ts, groups=ts, label_end=label_end):
    ...     print(test.tolist(), train.tolist())
    [0, 1, 2, 3] [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    [4, 5, 6, 7] [0, 1, 12, 13, 14, 15, 16, 17, 18, 19]
    [8, 9, 10, 11] [0, 1, 2, 3, 4, 5, 16, 17, 18, 19]
    [12, 13, 14, 15] [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    [16, 17, 18, 19] [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    >>> cv.get_n_splits()
    5
    """

    def __init__(self, n_splits: int = 5, horizon: int = 1, embargo: int | None = None) -> None:
        self.n_splits = _check_int("n_splits", n_splits, 2)
        self.horizon = _check_int("horizon", horizon, 1)
        self.embargo = None if embargo is None else _check_int("embargo", embargo, 0)

    @property
    def embargo_bars(self) -> int:
        """Bars of each symbol dropped from training after the purged span of a test block."""
        return self.horizon if self.embargo is None else self.embargo

    def _fold_dates(self, grid: _Grid) -> Iterator[FoldDates]:
        if grid.n_dates < self.n_splits:
            raise ValueError(
                f"cannot make {self.n_splits} folds from {grid.n_dates} distinct dates"
            )
        for k, block in enumerate(np.array_split(np.arange(grid.n_dates), self.n_splits)):
            test = np.zeros(grid.n_dates, dtype=bool)
            test[block] = True
            dates = self._exclude(test, grid)
            if not dates.train.any():
                raise ValueError(
                    f"fold {k}: no training dates left after purging and embargo "
                    f"({grid.n_dates} dates, horizon {self.horizon}, embargo "
                    f"{self.embargo_bars}); use fewer folds or more dates"
                )
            yield dates

    def _exclude(self, test: np.ndarray, grid: _Grid) -> FoldDates:
        # one overridable step, so tests can show the safety checkers catch a splitter
        # that skips it
        return purge_and_embargo(test, grid, self.embargo_bars)


class WalkForward(_DateSplitter):
    """Walk-forward over dates: an expanding training window, then a test block after it.

    The first ``ceil(min_train_fraction * n_dates)`` dates only train; the dates after them
    (less ``gap``) are cut into ``n_splits`` contiguous test blocks. Fold ``k`` trains on
    every date up to ``gap`` dates before its test block (``gap`` dates lie strictly between
    the last training date and the first test date), and training dates whose label windows
    still reach the test block (symbols with gaps in their history) are purged. Nothing
    trains after a test block, so there is no embargo; the fold plan records the gap in its
    place (its ``embargoed_rows``: rows in the gap not already purged).

    Parameters
    ----------
    n_splits : int, default=5
        Number of test blocks, at least 2.
    horizon : int, default=1
        Label horizon in bars.
    gap : int or None, default=None
        Dates between the last training date and the first test date; None means
        ``horizon``.
    min_train_fraction : float, default=0.3
        Share of the dates in the first training window, in (0, 1).

    Examples
    --------
    >>> import numpy as np
    >>> from cohortflow.splits import WalkForward
    >>> ts = np.arange("2020-01-01", "2020-01-21", dtype="datetime64[D]")
    >>> cv = WalkForward(n_splits=2, horizon=2, min_train_fraction=0.5)
    >>> [(int(tr.max()), int(te.min()), int(te.max())) for tr, te in cv.split(ts, groups=ts)]
    [(9, 12, 15), (13, 16, 19)]
    """

    def __init__(
        self,
        n_splits: int = 5,
        horizon: int = 1,
        gap: int | None = None,
        min_train_fraction: float = 0.3,
    ) -> None:
        self.n_splits = _check_int("n_splits", n_splits, 2)
        self.horizon = _check_int("horizon", horizon, 1)
        self.gap = None if gap is None else _check_int("gap", gap, 0)
        if not 0.0 < float(min_train_fraction) < 1.0:
            raise ValueError(f"min_train_fraction must be in (0, 1), got {min_train_fraction}")
        self.min_train_fraction = float(min_train_fraction)

    @property
    def gap_bars(self) -> int:
        return self.horizon if self.gap is None else self.gap

    @property
    def embargo_bars(self) -> int:
        """Bars kept out of training next to a test block: the gap (recorded in fold plans)."""
        return self.gap_bars

    def _fold_dates(self, grid: _Grid) -> Iterator[FoldDates]:
        n = grid.n_dates
        first_test = math.ceil(self.min_train_fraction * n) + self.gap_bars
        if n - first_test < self.n_splits:
            raise ValueError(
                f"cannot make {self.n_splits} walk-forward test blocks from {n} dates "
                f"(first {first_test} dates are the initial training window and the gap)"
            )
        for k, block in enumerate(np.array_split(np.arange(first_test, n), self.n_splits)):
            test = np.zeros(n, dtype=bool)
            test[block] = True
            before = np.zeros(n, dtype=bool)
            before[: block[0]] = True
            window = np.zeros(n, dtype=bool)
            window[: block[0] - self.gap_bars] = True
            purged = before & purge_and_embargo(test, grid, 0).purged
            train = window & ~purged
            if not train.any():
                raise ValueError(f"walk-forward fold {k}: no training dates left after purging")
            yield FoldDates(test, train, purged, before & ~window & ~purged)


# --------------------------------------------------------------------------- fold plans


def _readonly(a: np.ndarray) -> np.ndarray:
    if isinstance(a, np.ndarray) and a.dtype == np.int64 and not a.flags.writeable:
        return a
    a = np.array(a, dtype=np.int64, copy=True)
    a.setflags(write=False)
    return a


def _count(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True, eq=False)
class Fold:
    """One fold: row indices (ascending, into the plan's timestamps) to train and to test.

    ``purged_rows`` / ``embargoed_rows``: rows the purge and the embargo kept out of
    training (None where unknown: a plan read from a file written before they were
    recorded). The arrays are stored read-only (int64 copies): a fold is a value.
    """

    fold: int
    train_idx: np.ndarray
    test_idx: np.ndarray
    purged_rows: int | None = None
    embargoed_rows: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_idx", _readonly(self.train_idx))
        object.__setattr__(self, "test_idx", _readonly(self.test_idx))
        object.__setattr__(self, "purged_rows", _count(self.purged_rows))
        object.__setattr__(self, "embargoed_rows", _count(self.embargoed_rows))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Fold):
            return NotImplemented
        return (
            self.fold == other.fold
            and np.array_equal(self.train_idx, other.train_idx)
            and np.array_equal(self.test_idx, other.test_idx)
            and self.purged_rows == other.purged_rows
            and self.embargoed_rows == other.embargoed_rows
        )


def _iso(t: np.datetime64) -> str:
    return pd.Timestamp(t).isoformat()


@dataclass(frozen=True, eq=False)
class FoldPlan:
    """The folds of one split of one set of rows, serialisable as ``fold_plan.json``.

    ``timestamps`` are the row timestamps the plan was built on (``datetime64[ns]``). Plans
    from ``make_fold_plan`` hold whole dates per fold, so ``to_dict``/``from_dict`` round-trip
    exactly; a plan built by hand from row sets that split a date is recorded by the dates
    it touches. ``embargo_basis``: ``"symbol_bars"`` (each symbol's own bars) or
    ``"date_grid"``; None where unknown (an older file).
    """

    horizon: int
    embargo: int
    folds: tuple[Fold, ...]
    timestamps: np.ndarray
    embargo_basis: str | None = None

    def __post_init__(self) -> None:
        ts = to_datetime64(self.timestamps, "timestamps")
        object.__setattr__(self, "timestamps", _readonly_ts(ts))
        object.__setattr__(self, "folds", tuple(self.folds))
        basis = (None, EMBARGO_ON_SYMBOL_BARS, EMBARGO_ON_DATE_GRID)
        if self.embargo_basis not in basis:
            raise ValueError(f"embargo_basis must be one of {basis}, got {self.embargo_basis!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FoldPlan):
            return NotImplemented
        return (
            self.horizon == other.horizon
            and self.embargo == other.embargo
            and self.embargo_basis == other.embargo_basis
            and self.folds == other.folds
            and np.array_equal(self.timestamps, other.timestamps)
        )

    @property
    def n_rows(self) -> int:
        return len(self.timestamps)

    @cached_property
    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        dates, row_date, _ = _date_index(self.timestamps)
        return dates, row_date

    @property
    def dates(self) -> np.ndarray:
        """The global date grid (sorted unique timestamps)."""
        return self._index[0]

    def test_fold(self) -> np.ndarray:
        """Per row, the fold that tests it (-1 where none does): the OOF ``fold`` column."""
        out = np.full(self.n_rows, -1, dtype=np.int64)
        for f in self.folds:
            out[f.test_idx] = f.fold
        return out

    def _ranges(self, idx: np.ndarray) -> list[list[str]]:
        dates, row_date = self._index
        mask = np.zeros(len(dates), dtype=bool)
        mask[row_date[idx]] = True
        return [[_iso(dates[a]), _iso(dates[b])] for a, b in _runs(mask)]

    def to_dict(self) -> dict[str, Any]:
        """``{"horizon", "embargo", "folds": [{"fold", "train", "test", ...}], ...}`` (DESIGN §3).

        ``train``/``test`` are maximal runs of consecutive grid dates, inclusive
        ``[first, last]`` ISO 8601 pairs, e.g. ``["2020-01-02T00:00:00", "2020-03-31T00:00:00"]``.
        Each fold also records its row counts: ``train_rows``, ``test_rows`` and, where
        known, ``purged_rows`` and ``embargoed_rows`` (rows kept out of training by the purge
        and by the embargo); the plan records ``embargo_basis`` where known.
        """
        folds = []
        for f in self.folds:
            entry: dict[str, Any] = {
                "fold": int(f.fold),
                "train": self._ranges(f.train_idx),
                "test": self._ranges(f.test_idx),
                "train_rows": int(f.train_idx.size),
                "test_rows": int(f.test_idx.size),
            }
            if f.purged_rows is not None:
                entry["purged_rows"] = f.purged_rows
            if f.embargoed_rows is not None:
                entry["embargoed_rows"] = f.embargoed_rows
            folds.append(entry)
        out: dict[str, Any] = {
            "horizon": int(self.horizon),
            "embargo": int(self.embargo),
            "folds": folds,
        }
        if self.embargo_basis is not None:
            out["embargo_basis"] = self.embargo_basis
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], timestamps: Any) -> FoldPlan:
        """Rebuild the row indices of a plan from its ranges and the row ``timestamps``.

        The ranges already exclude purged and embargoed dates, so nothing is recomputed.
        Every range end must be a date of ``timestamps``, and recorded ``train_rows`` /
        ``test_rows`` must match the rows found (a plan read against other data is refused
        rather than silently shifted). Files without the row counts or ``embargo_basis``
        (written before they were recorded) are read with those unknown.
        """
        missing = {"horizon", "embargo", "folds"} - set(d)
        if missing:
            raise ValueError(f"fold plan lacks key(s) {sorted(missing)}")
        ts = to_datetime64(timestamps, "timestamps")
        dates, row_date, _ = _date_index(ts)

        def date_mask(ranges: list[list[str]], where: str) -> np.ndarray:
            mask = np.zeros(len(dates), dtype=bool)
            for pair in ranges:
                if len(pair) != 2:
                    raise ValueError(f"{where}: a range is [first, last], got {pair!r}")
                ends = to_datetime64([pd.Timestamp(p) for p in pair], where)
                lo, hi = np.searchsorted(dates, ends)
                for pos, end in ((lo, ends[0]), (hi, ends[1])):
                    if pos >= len(dates) or dates[pos] != end:
                        raise ValueError(f"{where}: {_iso(end)} is not a date of these rows")
                if hi < lo:
                    raise ValueError(f"{where}: range {pair!r} ends before it starts")
                mask[lo : hi + 1] = True
            return mask

        folds = []
        for f in d["folds"]:
            k = int(f["fold"])
            train = date_mask(f["train"], f"fold {k} train")
            test = date_mask(f["test"], f"fold {k} test")
            if (train & test).any():
                raise ValueError(f"fold {k}: train and test ranges overlap")
            train_idx, test_idx = np.flatnonzero(train[row_date]), np.flatnonzero(test[row_date])
            for name, idx in (("train", train_idx), ("test", test_idx)):
                recorded = f.get(f"{name}_rows")
                if recorded is not None and int(recorded) != idx.size:
                    raise ValueError(
                        f"fold {k}: the plan records {recorded} {name} rows but its ranges "
                        f"hold {idx.size} of these rows"
                    )
            folds.append(
                Fold(k, train_idx, test_idx, f.get("purged_rows"), f.get("embargoed_rows"))
            )
        return cls(int(d["horizon"]), int(d["embargo"]), tuple(folds), ts, d.get("embargo_basis"))


def _readonly_ts(ts: np.ndarray) -> np.ndarray:
    if ts.dtype == np.dtype("datetime64[ns]") and not ts.flags.writeable:
        return ts
    ts = np.array(ts, dtype="datetime64[ns]", copy=True)
    ts.setflags(write=False)
    return ts


def _whole_dates(row_date: np.ndarray, idx: np.ndarray, per_date: np.ndarray) -> bool:
    got = np.bincount(row_date[idx], minlength=len(per_date))
    return bool(np.all((got == 0) | (got == per_date)))


def make_fold_plan(
    splitter: Any, timestamps: Any, label_end: Any = None, symbols: Any = None
) -> FoldPlan:
    """Run ``splitter`` (PurgedKFold or WalkForward) on the rows and record the folds.

    ``timestamps``/``label_end``/``symbols`` are per row (see the splitters; ``label_end`` is
    required for a panel, ``symbols`` lets the embargo count each symbol's own bars). Our
    splitters also report each fold's purged and embargoed rows. The splitter must produce
    whole dates per fold (ours do), so the plan survives ``to_dict``/``from_dict`` exactly.
    """
    for attr in ("horizon", "embargo_bars"):
        if not hasattr(splitter, attr):
            raise TypeError(f"make_fold_plan needs a date splitter with .{attr}, got {splitter!r}")
    ts = to_datetime64(timestamps, "timestamps")
    dates, row_date, _ = _date_index(ts)
    per_date = np.bincount(row_date, minlength=len(dates))
    folds = []
    basis = None
    if hasattr(splitter, "_fold_dates"):
        grid = splitter._grid(ts, ts, label_end, symbols)
        basis = grid.embargo_basis
        for k, fd in enumerate(splitter._fold_dates(grid)):
            folds.append(
                Fold(
                    k,
                    grid.rows(fd.train),
                    grid.rows(fd.test),
                    grid.n_rows(fd.purged),
                    grid.n_rows(fd.embargoed),
                )
            )
    else:  # another date splitter: rows only
        kwargs = {
            k: v for k, v in (("label_end", label_end), ("symbols", symbols)) if v is not None
        }
        for k, (train, test) in enumerate(splitter.split(ts, groups=ts, **kwargs)):
            folds.append(Fold(k, np.sort(train), np.sort(test)))
    for f in folds:
        for name, idx in (("train", f.train_idx), ("test", f.test_idx)):
            if not _whole_dates(row_date, idx, per_date):
                raise ValueError(
                    f"fold {f.fold}: {name} set splits a date's rows; plans need dates"
                )
    plan = FoldPlan(int(splitter.horizon), int(splitter.embargo_bars), tuple(folds), ts, basis)
    logger.debug(
        "fold plan: %d folds over %d rows, %d dates; purged %s, embargoed %s rows (%s)",
        len(folds),
        len(ts),
        len(dates),
        [f.purged_rows for f in folds],
        [f.embargoed_rows for f in folds],
        basis,
    )
    return plan


def holdout_split(
    timestamps: Any, label_end: Any, test_fraction: float, horizon: int, embargo: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into a training window and a final held-out test period.

    Test rows: those on the last ``round(test_fraction * n_dates)`` dates (at least one).
    Training rows: those whose label window ends before the date ``embargo`` bars before the
    first test date, so a symbol without gaps trains on bars at least ``horizon + embargo + 1``
    bars before the test (label end NaT, or ``label_end=None`` for a single series: ``t +
    horizon`` bars; a panel needs ``label_end``, see :func:`build_grid`). Nothing trains
    after a final hold-out, so the AFML embargo has nothing to remove here; ``embargo`` is
    kept as extra distance before the test instead. Returns ``(train_rows, test_rows)``,
    ascending row indices.

    >>> import numpy as np
    >>> ts = np.arange("2020-01-01", "2020-01-11", dtype="datetime64[D]")
    >>> train, test = holdout_split(ts, None, 0.2, horizon=2, embargo=1)
    >>> train.tolist(), test.tolist()
    ([0, 1, 2, 3, 4], [8, 9])
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    horizon = _check_int("horizon", horizon, 1)
    embargo = _check_int("embargo", embargo, 0)
    grid = build_grid(timestamps, label_end, horizon)
    n_test = max(1, round(float(test_fraction) * grid.n_dates))
    first_test = grid.n_dates - n_test
    train = np.flatnonzero(grid.row_label_end < first_test - embargo)
    if first_test < 1 or train.size == 0:
        raise ValueError(
            f"no training rows before the hold-out: {grid.n_dates} dates, {n_test} test dates, "
            f"horizon {horizon}, embargo {embargo}"
        )
    test = np.flatnonzero(grid.row_date >= first_test)
    return train, test


# --------------------------------------------------------------------------- held-out period


@dataclass(frozen=True, eq=False)
class Holdout:
    """The training window and the held-out test period of a panel for one target.

    ``info`` records the boundaries (ISO timestamps, bar gaps, row counts). Leakage
    detection, feature selection and training look at ``train`` only; the stack is judged
    on ``test``.
    """

    train: pd.DataFrame
    test: pd.DataFrame
    info: dict[str, Any]


def split_train_test(
    panel_frame: pd.DataFrame, target: str, horizon: int, test_fraction: float, embargo: int
) -> Holdout:
    """Training window and held-out test period of a panel, for one target.

    Rows without a label are dropped. Test: the last ``test_fraction`` of the labelled
    dates. Training: rows whose label window ends more than ``embargo`` bars before the
    first test date, so at least ``horizon + embargo`` bars lie strictly between the last
    training date and the first test date (:func:`holdout_split`). ``info`` records the
    boundaries; ``gap_bars`` / ``label_gap_bars`` count bars of the panel's date grid
    strictly between the last training date / label end and the first test date.
    """
    le_col = f"label_end_{int(horizon)}"
    missing = [c for c in ("timestamp", "symbol", target, le_col) if c not in panel_frame]
    if missing:
        raise ValueError(f"panel is missing column(s) {missing} needed for target {target!r}")
    # positions of the labelled rows (as labelled_rows keeps them), not a labelled copy of
    # the panel: each window is copied once (at 500 symbols a copy is 0.8 GB, and every
    # stage's asset calls this)
    y = panel_frame[target].to_numpy(dtype=np.float64)
    labelled = np.flatnonzero(np.isfinite(y) & panel_frame[le_col].notna().to_numpy())
    train_rows, test_rows = holdout_split(
        panel_frame["timestamp"].to_numpy()[labelled],
        panel_frame[le_col].to_numpy()[labelled],
        test_fraction,
        horizon,
        embargo,
    )
    train = panel_frame.iloc[labelled[np.asarray(train_rows)]].reset_index(drop=True)
    test = panel_frame.iloc[labelled[np.asarray(test_rows)]].reset_index(drop=True)
    grid = np.unique(panel_frame["timestamp"].to_numpy(dtype="datetime64[ns]"))

    def pos(t: Any) -> int:
        return int(np.searchsorted(grid, np.datetime64(pd.Timestamp(t), "ns")))

    last_label_end = train[le_col].max()
    info = {
        "target": target,
        "horizon": int(horizon),
        "embargo": embargo,
        "test_fraction": test_fraction,
        "train_first": train["timestamp"].min().isoformat(),
        "train_last": train["timestamp"].max().isoformat(),
        "train_last_label_end": last_label_end.isoformat(),
        "test_first": test["timestamp"].min().isoformat(),
        "test_last": test["timestamp"].max().isoformat(),
        "gap_bars": pos(test["timestamp"].min()) - pos(train["timestamp"].max()) - 1,
        "label_gap_bars": pos(test["timestamp"].min()) - pos(last_label_end) - 1,
        "train_rows": len(train),
        "test_rows": len(test),
    }
    return Holdout(train, test, info)


# one attempt's steps share a panel object (in one process); its holdout is computed once
_HOLDOUTS: dict[tuple[int, int, float, int], tuple[Any, Holdout]] = {}
_HOLDOUTS_KEPT = 16


def holdout_of(
    panel_frame: pd.DataFrame, horizon: int, test_fraction: float, embargo: int
) -> Holdout:
    """:func:`split_train_test` of ``fwd_ret_{horizon}``, computed once per panel frame and
    arguments while that frame lives (every stage of a target needs the same split)."""
    import weakref

    key = (id(panel_frame), int(horizon), float(test_fraction), int(embargo))
    hit = _HOLDOUTS.get(key)
    if hit is not None and hit[0]() is panel_frame:
        return hit[1]
    holdout = split_train_test(
        panel_frame, f"fwd_ret_{int(horizon)}", horizon, test_fraction, embargo
    )
    _HOLDOUTS[key] = (weakref.ref(panel_frame), holdout)
    while len(_HOLDOUTS) > _HOLDOUTS_KEPT:
        _HOLDOUTS.pop(next(iter(_HOLDOUTS)))
    return holdout
