"""Purged k-fold, walk-forward, fold plans and the hold-out split are leakage-safe.

The safety checker below is written independently of cohortflow.splits (row by row, in
timestamp space) and is shown to catch two broken splitters.
"""

from __future__ import annotations

import doctest
import json
import logging
import time

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold, cross_val_score

from cohortflow import splits
from cohortflow.canonical import canonical_json
from cohortflow.splits import (
    EMBARGO_ON_DATE_GRID,
    EMBARGO_ON_SYMBOL_BARS,
    FoldDates,
    FoldPlan,
    PurgedKFold,
    WalkForward,
    holdout_split,
    make_fold_plan,
    purge_and_embargo,
)

N_DATES = 100


def gappy_panel(horizon: int, n_dates: int = N_DATES) -> pd.DataFrame:
    """Four symbols with unequal histories on a business-day grid.

    AAA: every date. BBB: starts late (date 15). CCC: ends early (date 80).
    DDD: missing dates 35..44, a gap that straddles the fold-2 boundary of a 5-fold split
    (test block 40..59), so DDD's bars just before the gap have label windows much longer
    than ``horizon`` grid bars.
    """
    dates = pd.bdate_range("2020-01-02", periods=n_dates).astype("datetime64[ns]")
    spans = {
        "AAA": np.arange(n_dates),
        "BBB": np.arange(15, n_dates),
        "CCC": np.arange(0, 81),
        "DDD": np.r_[np.arange(0, 35), np.arange(45, n_dates)],
    }
    frames = [pd.DataFrame({"timestamp": dates[idx], "symbol": s}) for s, idx in spans.items()]
    panel = pd.concat(frames).sort_values(["timestamp", "symbol"], kind="mergesort")
    panel = panel.reset_index(drop=True)
    panel[f"label_end_{horizon}"] = panel.groupby("symbol")["timestamp"].shift(-horizon)
    return panel


# --------------------------------------------------------------------------- the checker


def fold_violations(
    timestamps: np.ndarray,
    label_end: np.ndarray,
    symbols: np.ndarray,
    horizon: int,
    embargo: int,
    train: np.ndarray,
    test: np.ndarray,
) -> list[str]:
    """Every way a fold leaks, as messages (empty: the fold is safe).

    - a training row's label window [t, label_end] overlaps a test segment's date span;
    - a training row starts inside a test row's label window (after the segment);
    - a training row is among its symbol's first ``embargo`` own bars after the end of the
      purged test span (the latest label end of the segment's test rows), AFML 7.4.2;
    - a row is both train and test.
    A NaT label end means ``t + horizon`` bars of the global grid.
    """
    ts = pd.DatetimeIndex(timestamps)
    grid = ts.unique().sort_values()
    pos = {t: i for i, t in enumerate(grid)}
    given = pd.DatetimeIndex(label_end)
    ends = []
    for t, e in zip(ts, given, strict=True):
        if pd.isna(e):
            i = pos[t] + horizon
            e = grid[i] if i < len(grid) else pd.Timestamp.max
        ends.append(e)
    own = {s: sorted(ts[symbols == s]) for s in set(symbols.tolist())}
    out = []
    if set(train.tolist()) & set(test.tolist()):
        out.append("rows in both train and test")
    test_pos = sorted({pos[t] for t in ts[test]})
    segments, start = [], test_pos[0]
    for prev, cur in zip(test_pos, test_pos[1:] + [None], strict=True):
        if cur != prev + 1:
            segments.append((start, prev))
            start = cur
    for a, b in segments:
        seg_rows = [i for i in test if grid[a] <= ts[i] <= grid[b]]
        reach = max(ends[i] for i in seg_rows)  # the test rows' label windows end here
        for i in train:
            t = ts[i]
            if t <= grid[b] and ends[i] >= grid[a]:
                out.append(
                    f"row {i} ({t.date()}..{ends[i].date()}) overlaps test {grid[a].date()}.."
                )
            elif grid[b] < t <= reach:
                out.append(f"row {i} ({t.date()}) starts inside a test label window")
            bars = own[symbols[i]]
            if t > reach and any(x <= reach for x in bars):
                after = sum(1 for x in bars if reach < x <= t)  # own bars after the reach
                if after <= embargo:
                    out.append(
                        f"row {i} ({t.date()}) within the embargo after {reach.date()} "
                        f"(own bar {after})"
                    )
    return out


def plan_violations(panel: pd.DataFrame, horizon: int, embargo: int, cv, symbols=True) -> list[str]:
    """The checker over every fold of ``cv`` on ``panel`` (``symbols``: pass them to split)."""
    ts = panel["timestamp"].to_numpy()
    le = panel[f"label_end_{horizon}"].to_numpy()
    sym = panel["symbol"].to_numpy()
    kwargs = {"symbols": sym} if symbols else {}
    out = []
    for k, (train, test) in enumerate(cv.split(ts, groups=ts, label_end=le, **kwargs)):
        out += [
            f"fold {k}: {m}" for m in fold_violations(ts, le, sym, horizon, embargo, train, test)
        ]
    return out


class UnpurgedKFold(PurgedKFold):
    """Broken on purpose: trains on every date outside the test block."""

    def _exclude(self, test, grid):
        none = np.zeros_like(test)
        return FoldDates(test, ~test, none, none)


class EmbargoFromTestEndKFold(PurgedKFold):
    """Broken on purpose: the embargo counted from the last test date, inside the purge zone
    (the pre-issue-17 rule), so with embargo <= horizon it removes nothing."""

    def _exclude(self, test, grid):
        purged = purge_and_embargo(test, grid, 0)
        d = np.arange(len(test))
        b = int(np.flatnonzero(test).max())
        embargoed = (d > b) & (d <= b + self.embargo_bars) & ~purged.purged
        return FoldDates(test, purged.train & ~embargoed, purged.purged, embargoed)


class GridHorizonKFold(PurgedKFold):
    """Broken on purpose: ignores the per-symbol label ends (assumes no gaps)."""

    def split(self, X, y=None, groups=None, label_end=None, symbols=None):
        nat = np.full(len(groups), np.datetime64("NaT"), dtype="datetime64[ns]")
        return super().split(X, y, groups, label_end=nat, symbols=symbols)


# --------------------------------------------------------------------------- k-fold


@pytest.mark.parametrize(("horizon", "embargo"), [(1, None), (2, None), (5, None), (2, 6), (3, 0)])
def test_purged_kfold_every_fold_is_leak_free(horizon, embargo):
    panel = gappy_panel(horizon)
    cv = PurgedKFold(n_splits=5, horizon=horizon, embargo=embargo)
    assert plan_violations(panel, horizon, cv.embargo_bars, cv) == []


def test_purged_kfold_tests_every_date_once_in_contiguous_blocks():
    panel = gappy_panel(2)
    ts = panel["timestamp"].to_numpy()
    grid = np.unique(ts)
    cv = PurgedKFold(n_splits=5, horizon=2)
    folds = list(cv.split(ts, groups=ts, label_end=panel["label_end_2"]))
    assert len(folds) == cv.get_n_splits() == 5
    all_test = np.concatenate([test for _, test in folds])
    np.testing.assert_array_equal(np.sort(all_test), np.arange(len(panel)))
    for k, (train, test) in enumerate(folds):
        pos = np.searchsorted(grid, np.unique(ts[test]))
        np.testing.assert_array_equal(pos, np.arange(20 * k, 20 * k + 20))
        assert train.size > 0
        assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)


def test_purged_kfold_purges_by_symbol_label_end_across_a_gap():
    # DDD's bar on date 34 ends its 2-bar label on date 46 (the gap is 35..44); fold 2 tests
    # dates 40..59, so date 34 must not train fold 2, though 34 + 2 grid bars < 40
    panel = gappy_panel(2)
    ts = panel["timestamp"].to_numpy()
    grid = np.unique(ts)
    cv = PurgedKFold(n_splits=5, horizon=2)
    train, _ = list(cv.split(ts, groups=ts, label_end=panel["label_end_2"]))[2]
    train_dates = set(np.searchsorted(grid, np.unique(ts[train])).tolist())
    assert 34 not in train_dates
    # DDD's 33 and 34 reach 45 and 46; 38 and 39 reach 40 and 41 on the grid; after the test
    # block the label windows reach 61 (purged 60..61), then the 2-bar embargo (62..63)
    assert train_dates == set(range(0, 33)) | {35, 36, 37} | set(range(64, 100))


def test_embargo_starts_after_the_purge_so_0_and_h_differ():
    """The issue-17 finding: counted from the last test date, an embargo <= horizon fell
    inside the purge and removed nothing. Counted after the purged span, it always does."""
    horizon = 5
    panel = gappy_panel(horizon)
    ts, le = panel["timestamp"].to_numpy(), panel[f"label_end_{horizon}"].to_numpy()
    grid = np.unique(ts)
    sizes = {}
    for embargo in (0, horizon):
        cv = PurgedKFold(n_splits=5, horizon=horizon, embargo=embargo)
        folds = list(cv.split(ts, groups=ts, label_end=le, symbols=panel["symbol"]))
        sizes[embargo] = [train.size for train, _ in folds]
        # fold 1 tests dates 20..39: the label windows reach date 49 (DDD's bar on 34 ends its
        # 5-bar label on 49, across its gap 35..44); training resumes after the embargo
        train = folds[1][0]
        after = np.searchsorted(grid, ts[train][ts[train] > grid[39]].min())
        assert after == 49 + 1 + embargo
    assert sizes[0] != sizes[horizon]
    # each fold but the last (nothing after it) loses the 5 embargoed dates' rows: 4 symbols
    # a date, 3 after CCC's history ends (date 80)
    assert [a - b for a, b in zip(sizes[0], sizes[horizon], strict=True)] == [20, 20, 20, 15, 0]
    # the pre-issue-17 rule removes nothing beyond the purge at embargo == horizon ...
    old = EmbargoFromTestEndKFold(n_splits=5, horizon=horizon, embargo=horizon)
    assert [tr.size for tr, _ in old.split(ts, groups=ts, label_end=le)] == sizes[0]
    # ... and the checker says so
    assert any("within the embargo" in m for m in plan_violations(panel, horizon, horizon, old))


def embargo_gap_panel() -> pd.DataFrame:
    """Two symbols on 40 business days; EEE has no bars on dates 12..19, right after fold
    0's purged span (test 0..9, horizon 2: label windows reach date 11)."""
    dates = pd.bdate_range("2021-01-04", periods=40).astype("datetime64[ns]")
    spans = {"AAA": np.arange(40), "EEE": np.r_[np.arange(12), np.arange(20, 40)]}
    frames = [pd.DataFrame({"timestamp": dates[idx], "symbol": s}) for s, idx in spans.items()]
    panel = pd.concat(frames).sort_values(["timestamp", "symbol"], kind="mergesort")
    panel = panel.reset_index(drop=True)
    panel["label_end_2"] = panel.groupby("symbol")["timestamp"].shift(-2)
    return panel


def test_embargo_is_counted_on_each_symbols_own_bars():
    panel = embargo_gap_panel()
    ts, le = panel["timestamp"].to_numpy(), panel["label_end_2"].to_numpy()
    grid = np.unique(ts)
    cv = PurgedKFold(n_splits=4, horizon=2, embargo=3)

    def fold0_train_dates(**kwargs) -> set[int]:
        train, _ = next(iter(cv.split(ts, groups=ts, label_end=le, **kwargs)))
        return set(np.searchsorted(grid, np.unique(ts[train])).tolist())

    # EEE's next 3 own bars after date 11 are dates 20, 21, 22; AAA's are 12, 13, 14
    by_symbol = fold0_train_dates(symbols=panel["symbol"])
    assert by_symbol == {15, 16, 17, 18, 19} | set(range(23, 40))
    # without symbols the embargo is 3 dates of the grid (12..14): EEE's bars 20..22 train
    by_grid = fold0_train_dates()
    assert by_grid == set(range(15, 40))
    assert plan_violations(panel, 2, 3, cv) == []
    grid_found = plan_violations(panel, 2, 3, cv, symbols=False)
    assert grid_found and all("EEE" not in m for m in grid_found)
    assert {m.split(" within")[0].split("(")[1].rstrip(") ") for m in grid_found} == {
        str(pd.Timestamp(grid[d]).date()) for d in (20, 21, 22)
    }
    # a symbol with no bar at or before the reach shares no history with the test: no embargo
    late = panel[~((panel["symbol"] == "EEE") & (panel["timestamp"] <= grid[11]))]
    late = late.reset_index(drop=True)
    ts2, le2 = late["timestamp"].to_numpy(), late["label_end_2"].to_numpy()
    train, _ = next(iter(cv.split(ts2, groups=ts2, label_end=le2, symbols=late["symbol"])))
    assert np.searchsorted(grid, ts2[train].min()) == 15


def test_checker_flags_a_splitter_without_purging():
    panel = gappy_panel(2)
    cv = UnpurgedKFold(n_splits=5, horizon=2)
    found = plan_violations(panel, 2, cv.embargo_bars, cv)
    assert any("overlaps test" in m for m in found)
    assert any("within the embargo" in m for m in found)


def test_checker_flags_a_splitter_that_ignores_symbol_label_ends():
    panel = gappy_panel(2)
    cv = GridHorizonKFold(n_splits=5, horizon=2)
    found = plan_violations(panel, 2, cv.embargo_bars, cv)
    # fold 1 tests DDD's bar on date 34, whose label runs to date 46; on the grid its reach
    # is 41, and the embargo after 41 (DDD's own next bars: 45, 46) leaves date 44 inside
    # that label window and 47..48 inside the true embargo; fold 2 (dates 40..59) trains on
    # DDD's bars of dates 33 and 34 (labels end 45, 46)
    assert {m.split(":")[0] for m in found} == {"fold 1", "fold 2"}
    fold1 = [m for m in found if m.startswith("fold 1")]
    day = [str(pd.Timestamp(d).date()) for d in np.unique(panel["timestamp"])]

    def dates_of(kind: str) -> set[str]:
        return {m.split("(")[1][:10] for m in fold1 if kind in m}

    assert dates_of("inside a test label window") == {day[44]}
    assert dates_of("within the embargo") == {day[47], day[48]}
    assert len(fold1) == len(dates_of("inside")) * 3 + 2 * 4  # AAA BBB CCC on 44; all on 47, 48
    leaking_in_2 = {int(m.split("row ")[1].split(" ")[0]) for m in found if m.startswith("fold 2")}
    ddd_33_34 = panel.index[
        (panel["symbol"] == "DDD")
        & panel["timestamp"].isin(np.unique(panel["timestamp"])[[33, 34]])
    ]
    assert leaking_in_2 == set(ddd_33_34)
    # the same panel through the real splitter: nothing
    assert plan_violations(panel, 2, 2, PurgedKFold(n_splits=5, horizon=2)) == []


def test_purged_kfold_label_end_defaults_to_grid_horizon_for_one_series():
    ts = pd.bdate_range("2021-03-01", periods=30).to_numpy()
    cv = PurgedKFold(n_splits=3, horizon=3)
    panel = pd.DataFrame({"timestamp": ts, "symbol": "AAA", "label_end_3": pd.NaT})
    assert plan_violations(panel, 3, 3, cv) == []
    train, test = next(iter(cv.split(ts, groups=ts)))
    # test dates 0..9; purged through 9 + 3 (label reach), embargoed 13..15: train from 16
    assert int(train.min()) == 16 and int(test.max()) == 9


def test_a_panel_needs_label_end():
    ts = np.repeat(pd.bdate_range("2021-03-01", periods=30).to_numpy(), 3)
    for cv in (PurgedKFold(n_splits=3, horizon=3), WalkForward(n_splits=3, horizon=3)):
        with pytest.raises(ValueError, match="label_end is required for a panel.*gap"):
            next(iter(cv.split(ts, groups=ts)))
    with pytest.raises(ValueError, match="label_end is required for a panel"):
        holdout_split(ts, None, 0.2, 3, 3)
    # several symbols on distinct dates are a panel too
    one_row_each = pd.bdate_range("2021-03-01", periods=30).to_numpy()
    with pytest.raises(ValueError, match="label_end is required for a panel"):
        next(PurgedKFold(3, 3).split(one_row_each, groups=one_row_each, symbols=["A", "B"] * 15))
    with pytest.raises(ValueError, match="a symbol has two rows on one date"):
        next(PurgedKFold(3, 3).split(ts, groups=ts, label_end=ts, symbols=["A"] * len(ts)))


@pytest.mark.parametrize(
    ("kwargs", "call", "match"),
    [
        ({"n_splits": 1}, None, "n_splits must be >= 2"),
        ({"horizon": 0}, None, "horizon must be >= 1"),
        ({"embargo": -1}, None, "embargo must be >= 0"),
        ({}, "no_groups", "pass groups="),
        ({}, "few_dates", "cannot make 5 folds from 3 distinct dates"),
        ({}, "length", "groups has 6 timestamps but X has 5 rows"),
        ({}, "nat", "contains NaT"),
        ({}, "symbols_length", "symbols has 5 values but there are 6 rows"),
        ({"n_splits": 2, "horizon": 5}, "purged_out", "no training dates left"),
    ],
)
def test_purged_kfold_rejects_bad_input(kwargs, call, match):
    ts = np.repeat(pd.bdate_range("2021-03-01", periods=3).to_numpy(), 2)
    with pytest.raises(ValueError, match=match):
        cv = PurgedKFold(**kwargs)
        if call == "no_groups":
            next(cv.split(np.zeros((6, 1))))
        elif call == "few_dates":
            next(cv.split(ts, groups=ts, label_end=ts))
        elif call == "length":
            next(cv.split(np.zeros((5, 1)), groups=ts))
        elif call == "nat":
            bad = ts.copy()
            bad[0] = np.datetime64("NaT")
            next(cv.split(bad, groups=bad))
        elif call == "symbols_length":
            next(cv.split(ts, groups=ts, label_end=ts, symbols=list("ABABA")))
        elif call == "purged_out":
            ts8 = pd.bdate_range("2021-03-01", periods=8).to_numpy()
            list(cv.split(ts8, groups=ts8))


# --------------------------------------------------------------------------- walk-forward


@pytest.mark.parametrize(("horizon", "gap"), [(1, None), (3, None), (2, 5)])
def test_walk_forward_is_leak_free_with_train_before_test_and_a_gap(horizon, gap):
    panel = gappy_panel(horizon)
    ts = panel["timestamp"].to_numpy()
    grid = np.unique(ts)
    cv = WalkForward(n_splits=4, horizon=horizon, gap=gap)
    assert plan_violations(panel, horizon, 0, cv) == []
    folds = list(cv.split(ts, groups=ts, label_end=panel[f"label_end_{horizon}"]))
    assert len(folds) == 4
    prev_test_end = -1
    for train, test in folds:
        last_train = np.searchsorted(grid, ts[train].max())
        first_test = np.searchsorted(grid, ts[test].min())
        # dates strictly between the last training date and the first test date
        assert first_test - last_train - 1 >= cv.gap_bars >= horizon
        assert first_test == prev_test_end + 1 or prev_test_end == -1
        prev_test_end = np.searchsorted(grid, ts[test].max())
    assert prev_test_end == N_DATES - 1
    # expanding window: every fold trains from the first date
    assert all(ts[train].min() == grid[0] for train, _ in folds)


def test_walk_forward_rejects_too_few_dates():
    ts = pd.bdate_range("2021-03-01", periods=10).to_numpy()
    # 3 dates train first, 2 are the gap: 5 dates left for test blocks
    assert len(list(WalkForward(n_splits=5, horizon=2).split(ts, groups=ts))) == 5
    with pytest.raises(ValueError, match="cannot make 6 walk-forward test blocks from 10 dates"):
        list(WalkForward(n_splits=6, horizon=2).split(ts, groups=ts))
    with pytest.raises(ValueError, match="min_train_fraction"):
        WalkForward(min_train_fraction=1.0)


# --------------------------------------------------------------------------- fold plans


def _two_symbols(n_dates: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Business days from 2020-01-02, symbols A and B on each, 1-bar label ends."""
    dates = pd.bdate_range("2020-01-02", periods=n_dates).to_numpy().astype("datetime64[ns]")
    ts = np.repeat(dates, 2)
    le = np.repeat(np.r_[dates[1:], np.array(["NaT"], dtype="datetime64[ns]")], 2)
    return ts, le, np.tile(["A", "B"], n_dates)


def test_fold_plan_to_dict_exact_format():
    # business days: 01-03 (Fri) and 01-06 (Mon) are consecutive on the grid
    ts, le, sym = _two_symbols()
    plan = make_fold_plan(PurgedKFold(n_splits=3, horizon=1), ts, le, sym)
    expected = {
        "horizon": 1,
        "embargo": 1,
        "embargo_basis": "symbol_bars",
        "folds": [
            {
                # test dates 0..3; label windows reach 4 (purged); embargo 5 (01-09)
                "fold": 0,
                "train": [["2020-01-10T00:00:00", "2020-01-15T00:00:00"]],
                "test": [["2020-01-02T00:00:00", "2020-01-07T00:00:00"]],
                "train_rows": 8,
                "test_rows": 8,
                "purged_rows": 2,
                "embargoed_rows": 2,
            },
            {
                # test 4..6: purged 3 (its label ends on 4) and 7; embargo 8 (01-14)
                "fold": 1,
                "train": [
                    ["2020-01-02T00:00:00", "2020-01-06T00:00:00"],
                    ["2020-01-15T00:00:00", "2020-01-15T00:00:00"],
                ],
                "test": [["2020-01-08T00:00:00", "2020-01-10T00:00:00"]],
                "train_rows": 8,
                "test_rows": 6,
                "purged_rows": 4,
                "embargoed_rows": 2,
            },
            {
                # test 7..9: purged 6; nothing after the last block to embargo
                "fold": 2,
                "train": [["2020-01-02T00:00:00", "2020-01-09T00:00:00"]],
                "test": [["2020-01-13T00:00:00", "2020-01-15T00:00:00"]],
                "train_rows": 12,
                "test_rows": 6,
                "purged_rows": 2,
                "embargoed_rows": 0,
            },
        ],
    }
    assert plan.to_dict() == expected
    # through canonical JSON text (what fold_plan.json holds) and back
    again = FoldPlan.from_dict(json.loads(canonical_json(plan.to_dict())), ts)
    assert again == plan
    np.testing.assert_array_equal(again.folds[1].train_idx, [0, 1, 2, 3, 4, 5, 18, 19])
    np.testing.assert_array_equal(plan.test_fold(), np.repeat([0, 0, 0, 0, 1, 1, 1, 2, 2, 2], 2))
    # without symbols the embargo of a panel is counted on the date grid, and says so
    grid_plan = make_fold_plan(PurgedKFold(n_splits=3, horizon=1), ts, le)
    assert grid_plan.to_dict() == {**expected, "embargo_basis": "date_grid"}
    assert grid_plan.embargo_basis == EMBARGO_ON_DATE_GRID != EMBARGO_ON_SYMBOL_BARS


def test_fold_plan_reads_files_without_the_row_counts():
    """fold_plan.json written before issue 17: horizon, embargo, folds[].fold/train/test."""
    ts, le, sym = _two_symbols()
    plan = make_fold_plan(PurgedKFold(n_splits=3, horizon=1), ts, le, sym)
    old = {
        "horizon": 1,
        "embargo": 1,
        "folds": [{k: f[k] for k in ("fold", "train", "test")} for f in plan.to_dict()["folds"]],
    }
    read = FoldPlan.from_dict(old, ts)
    assert read.embargo_basis is None
    assert [(f.purged_rows, f.embargoed_rows) for f in read.folds] == [(None, None)] * 3
    for a, b in zip(read.folds, plan.folds, strict=True):
        np.testing.assert_array_equal(a.train_idx, b.train_idx)
        np.testing.assert_array_equal(a.test_idx, b.test_idx)
    assert read != plan  # the counts are part of the value
    # written again, it keeps what it knows (the row counts of its ranges), nothing invented
    again = read.to_dict()
    assert set(again) == {"horizon", "embargo", "folds"}
    assert set(again["folds"][0]) == {"fold", "train", "test", "train_rows", "test_rows"}


@pytest.mark.parametrize(
    "cv", [PurgedKFold(n_splits=5, horizon=2, embargo=4), WalkForward(n_splits=3, horizon=2)]
)
def test_fold_plan_round_trip_on_unequal_histories(cv):
    panel = gappy_panel(2)
    ts = panel["timestamp"]
    plan = make_fold_plan(cv, ts, panel["label_end_2"], panel["symbol"])
    d = plan.to_dict()
    assert set(d) == {"horizon", "embargo", "embargo_basis", "folds"}
    assert (d["horizon"], d["embargo"]) == (2, cv.embargo_bars)
    assert [f["fold"] for f in d["folds"]] == list(range(cv.get_n_splits()))
    assert FoldPlan.from_dict(d, ts) == plan
    splits = cv.split(ts, groups=ts, label_end=panel["label_end_2"], symbols=panel["symbol"])
    for fold, (train, test) in zip(plan.folds, splits, strict=True):
        np.testing.assert_array_equal(fold.train_idx, train)
        np.testing.assert_array_equal(fold.test_idx, test)
        # every row is tested, trained on, purged, embargoed or (walk-forward) later
        later = 0 if isinstance(cv, PurgedKFold) else int((ts > ts[test].max()).sum())
        used = train.size + test.size + fold.purged_rows + fold.embargoed_rows + later
        assert used == len(panel)
        assert fold.purged_rows > 0
    with pytest.raises(ValueError):
        plan.folds[0].train_idx[0] = 5  # read-only: a plan is a value


def test_fold_plan_from_dict_refuses_dates_not_in_the_rows():
    ts, le, _ = _two_symbols()
    d = make_fold_plan(PurgedKFold(n_splits=3, horizon=1), ts, le).to_dict()
    d["folds"][0]["test"][0][0] = "2020-01-04T00:00:00"  # a Saturday
    with pytest.raises(ValueError, match="fold 0 test: 2020-01-04T00:00:00 is not a date"):
        FoldPlan.from_dict(d, ts)
    with pytest.raises(ValueError, match="lacks key"):
        FoldPlan.from_dict({"folds": []}, ts)
    # the same dates, other rows (one symbol less): the recorded row counts refuse it
    d = make_fold_plan(PurgedKFold(n_splits=3, horizon=1), ts, le).to_dict()
    with pytest.raises(ValueError, match="fold 0: the plan records 8 train rows but its ranges"):
        FoldPlan.from_dict(d, ts[::2])


def test_make_fold_plan_needs_a_date_splitter():
    ts = np.repeat(pd.bdate_range("2020-01-02", periods=10).to_numpy(), 2)
    with pytest.raises(TypeError, match="horizon"):
        make_fold_plan(KFold(3), ts)


# --------------------------------------------------------------------------- hold-out


def test_holdout_split_leaves_horizon_plus_embargo_gap():
    horizon, embargo = 2, 3
    panel = gappy_panel(horizon)
    ts = panel["timestamp"].to_numpy()
    le = panel[f"label_end_{horizon}"].to_numpy()
    grid = np.unique(ts)
    train, test = holdout_split(ts, le, 0.2, horizon, embargo)
    np.testing.assert_array_equal(test, np.flatnonzero(ts >= grid[80]))
    first_test = 80
    # every training label ends before the date `embargo` bars before the test
    assert le[train].max() < grid[first_test - embargo]
    assert not np.isnat(le[train]).any()
    aaa = train[panel["symbol"].to_numpy()[train] == "AAA"]
    last = int(np.searchsorted(grid, ts[aaa].max()))
    assert first_test - last == horizon + embargo + 1
    assert np.intersect1d(train, test).size == 0
    # CCC ends at date 80: its last bars have NaT label ends (t + 2 grid bars) and stay out
    with pytest.raises(ValueError, match="test_fraction"):
        holdout_split(ts, le, 1.0, horizon, embargo)


# --------------------------------------------------------------------------- sklearn


def test_cross_val_score_accepts_purged_kfold():
    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2020-01-02", periods=60).to_numpy().astype("datetime64[ns]")
    ts = np.repeat(dates, 4)
    le = np.repeat(np.r_[dates[2:], np.array(["NaT", "NaT"], dtype="datetime64[ns]")], 4)
    sym = np.tile(list("ABCD"), 60)
    X = rng.normal(size=(len(ts), 3))
    y = X @ np.array([1.0, -0.5, 0.0]) + rng.normal(scale=0.1, size=len(ts))
    cv = PurgedKFold(n_splits=4, horizon=2)
    # label_end and symbols reach the splitter through scikit-learn's metadata routing
    with sklearn.config_context(enable_metadata_routing=True):
        params = {"groups": ts, "label_end": le, "symbols": sym}
        scores = cross_val_score(Ridge(alpha=1.0), X, y, cv=cv, params=params)
    manual = [
        Ridge(alpha=1.0).fit(X[tr], y[tr]).score(X[te], y[te])
        for tr, te in cv.split(X, y, groups=ts, label_end=le, symbols=sym)
    ]
    assert len(scores) == 4
    np.testing.assert_allclose(scores, manual)
    assert np.all(scores > 0.9)
    assert repr(cv) == "PurgedKFold(embargo=None, horizon=2, n_splits=4)"


def test_docstring_examples_run():
    result = doctest.testmod(splits)
    assert result.attempted >= 3 and result.failed == 0


# --------------------------------------------------------------------------- speed


def test_purged_kfold_on_a_panel_of_1_25m_rows(caplog):
    """500 symbols x 2500 dates; reported, not asserted (shared 2-core machine)."""
    n_dates, n_symbols, horizon = 2500, 500, 5
    grid = pd.bdate_range("2010-01-04", periods=n_dates).to_numpy().astype("datetime64[ns]")
    ts = np.repeat(grid, n_symbols)
    pos = np.repeat(np.arange(n_dates), n_symbols) + horizon
    le = np.where(pos < n_dates, grid[np.minimum(pos, n_dates - 1)], np.datetime64("NaT"))
    sym = pd.Categorical.from_codes(np.tile(np.arange(n_symbols), n_dates), np.arange(n_symbols))
    cv = PurgedKFold(n_splits=5, horizon=horizon)
    start = time.perf_counter()
    folds = list(cv.split(ts, groups=ts, label_end=le, symbols=pd.Series(sym)))
    elapsed = time.perf_counter() - start
    logging.getLogger(__name__).warning("PurgedKFold on %d rows: %.2f s", len(ts), elapsed)
    print(f"PurgedKFold.split on {len(ts):,} rows (5 folds): {elapsed:.2f} s")
    test_sizes = [test.size for _, test in folds]
    assert sum(test_sizes) == len(ts) == 1_250_000
    # fold 2 tests dates 1000..1499: train loses 1000-5..999 before, 1500..1504 after (the
    # test rows' label windows) and the embargo 1505..1509
    assert folds[2][0].size == (n_dates - 500 - 3 * horizon) * n_symbols
