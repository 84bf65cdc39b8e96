"""Metrics against hand-computed values and independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from cohortflow.metrics import (
    auc_sign,
    forward_bar_returns,
    ic_by_date,
    ic_by_group,
    information_ratio,
    newey_west_lags,
    newey_west_t,
    r2,
    summarize_ic,
    time_series_ic,
)

D = pd.to_datetime(["2021-01-04", "2021-01-05", "2021-01-06", "2021-01-07", "2021-01-08"])


def small_panel() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Five dates: a normal one, a perfectly inverted one, a constant prediction, a single
    row, and one with a NaN target."""
    ts = np.array([D[0]] * 3 + [D[1]] * 3 + [D[2]] * 2 + [D[3]] + [D[4]] * 4, dtype="M8[ns]")
    pred = np.array([1, 2, 3, 3, 2, 1, 5, 5, 7, 1, 2, 3, 4], dtype=float)
    y = np.array([1, 2, 4, 1, 2, 3, 0.5, -0.5, 1, 1, np.nan, 3, 2], dtype=float)
    return ts, pred, y


def test_ic_by_date_hand_values():
    ts, pred, y = small_panel()
    ic = ic_by_date(ts, pred, y, "pearson")
    assert list(ic.index) == [D[0], D[1], D[4]]  # constant-pred and one-row dates skipped
    assert ic.index.name == "timestamp" and ic.name == "ic"
    # D0: pc = (-1, 0, 1), yc = (-4/3, -1/3, 5/3): 3 / sqrt(2 * 14/3)
    # D4 (NaN dropped): p = (1, 3, 4), y = (1, 3, 2): 2 / sqrt(42/9 * 2)
    np.testing.assert_allclose(ic.to_numpy(), [3 / math.sqrt(28 / 3), -1.0, 2 / math.sqrt(84 / 9)])
    ric = ic_by_date(ts, pred, y, "spearman")
    assert ric.name == "rank_ic"
    # D4 ranks: p (1, 2, 3), y (1, 3, 2): 1 / 2
    np.testing.assert_allclose(ric.to_numpy(), [1.0, -1.0, 0.5])
    only_wide = ic_by_date(ts, pred, y, "spearman", min_obs=3)
    assert list(only_wide.index) == [D[0], D[1], D[4]]
    assert list(ic_by_date(ts, pred, y, "spearman", min_obs=4).index) == []


def test_ic_by_date_matches_a_loop_over_dates_with_ties_and_nans():
    rng = np.random.default_rng(3)
    n_dates, n_sym = 40, 25
    ts = np.repeat(pd.bdate_range("2020-01-01", periods=n_dates).to_numpy(), n_sym)
    pred = np.round(rng.normal(size=ts.size), 1)  # ties
    y = 0.2 * pred + rng.normal(size=ts.size)
    pred[rng.random(ts.size) < 0.1] = np.nan
    y[rng.random(ts.size) < 0.1] = np.nan
    got_ic = ic_by_date(ts, pred, y, "pearson")
    got_ric = ic_by_date(ts, pred, y, "spearman")
    assert len(got_ic) == len(got_ric) == n_dates
    for i, t in enumerate(np.unique(ts)):
        m = (ts == t) & ~np.isnan(pred) & ~np.isnan(y)
        assert got_ic.iloc[i] == pytest.approx(np.corrcoef(pred[m], y[m])[0, 1], abs=1e-12)
        assert got_ric.iloc[i] == pytest.approx(spearmanr(pred[m], y[m]).statistic, abs=1e-12)


def test_ic_by_group_per_symbol():
    keys = np.array(["B", "A", "B", "A", "B", "A"])
    p = np.array([1, 1, 2, 2, 3, 3], dtype=float)
    y = np.array([1, 3, 2, 2, 3, 1], dtype=float)
    out = ic_by_group(keys, p, y, "spearman")
    assert out.to_dict() == {"A": -1.0, "B": 1.0}


def test_information_ratio():
    assert information_ratio([0.1, 0.2, 0.3, np.nan]) == pytest.approx(2.0)
    assert math.isnan(information_ratio([0.1, 0.1]))
    assert math.isnan(information_ratio([0.1]))


def _nw_direct(x: np.ndarray, lags: int) -> float:
    """HAC variance of the mean as a quadratic form with the Bartlett weight matrix."""
    n = x.size
    e = x - x.mean()
    k = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    w = np.where(k <= lags, 1.0 - k / (lags + 1.0), 0.0)
    var_mean = (e @ w @ e) / n / n
    return x.mean() / math.sqrt(var_mean)


def test_newey_west_t_hand_value_and_direct_computation():
    # x = 1..4, L = 1: g0 = 1.25, g1 = 0.3125, var = 1.25 + 2 * 0.5 * 0.3125 = 1.5625,
    # se = sqrt(1.5625 / 4) = 0.625, t = 2.5 / 0.625
    assert newey_west_t([1.0, 2.0, 3.0, 4.0], 1) == pytest.approx(4.0, abs=1e-12)
    rng = np.random.default_rng(11)
    x = 0.05 + np.convolve(rng.normal(size=300), np.ones(5) / 5, mode="valid")  # overlapping
    for lags in (0, 1, 4, 9):
        assert newey_west_t(x, lags) == pytest.approx(_nw_direct(x, lags), rel=1e-10)
    # lags = 0: the plain t with the population standard deviation
    assert newey_west_t(x, 0) == pytest.approx(x.mean() / (x.std() / math.sqrt(x.size)))
    # overlap inflates the naive t; the HAC t is smaller
    assert abs(newey_west_t(x, 4)) < abs(newey_west_t(x, 0))
    assert math.isnan(newey_west_t([1.0], 2)) and math.isnan(newey_west_t([2.0, 2.0], 1))
    with pytest.raises(ValueError):
        newey_west_t(x, -1)


def test_r2():
    assert r2([1, 2, 3, 4], [1, 2, 3, 5]) == pytest.approx(0.8)  # 1 - 1/5
    assert r2([1, 2, 3, 4], [2.5] * 4) == pytest.approx(0.0)
    assert r2([1, 2, np.nan, 3, 4], [1, 2, 99, 3, 5]) == pytest.approx(0.8)
    assert math.isnan(r2([1, 1, 1], [1, 2, 3]))


def test_auc_sign_hand_values_and_sklearn():
    assert auc_sign([-1, 1, -2, 3], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(1.0)
    # positives (0.4, 0.8) vs negatives (0.5, 0.35): 3 of 4 pairs ordered
    assert auc_sign([-1, 1, -2, 3], [0.5, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert math.isnan(auc_sign([1, 2, 3], [0.1, 0.2, 0.3]))
    rng = np.random.default_rng(5)
    y = rng.normal(size=500)
    y[:20] = 0.0  # zero is not "up"
    score = np.round(0.5 * y + rng.normal(size=500), 1)  # ties
    assert auc_sign(y, score) == pytest.approx(roc_auc_score(y > 0, score), abs=1e-12)


def test_time_series_ic():
    rng = np.random.default_rng(9)
    p = rng.normal(size=200)
    y = 0.3 * p + rng.normal(size=200)
    assert time_series_ic(p, y) == pytest.approx(np.corrcoef(p, y)[0, 1], abs=1e-12)
    assert time_series_ic(p, y, "spearman") == pytest.approx(spearmanr(p, y).statistic, abs=1e-12)
    assert math.isnan(time_series_ic(np.ones(5), np.arange(5.0)))
    with pytest.raises(ValueError, match="method"):
        time_series_ic(p, y, "kendall")


def test_summarize_ic_combines_the_parts():
    ts, pred, y = small_panel()
    s = summarize_ic(ts, pred, y, lags=1)
    assert set(s) == {"ic", "rank_ic", "icir", "rank_icir", "nw_t", "n_dates"}
    ric = np.array([1.0, -1.0, 0.5])
    assert s["n_dates"] == 3
    assert s["rank_ic"] == pytest.approx(ric.mean())
    assert s["rank_icir"] == pytest.approx(ric.mean() / ric.std(ddof=1))
    assert s["nw_t"] == pytest.approx(_nw_direct(ric, 1))
    assert s["ic"] == pytest.approx(np.mean([3 / math.sqrt(28 / 3), -1.0, 2 / math.sqrt(84 / 9)]))


def test_newey_west_lags_is_one_rule():
    # h - 1 lags span the overlap of h-bar labels sampled every bar; at least one
    assert [newey_west_lags(h) for h in (1, 2, 5, 10, 20)] == [1, 1, 4, 9, 19]
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        newey_west_lags(0)


def test_ranking_and_stacking_use_the_one_lag_rule():
    """Issue 17: ranking used max(h - 1, 1) lags and stacking max(h - 1, 0); both now call
    newey_west_lags (a source check: stacking does not report the lags it used)."""
    import inspect

    from cohortflow import ranking, stacking

    assert "newey_west_lags(horizon)" in inspect.getsource(ranking._cross_sectional_metrics)
    assert "newey_west_lags(horizon)" in inspect.getsource(stacking.column_metrics)
    for module in (ranking, stacking):
        assert "max(horizon - 1" not in inspect.getsource(module)
        assert "max(int(horizon) - 1" not in inspect.getsource(module)


def test_forward_bar_returns_follow_each_symbol_in_its_own_bars():
    # rows in panel order (timestamp, symbol); B has no bar on day 2
    ts = pd.to_datetime(
        ["2021-01-04", "2021-01-04", "2021-01-05", "2021-01-06", "2021-01-06", "2021-01-07"]
    ).to_numpy()
    sym = np.array(["A", "B", "A", "A", "B", "A"])
    r = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    out = forward_bar_returns(ts, sym, r, [1, 2])
    nan = np.nan
    np.testing.assert_array_equal(
        out,
        [
            [0.3, 0.4],  # A on day 1: A's next bars are days 2 and 3
            [0.5, nan],  # B on day 1: its next bar is day 3 (own bars), then none
            [0.4, 0.6],
            [0.6, nan],
            [nan, nan],
            [nan, nan],
        ],
    )
    # row order does not matter: the same values follow the rows
    perm = np.array([5, 3, 0, 4, 1, 2])
    np.testing.assert_array_equal(
        forward_bar_returns(ts[perm], sym[perm], r[perm], [1, 2]), out[perm]
    )
    with pytest.raises(ValueError, match="leads must be >= 1"):
        forward_bar_returns(ts, sym, r, [0])
    with pytest.raises(ValueError, match="lengths differ"):
        forward_bar_returns(ts, sym[:3], r, [1])
