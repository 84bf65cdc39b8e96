"""portfolio.json: hand-computed numbers, a planted signal that earns a clearly positive and
deflated-significant long-short Sharpe, noise that does not, the paper's DSR example, and
deterministic output. (alphalens and purgedcv cross-checks: test_methods_reference.py.)"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohortflow.bars import Universe
from cohortflow.canonical import canonical_json, normalize
from cohortflow.features import build_panel
from cohortflow.plots import portfolio_plot
from cohortflow.portfolio import (
    Trials,
    deflated_sharpe,
    dsr_probability,
    expected_max_sharpe_z,
    infer_bars_per_year,
    lead_returns,
    portfolio_report,
    quantile_labels,
    with_trials,
)
from cohortflow.settings import Settings
from cohortflow.synthetic import generate_frames, signal_betas

# --------------------------------------------------------------------------- quantiles


def test_quantile_labels_follow_qcut_edges_per_date():
    ts = np.repeat(pd.to_datetime(["2021-01-04", "2021-01-05", "2021-01-06"]).to_numpy(), 4)
    values = np.array([4.0, 1.0, 3.0, 2.0, 0.5, -1.0, np.nan, np.nan, 7.0, np.nan, np.nan, np.nan])
    # four names, five quantiles: 0-based ranks 0..3 -> ceil(i * 5 / 3) -> 1, 2, 4, 5
    # two names: the ends; one name: no cross-section (0); NaN: 0
    expected = [5, 1, 4, 2, 5, 1, 0, 0, 0, 0, 0, 0]
    np.testing.assert_array_equal(quantile_labels(ts, values, 5), expected)
    np.testing.assert_array_equal(quantile_labels(ts[:4], values[:4], 2), [2, 1, 2, 1])
    with pytest.raises(ValueError, match="quantiles must be >= 2"):
        quantile_labels(ts, values, 1)


# --------------------------------------------------------------------------- hand example

DATES = pd.bdate_range("2021-01-04", periods=4)
SYMBOLS = ["A", "B", "C", "D"]


def hand_predictions() -> pd.DataFrame:
    """4 dates x 4 names; prediction order A < B < C < D except on date 2 (reversed)."""
    pred = [[1, 2, 3, 4], [1, 2, 3, 4], [4, 3, 2, 1], [1, 2, 3, 4]]
    y = [
        [-0.02, 0.00, 0.01, 0.03],  # bottom (A, B) -0.01, top (C, D) 0.02: spread 0.03
        [0.01, -0.01, 0.02, 0.00],  # bottom 0.00, top 0.01: 0.01
        [0.04, 0.02, 0.00, -0.02],  # bottom (D, C) -0.01, top (B, A) 0.03: 0.04
        [0.00, 0.00, 0.02, 0.02],  # bottom 0.00, top 0.02: 0.02
    ]
    return pd.DataFrame(
        {
            "timestamp": np.repeat(DATES.to_numpy(), 4),
            "symbol": SYMBOLS * 4,
            "y_true": np.ravel(y),
            "pred_stack": np.ravel(pred).astype(float),
        }
    )


def test_report_on_a_hand_example():
    preds = hand_predictions()
    leads = preds[["timestamp", "symbol"]].assign(
        ret_lead_1=preds["pred_stack"], ret_lead_2=-preds["pred_stack"]
    )
    doc = portfolio_report(preds, leads, horizon=2, bars_per_year=252, quantiles=2)
    assert doc["mean_return_by_quantile"] == [-0.005, 0.02]
    assert doc["quantile_dates"] == [4, 4]
    ls = doc["long_short"]
    # non-overlapping 2-bar periods: dates 0 and 2 -> spreads 0.03 and 0.04
    assert ls["series"] == [["2021-01-04T00:00:00", 0.03], ["2021-01-06T00:00:00", 0.04]]
    assert ls["mean"] == pytest.approx(0.035)
    assert ls["std"] == pytest.approx(0.01 / math.sqrt(2))
    assert ls["sharpe"] == pytest.approx(0.035 / (0.01 / math.sqrt(2)))
    assert ls["sharpe_annualized"] == pytest.approx(ls["sharpe"] * math.sqrt(252 / 2))
    assert ls["t_stat"] == pytest.approx(ls["sharpe"] * math.sqrt(2))
    assert (ls["n_periods"], ls["n_dates"], ls["nw_lags"]) == (2, 4, 1)
    # top names: {C, D}, {C, D}, {A, B}, {C, D}; 2 bars apart: all new, then none new
    assert doc["turnover"] == {"top_quantile": 0.5, "lag_bars": 2, "n_dates": 2}
    assert doc["ic_decay"] == [
        {"lead": 1, "rank_ic": 1.0, "n_dates": 4},
        {"lead": 2, "rank_ic": -1.0, "n_dates": 4},
    ]
    assert doc["deflated_sharpe"]["probability"] is None  # 2 periods: too few
    assert (doc["bars_per_year"], doc["bars_per_year_source"]) == (252.0, "given")
    assert (doc["n_dates"], doc["n_rows"], doc["n_symbols"], doc["horizon"]) == (4, 16, 4, 2)
    assert doc == normalize(doc)  # plain JSON types, 12 significant digits


def test_report_refuses_bad_input():
    preds = hand_predictions()
    with pytest.raises(ValueError, match=r"lack column\(s\) \['pred_stack'\]"):
        portfolio_report(preds.drop(columns="pred_stack"), None, 2)
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        portfolio_report(preds, None, 0)
    with pytest.raises(ValueError, match=r"lead returns lack column\(s\) \['ret_lead_2'\]"):
        portfolio_report(preds, preds[["timestamp", "symbol"]].assign(ret_lead_1=0.0), 2)
    with pytest.raises(ValueError, match="no prediction with a finite y_true"):
        portfolio_report(preds.assign(y_true=np.nan), None, 2)


# --------------------------------------------------------------------------- a known signal

H = 5


@pytest.fixture(scope="module")
def synthetic_test_period():
    """12 symbols x 1000 bars, signals at H = 5; the held-out period is the last 20 % of the
    dates. The predictor is the planted signal itself (its betas as weights)."""
    frames, _ = generate_frames(
        n_symbols=12, n_bars=1000, signal_horizon=H, seed=2, with_ohlcv=False, with_leaks=False
    )
    universe = Universe(
        symbols=tuple(sorted(frames)), files=(), bars=frames, skipped=(), data_dir=Path("/x")
    )
    frame = build_panel(universe, Settings(horizons=(H,))).frame
    b = signal_betas(H)
    dates = np.unique(frame["timestamp"])
    test = frame[
        (frame["timestamp"] >= dates[int(0.8 * len(dates))]) & frame[f"fwd_ret_{H}"].notna()
    ]
    preds = pd.DataFrame(
        {
            "timestamp": test["timestamp"].to_numpy(),
            "symbol": test["symbol"].astype(str).to_numpy(),
            "y_true": test[f"fwd_ret_{H}"].to_numpy(),
            "pred_stack": (b[0] * test["sig_a"] + b[1] * test["sig_b"]).to_numpy(),
            "pred_noise": test["noise_03"].to_numpy(),
        }
    )
    return frame, preds


def test_planted_signal_earns_a_clearly_positive_deflated_sharpe(synthetic_test_period):
    frame, preds = synthetic_test_period
    doc = portfolio_report(preds, lead_returns(frame, H), H, trials=Trials(3, 0.5))
    means = doc["mean_return_by_quantile"]
    assert means == sorted(means) and means[0] < 0 < means[-1]  # monotone in the quantile
    ls = doc["long_short"]
    assert ls["sharpe_annualized"] > 2.5 and ls["t_stat"] > 2.5 and ls["nw_t_stat"] > 5
    assert ls["n_periods"] == math.ceil(doc["n_dates"] / H)
    dsr = doc["deflated_sharpe"]
    assert dsr["variance_source"] == "trials" and dsr["n_trials"] == 3
    assert dsr["expected_max_sharpe_annualized"] == pytest.approx(
        math.sqrt(0.5) * expected_max_sharpe_z(3), rel=1e-9
    )
    assert dsr["probability"] > 0.95
    # the signal lands on the single bar H bars ahead: IC decay is flat, then one spike
    decay = [x["rank_ic"] for x in doc["ic_decay"]]
    assert decay[H - 1] > 0.3 and max(abs(x) for x in decay[: H - 1]) < 0.05
    assert 0.0 < doc["turnover"]["top_quantile"] < 1.0
    assert doc["bars_per_year"] == pytest.approx(261, abs=1)  # business days, no holidays
    # the same inputs give the same bytes
    again = portfolio_report(preds, lead_returns(frame, H), H, trials=Trials(3, 0.5))
    assert canonical_json(again) == canonical_json(doc)


def test_noise_earns_nothing_and_deflation_bites(synthetic_test_period):
    frame, preds = synthetic_test_period
    doc = portfolio_report(preds, None, H, pred_col="pred_noise", trials=Trials(20))
    assert abs(doc["long_short"]["sharpe_annualized"]) < 1.5
    assert doc["ic_decay"] is None
    dsr = doc["deflated_sharpe"]
    # 20 trials, no variance given: the estimator's own sampling variance stands in
    assert dsr["variance_source"] == "estimator" and dsr["expected_max_sharpe"] > 0
    assert dsr["probability"] < 0.5


def test_lead_returns_are_each_symbols_next_bars(synthetic_test_period):
    frame, _ = synthetic_test_period
    leads = lead_returns(frame, 3)
    one = frame[frame["symbol"] == "SYN04"]
    close_ratio = np.exp(one["ret_1"].to_numpy())  # close[t] / close[t-1]
    got = leads[leads["symbol"] == "SYN04"]
    for k in (1, 3):
        expected = np.r_[close_ratio[k:] - 1.0, np.full(k, np.nan)]
        np.testing.assert_allclose(got[f"ret_lead_{k}"].to_numpy(), expected, rtol=1e-12)


# --------------------------------------------------------------------------- DSR


def test_dsr_reproduces_bailey_and_lopez_de_prado_2014():
    """The paper's numerical example: annualised SR 2.5 from 1250 daily returns, skewness -3,
    kurtosis 10, 100 trials whose annualised Sharpe ratios vary by 0.5: SR0 = 0.1132 (daily),
    DSR = 0.9004."""
    sr0 = math.sqrt(0.5 / 250) * expected_max_sharpe_z(100)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    assert dsr_probability(2.5 / math.sqrt(250), 1250, -3.0, 10.0, sr0) == pytest.approx(
        0.9004, abs=5e-5
    )


def test_dsr_with_one_trial_is_the_probabilistic_sharpe_against_zero():
    rng = np.random.default_rng(1)
    r = 0.002 + 0.01 * rng.standard_normal(300)
    one = deflated_sharpe(r, 52.0)
    assert (one["n_trials"], one["variance_source"], one["expected_max_sharpe"]) == (
        1,
        "single_trial",
        0.0,
    )
    sr = r.mean() / r.std()
    assert one["sharpe"] == pytest.approx(sr)
    assert one["probability"] == pytest.approx(
        dsr_probability(sr, 300, one["skewness"], one["kurtosis"], 0.0)
    )
    many = deflated_sharpe(r, 52.0, Trials(50, 1.0))
    assert many["probability"] < one["probability"]
    assert expected_max_sharpe_z(1) == 0.0 and expected_max_sharpe_z(1000) > 3.0


def test_trials():
    t = Trials.from_sharpes([1.0, 2.0, np.nan, 3.0, None])  # undefined ones still count
    assert (t.n, t.sharpe_variance) == (5, pytest.approx(1.0))
    assert Trials.from_sharpes([1.5]) == Trials(1, None)
    assert Trials.from_sharpes([None, None, 0.5]) == Trials(3, None)
    with pytest.raises(ValueError, match="integer >= 1"):
        Trials(0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        Trials(3, -1.0)
    with pytest.raises(ValueError, match="no trial given"):
        Trials.from_sharpes([])


def test_infer_bars_per_year():
    assert infer_bars_per_year(pd.bdate_range("2020-01-01", "2021-12-31")) == pytest.approx(
        261, abs=0.5
    )
    with pytest.raises(ValueError, match="at least two dates"):
        infer_bars_per_year(pd.to_datetime(["2020-01-01"]))


# --------------------------------------------------------------------------- plot


def test_portfolio_plot_is_a_stable_png(synthetic_test_period):
    frame, preds = synthetic_test_period
    doc = portfolio_report(preds, lead_returns(frame, H), H)
    png = portfolio_plot(doc, "fwd_ret_5")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert portfolio_plot(doc, "fwd_ret_5") == png
    assert portfolio_plot(doc, "fwd_ret_10") != png  # the title names the target
    noise = portfolio_report(preds, None, H, pred_col="pred_noise")
    assert portfolio_plot(noise, "fwd_ret_5") != png


def test_with_trials_redeflates_from_the_recorded_periods(synthetic_test_period):
    frame, preds = synthetic_test_period
    leads = lead_returns(frame, H)
    alone = portfolio_report(preds, leads, H)
    trials = Trials.from_sharpes([alone["long_short"]["sharpe_annualized"], 0.3, -0.5, 1.1])
    later = with_trials(alone, trials)
    assert later == portfolio_report(preds, leads, H, trials=trials)  # the same document
    assert later["deflated_sharpe"]["n_trials"] == 4
    assert later["deflated_sharpe"]["probability"] < alone["deflated_sharpe"]["probability"]


def test_a_constant_prediction_forms_no_long_short():
    """What the demo's stack does when its meta-learner shrinks every weight to 0."""
    preds = hand_predictions().assign(pred_stack=0.0035)
    doc = portfolio_report(preds, None, horizon=2, bars_per_year=252)
    assert doc["mean_return_by_quantile"][2] == pytest.approx(preds["y_true"].mean())
    assert [m for k, m in enumerate(doc["mean_return_by_quantile"]) if k != 2] == [None] * 4
    ls = doc["long_short"]
    assert (ls["n_periods"], ls["sharpe_annualized"], ls["series"]) == (0, None, [])
    assert "constant" in ls["note"]
    assert doc["deflated_sharpe"]["probability"] is None
    assert doc["turnover"]["top_quantile"] is None
    assert portfolio_plot(doc, "fwd_ret_2").startswith(b"\x89PNG")
