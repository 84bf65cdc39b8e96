"""Target ranking finds the target with a planted signal and reports both views."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pandas as pd
import pytest

from cohortflow.canonical import canonical_json
from cohortflow.ranking import (
    CROSS_SECTIONAL,
    MODELS,
    SYMBOL_SPECIFIC,
    rank_target,
)
from cohortflow.settings import Settings

HORIZONS = (5, 10, 20)
FEATURES = ["f_signal", "f_noise_a", "f_noise_b"]
SETTINGS = Settings(horizons=HORIZONS, n_splits=3, quick_estimators=20, n_threads=1, seed=7)


def synthetic_panel(n_symbols: int = 8, n_dates: int = 240, seed: int = 0) -> pd.DataFrame:
    """Panel with unequal histories; ``fwd_ret_10 = 0.3 * f_signal + noise``, the other
    targets noise-dominated (``fwd_ret_5`` carries a 0.02 trace of the signal)."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2019-01-02", periods=n_dates).astype("datetime64[ns]")
    frames = []
    for k in range(n_symbols):
        first = 7 * k if k % 2 else 0  # late starts
        last = n_dates - (5 * k if k % 3 == 0 else 0)  # early ends
        idx = np.arange(first, last)
        if k == 3:
            idx = idx[(idx < 100) | (idx >= 112)]  # a gap
        frames.append(pd.DataFrame({"timestamp": dates[idx], "symbol": f"S{k:02d}"}))
    panel = pd.concat(frames).sort_values(["timestamp", "symbol"], kind="mergesort")
    panel = panel.reset_index(drop=True)
    n = len(panel)
    for f in FEATURES:
        panel[f] = rng.normal(size=n)
    panel.loc[rng.random(n) < 0.05, "f_noise_a"] = np.nan  # the linear model imputes
    signal = {5: 0.02, 10: 0.3, 20: 0.0}
    for h in HORIZONS:
        end = panel.groupby("symbol")["timestamp"].shift(-h)
        panel[f"label_end_{h}"] = end
        y = signal[h] * panel["f_signal"] + rng.normal(size=n)
        panel[f"fwd_ret_{h}"] = y.where(end.notna())
    return panel


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return synthetic_panel()


@pytest.fixture(scope="module")
def rankings(panel):
    start = time.perf_counter()
    out = [rank_target(panel, f"fwd_ret_{h}", h, FEATURES, SETTINGS) for h in HORIZONS]
    elapsed = time.perf_counter() - start
    logging.getLogger(__name__).warning("rank_target x3 on %d rows: %.2f s", len(panel), elapsed)
    print(f"rank_target x3 on {len(panel)} rows: {elapsed:.2f} s")
    return out


def test_planted_target_ranks_first(rankings):
    def gbm(r):
        return r.cross_sectional.metrics["lightgbm"]["summary"]

    def symbol_auc(r):
        return float(np.mean([v.metrics["lightgbm"]["summary"]["auc"] for v in r.symbol_specific]))

    top, *others = sorted(rankings, key=lambda r: (-r.score, r.target))
    assert top.target == "fwd_ret_10" and top.score_basis == "cs_rank_ic"
    assert top.score > 0.15 and gbm(top)["rank_ic"] == top.score
    assert gbm(top)["nw_t"] > 5
    assert all(r.score < 0.1 for r in others)
    # the linear model sees the linear signal too, and the symbol views agree
    linear = top.cross_sectional.metrics["linear"]["summary"]
    assert linear["rank_ic"] > 0.15 and linear["r2_oof"] > 0.0
    assert symbol_auc(top) > 0.53 > max(symbol_auc(r) for r in others)
    assert gbm(top)["ts_rank_ic"] > 0.15 > max(abs(gbm(r)["ts_rank_ic"]) for r in others)


def test_importances_find_the_signal_feature(rankings):
    planted = next(r for r in rankings if r.target == "fwd_ret_10")
    imp = planted.cross_sectional.importances["lightgbm"]
    assert list(imp.columns) == ["feature", "importance", "rank", "share"]
    assert imp["feature"].tolist()[0] == "f_signal"
    assert imp["rank"].tolist() == [1, 2, 3]
    assert imp["importance"].is_monotonic_decreasing
    assert imp["share"].sum() == pytest.approx(1.0)
    assert imp["share"].iloc[0] > 0.5


def test_metrics_structure_both_views(rankings, panel):
    r = next(r for r in rankings if r.target == "fwd_ret_5")
    cs = r.cross_sectional
    assert (cs.view, cs.symbol) == (CROSS_SECTIONAL, None)
    assert cs.n_rows == int(panel["fwd_ret_5"].notna().sum())
    assert set(cs.metrics) == set(MODELS)
    for model in MODELS:
        assert set(cs.metrics[model]) == {"folds", "summary"}
        assert [f["fold"] for f in cs.metrics[model]["folds"]] == [0, 1, 2]
        assert {"ic", "rank_ic", "ts_rank_ic", "r2", "auc", "n_train", "n_test"} <= set(
            cs.metrics[model]["folds"][0]
        )
        summary = cs.metrics[model]["summary"]
        assert {
            "ic", "rank_ic", "icir", "rank_icir", "nw_t", "nw_lags", "n_dates", "ts_ic",
            "ts_rank_ic", "ts_rank_ic_oof", "r2_oof", "auc", "auc_oof", "score", "score_basis",
            "cs_date_share",
        } <= set(summary)  # fmt: skip
        assert summary["nw_lags"] == 4 and summary["n_rows"] == cs.n_rows
    assert sum(f["n_test"] for f in cs.metrics["lightgbm"]["folds"]) == cs.n_rows
    assert len(cs.fold_plan.folds) == 3 and cs.fold_plan.embargo == 5
    # one symbol view per symbol, each with its own folds and metrics
    syms = sorted(panel["symbol"].unique())
    assert [v.symbol for v in r.symbol_specific] == syms
    for v in r.symbol_specific:
        assert v.view == SYMBOL_SPECIFIC
        assert v.n_rows == int(panel.loc[panel["symbol"] == v.symbol, "fwd_ret_5"].notna().sum())
        assert set(v.metrics["lightgbm"]["summary"]) == {
            "ic", "rank_ic", "auc", "r2_oof", "auc_oof", "rank_ic_oof", "n_rows",
        }  # fmt: skip
        assert v.fold_plan.n_rows == v.n_rows
    # canonical-JSON-able, NaN as null
    for v in (cs, *r.symbol_specific):
        assert json.loads(canonical_json(v.metrics)).keys() == set(MODELS)


def test_thin_cross_section_scores_on_time_series_rank_ic():
    panel = synthetic_panel(n_symbols=2, n_dates=300, seed=1)
    r = rank_target(panel, "fwd_ret_10", 10, FEATURES, SETTINGS)
    noise = rank_target(panel, "fwd_ret_20", 20, FEATURES, SETTINGS)
    summary = r.cross_sectional.metrics["lightgbm"]["summary"]
    assert r.score_basis == summary["score_basis"] == "ts_rank_ic"
    assert summary["cs_date_share"] == 0.0 and summary["n_dates"] == 0
    assert r.score == summary["ts_rank_ic"] > 0.05
    assert noise.score_basis == "ts_rank_ic" and noise.score < r.score


def test_rank_target_is_deterministic(panel):
    a = rank_target(panel, "fwd_ret_20", 20, FEATURES, SETTINGS)
    b = rank_target(panel, "fwd_ret_20", 20, FEATURES, SETTINGS)
    assert canonical_json(a.cross_sectional.metrics) == canonical_json(b.cross_sectional.metrics)
    pd.testing.assert_frame_equal(
        a.cross_sectional.importances["lightgbm"], b.cross_sectional.importances["lightgbm"]
    )
    assert a.score == b.score


def test_rank_target_rejects_missing_columns(panel):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['f_missing'\]"):
        rank_target(panel, "fwd_ret_5", 5, ["f_missing"], SETTINGS)
    with pytest.raises(ValueError, match="no features"):
        rank_target(panel, "fwd_ret_5", 5, [], SETTINGS)


@pytest.mark.parametrize("large_rows", [10**9, 500])  # 500: the pooled folds one at a time
def test_folds_and_views_fitted_side_by_side_give_the_same_ranking(panel, monkeypatch, large_rows):
    import cohortflow.ranking as ranking

    one = rank_target(panel, "fwd_ret_5", 5, FEATURES, SETTINGS.replace(fold_workers=1))
    monkeypatch.setattr(ranking, "PARALLEL_MAX_ROWS", large_rows)
    two = rank_target(
        panel, "fwd_ret_5", 5, FEATURES, SETTINGS.replace(fold_workers=2, n_threads=2)
    )
    assert one.score == two.score
    for a, b in zip(
        (one.cross_sectional, *one.symbol_specific),
        (two.cross_sectional, *two.symbol_specific),
        strict=True,
    ):
        assert (a.view, a.symbol) == (b.view, b.symbol)
        assert json.dumps(a.metrics, sort_keys=True) == json.dumps(b.metrics, sort_keys=True)
        pd.testing.assert_frame_equal(
            a.importances["lightgbm"], b.importances["lightgbm"], check_exact=True
        )
