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
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold, cross_val_score

from cohortflow import splits
from cohortflow.canonical import canonical_json
from cohortflow.splits import (
    FoldPlan,
    PurgedKFold,
    WalkForward,
    holdout_split,
    make_fold_plan,
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
    horizon: int,
    embargo: int,
    train: np.ndarray,
    test: np.ndarray,
) -> list[str]:
    """Every way a fold leaks, as messages (empty: the fold is safe).

    - a training row's label window [t, label_end] overlaps a test segment's date span;
    - a training row starts inside a test row's label window (after the segment);
    - a training row lies within ``embargo`` grid bars after a test segment;
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
            t, ti = ts[i], pos[ts[i]]
            if t <= grid[b] and ends[i] >= grid[a]:
                out.append(
                    f"row {i} ({t.date()}..{ends[i].date()}) overlaps test {grid[a].date()}.."
                )
            elif grid[b] < t <= reach:
                out.append(f"row {i} ({t.date()}) starts inside a test label window")
            if b < ti <= b + embargo:
                out.append(f"row {i} ({t.date()}) within the embargo after {grid[b].date()}")
    return out


def plan_violations(panel: pd.DataFrame, horizon: int, embargo: int, cv) -> list[str]:
    ts = panel["timestamp"].to_numpy()
    le = panel[f"label_end_{horizon}"].to_numpy()
    out = []
    for k, (train, test) in enumerate(cv.split(ts, groups=ts, label_end=le)):
        out += [f"fold {k}: {m}" for m in fold_violations(ts, le, horizon, embargo, train, test)]
    return out


class UnpurgedKFold(PurgedKFold):
    """Broken on purpose: trains on every date outside the test block."""

    def _train_dates(self, test, grid):
        return ~test


class GridHorizonKFold(PurgedKFold):
    """Broken on purpose: ignores the per-symbol label ends (assumes no gaps)."""

    def split(self, X, y=None, groups=None, label_end=None):
        return super().split(X, y, groups, label_end=None)


# --------------------------------------------------------------------------- k-fold


@pytest.mark.parametrize(("horizon", "embargo"), [(1, None), (2, None), (5, None), (2, 6)])
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
    # DDD's 33 and 34 reach 45 and 46; 38 and 39 reach 40 and 41 on the grid
    assert train_dates == set(range(0, 33)) | {35, 36, 37} | set(range(62, 100))


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
    # fold 1 tests DDD's bar on date 34, whose label runs to date 46: dates 42..46 train;
    # fold 2 (dates 40..59) trains on DDD's bars of dates 33 and 34 (labels end 45, 46)
    assert {m.split(":")[0] for m in found} == {"fold 1", "fold 2"}
    assert all("starts inside a test label window" in m for m in found if m.startswith("fold 1"))
    leaking_in_2 = {int(m.split("row ")[1].split(" ")[0]) for m in found if m.startswith("fold 2")}
    ddd_33_34 = panel.index[
        (panel["symbol"] == "DDD")
        & panel["timestamp"].isin(np.unique(panel["timestamp"])[[33, 34]])
    ]
    assert leaking_in_2 == set(ddd_33_34)
    # the same panel through the real splitter: nothing
    assert plan_violations(panel, 2, 2, PurgedKFold(n_splits=5, horizon=2)) == []


def test_purged_kfold_label_end_defaults_to_grid_horizon():
    ts = np.repeat(pd.bdate_range("2021-03-01", periods=30).to_numpy(), 3)
    cv = PurgedKFold(n_splits=3, horizon=3)
    panel = pd.DataFrame({"timestamp": ts, "label_end_3": pd.NaT})
    assert plan_violations(panel, 3, 3, cv) == []
    train, test = next(iter(cv.split(ts, groups=ts)))
    # test dates 0..9; purged through 9 + 3 (label reach) and embargoed 10..12: train from 13
    assert int(train.min()) == 13 * 3 and int(test.max()) == 10 * 3 - 1


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
            next(cv.split(ts, groups=ts))
        elif call == "length":
            next(cv.split(np.zeros((5, 1)), groups=ts))
        elif call == "nat":
            bad = ts.copy()
            bad[0] = np.datetime64("NaT")
            next(cv.split(bad, groups=bad))
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


def test_fold_plan_to_dict_exact_format():
    # business days: 01-03 (Fri) and 01-06 (Mon) are consecutive on the grid
    dates = pd.bdate_range("2020-01-02", periods=10).to_numpy()
    ts = np.repeat(dates, 2)
    plan = make_fold_plan(PurgedKFold(n_splits=3, horizon=1), ts)
    expected = {
        "horizon": 1,
        "embargo": 1,
        "folds": [
            {
                "fold": 0,
                "train": [["2020-01-09T00:00:00", "2020-01-15T00:00:00"]],
                "test": [["2020-01-02T00:00:00", "2020-01-07T00:00:00"]],
            },
            {
                "fold": 1,
                "train": [
                    ["2020-01-02T00:00:00", "2020-01-06T00:00:00"],
                    ["2020-01-14T00:00:00", "2020-01-15T00:00:00"],
                ],
                "test": [["2020-01-08T00:00:00", "2020-01-10T00:00:00"]],
            },
            {
                "fold": 2,
                "train": [["2020-01-02T00:00:00", "2020-01-09T00:00:00"]],
                "test": [["2020-01-13T00:00:00", "2020-01-15T00:00:00"]],
            },
        ],
    }
    assert plan.to_dict() == expected
    # through canonical JSON text (what fold_plan.json holds) and back
    again = FoldPlan.from_dict(json.loads(canonical_json(plan.to_dict())), ts)
    assert again == plan
    np.testing.assert_array_equal(again.folds[1].train_idx, [0, 1, 2, 3, 4, 5, 16, 17, 18, 19])
    np.testing.assert_array_equal(plan.test_fold(), np.repeat([0, 0, 0, 0, 1, 1, 1, 2, 2, 2], 2))


@pytest.mark.parametrize(
    "cv", [PurgedKFold(n_splits=5, horizon=2, embargo=4), WalkForward(n_splits=3, horizon=2)]
)
def test_fold_plan_round_trip_on_unequal_histories(cv):
    panel = gappy_panel(2)
    ts = panel["timestamp"]
    plan = make_fold_plan(cv, ts, panel["label_end_2"])
    d = plan.to_dict()
    assert set(d) == {"horizon", "embargo", "folds"}
    assert (d["horizon"], d["embargo"]) == (2, cv.embargo_bars)
    assert [f["fold"] for f in d["folds"]] == list(range(cv.get_n_splits()))
    assert FoldPlan.from_dict(d, ts) == plan
    for fold, (train, test) in zip(plan.folds, cv.split(ts, groups=ts, label_end=panel["label_end_2"]), strict=True):  # fmt: skip
        np.testing.assert_array_equal(fold.train_idx, train)
        np.testing.assert_array_equal(fold.test_idx, test)
    with pytest.raises(ValueError):
        plan.folds[0].train_idx[0] = 5  # read-only: a plan is a value


def test_fold_plan_from_dict_refuses_dates_not_in_the_rows():
    ts = np.repeat(pd.bdate_range("2020-01-02", periods=10).to_numpy(), 2)
    d = make_fold_plan(PurgedKFold(n_splits=3, horizon=1), ts).to_dict()
    d["folds"][0]["test"][0][0] = "2020-01-04T00:00:00"  # a Saturday
    with pytest.raises(ValueError, match="fold 0 test: 2020-01-04T00:00:00 is not a date"):
        FoldPlan.from_dict(d, ts)
    with pytest.raises(ValueError, match="lacks key"):
        FoldPlan.from_dict({"folds": []}, ts)


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
    ts = np.repeat(pd.bdate_range("2020-01-02", periods=60).to_numpy(), 4)
    X = rng.normal(size=(len(ts), 3))
    y = X @ np.array([1.0, -0.5, 0.0]) + rng.normal(scale=0.1, size=len(ts))
    cv = PurgedKFold(n_splits=4, horizon=2)
    scores = cross_val_score(Ridge(alpha=1.0), X, y, cv=cv, groups=ts)
    manual = [
        Ridge(alpha=1.0).fit(X[tr], y[tr]).score(X[te], y[te])
        for tr, te in cv.split(X, y, groups=ts)
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
    cv = PurgedKFold(n_splits=5, horizon=horizon)
    start = time.perf_counter()
    folds = list(cv.split(ts, groups=ts, label_end=le))
    elapsed = time.perf_counter() - start
    logging.getLogger(__name__).warning("PurgedKFold on %d rows: %.2f s", len(ts), elapsed)
    print(f"PurgedKFold.split on {len(ts):,} rows (5 folds): {elapsed:.2f} s")
    test_sizes = [test.size for _, test in folds]
    assert sum(test_sizes) == len(ts) == 1_250_000
    # fold 2 tests dates 1000..1499: train loses 1000-5..999 before and 1500..1504 after
    assert folds[2][0].size == (n_dates - 500 - 2 * horizon) * n_symbols
