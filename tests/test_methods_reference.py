"""The methods against public implementations nobody on this project wrote (test-only
dependencies): purgedcv (purging and the AFML embargo), alphalens-reloaded (quantile returns,
rank IC, turnover), purgedcv's deflated Sharpe ratio, statsmodels' HAC t."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

purgedcv = pytest.importorskip("purgedcv")
alphalens = pytest.importorskip("alphalens")

from alphalens import performance as al_perf  # noqa: E402
from alphalens import utils as al_utils  # noqa: E402
from purgedcv import EmbargoViolationError  # noqa: E402
from purgedcv.diagnostics import (  # noqa: E402
    assert_embargo_respected,
    assert_no_temporal_leakage,
)

from cohortflow.bars import Universe, load_universe  # noqa: E402
from cohortflow.features import build_panel  # noqa: E402
from cohortflow.metrics import newey_west_lags, newey_west_t  # noqa: E402
from cohortflow.oof import default_fold_plan, labelled_rows  # noqa: E402
from cohortflow.portfolio import (  # noqa: E402
    Trials,
    deflated_sharpe,
    lead_returns,
    portfolio_report,
    quantile_labels,
)
from cohortflow.sampledata import write_sample_universe  # noqa: E402
from cohortflow.settings import Settings  # noqa: E402
from cohortflow.splits import (  # noqa: E402
    FoldDates,
    PurgedKFold,
    holdout_of,  # noqa: E402
    make_fold_plan,
    purge_and_embargo,
)
from cohortflow.synthetic import generate_frames, signal_betas  # noqa: E402

# --------------------------------------------------------------------------- purgedcv


def panel_with_gaps(horizon: int, n_dates: int = 120, calendar_days: bool = False) -> pd.DataFrame:
    """Four symbols, unequal histories, one with a 10-bar gap; label_end = the symbol's own
    bar ``horizon`` bars later (rows without one dropped, as the pipeline's labelled rows)."""
    freq = "D" if calendar_days else "B"
    dates = pd.date_range("2020-01-01", periods=n_dates, freq=freq).astype("datetime64[ns]")
    spans = {
        "AAA": np.arange(n_dates),
        "BBB": np.arange(17, n_dates),
        "CCC": np.arange(0, 97),
        "DDD": np.r_[np.arange(0, 41), np.arange(51, n_dates)],
    }
    frames = [pd.DataFrame({"timestamp": dates[i], "symbol": s}) for s, i in spans.items()]
    panel = pd.concat(frames).sort_values(["timestamp", "symbol"], kind="mergesort")
    panel["label_end"] = panel.groupby("symbol")["timestamp"].shift(-horizon)
    return panel.dropna(subset=["label_end"]).reset_index(drop=True)


def check_with_purgedcv(panel: pd.DataFrame, horizon: int, embargo: int, folds) -> int:
    """purgedcv's two assertions on every fold; returns the number of checks made.

    Leakage: training label windows [t, label_end] against test ones, closed intervals
    (purgedcv's are half-open [t, end): 1 ns on the end closes them). Embargo, per symbol on
    its own rows (its bars), positionally: after each run of the symbol's test rows, the
    next ``horizon + embargo`` of its rows must not train -- ``horizon`` rows whose labels
    end inside the test rows' windows (purged) and then ``embargo`` more (embargoed).
    """
    pred = panel["timestamp"].reset_index(drop=True)
    evalu = (panel["label_end"] + pd.Timedelta(1, "ns")).reset_index(drop=True)
    symbols = panel["symbol"].to_numpy()
    checks = 0
    for train, test in folds:
        assert_no_temporal_leakage(train, test, pred, evalu)
        for s in np.unique(symbols):
            own = np.flatnonzero(symbols == s)  # its rows in time order: its own bars
            pos = {row: i for i, row in enumerate(own)}
            tr = np.array([pos[r] for r in train if r in pos], dtype=np.int64)
            te = np.array([pos[r] for r in test if r in pos], dtype=np.int64)
            assert_embargo_respected(
                tr, te, pred[own].reset_index(drop=True), evalu[own].reset_index(drop=True),
                embargo_observations=horizon + embargo,
            )  # fmt: skip
            checks += 1
    return checks


@pytest.mark.parametrize(("horizon", "embargo"), [(2, 2), (5, 5), (5, 0), (3, 8)])
def test_purged_kfold_passes_purgedcv(horizon, embargo):
    panel = panel_with_gaps(horizon)
    ts, le = panel["timestamp"].to_numpy(), panel["label_end"].to_numpy()
    cv = PurgedKFold(n_splits=5, horizon=horizon, embargo=embargo)
    folds = list(cv.split(ts, groups=ts, label_end=le, symbols=panel["symbol"]))
    assert check_with_purgedcv(panel, horizon, embargo, folds) == 5 * 4


def test_duration_embargo_on_a_calendar_grid_passes_purgedcv():
    """On calendar days with no gaps, `embargo` bars are `embargo` days: purgedcv's
    wall-clock embargo (training prediction times within [test label end, + embargo]) holds
    over the pooled panel, and its label-window check too."""
    horizon, embargo = 4, 4
    dates = pd.date_range("2021-01-01", periods=90, freq="D").astype("datetime64[ns]")
    panel = pd.DataFrame({"timestamp": np.repeat(dates, 3), "symbol": ["A", "B", "C"] * 90})
    panel["label_end"] = panel.groupby("symbol")["timestamp"].shift(-horizon)
    panel = panel.dropna(subset=["label_end"]).reset_index(drop=True)
    ts, le = panel["timestamp"].to_numpy(), panel["label_end"].to_numpy()
    cv = PurgedKFold(n_splits=4, horizon=horizon, embargo=embargo)
    for train, test in cv.split(ts, groups=ts, label_end=le, symbols=panel["symbol"]):
        assert_no_temporal_leakage(train, test, panel["timestamp"], panel["label_end"])
        assert_embargo_respected(
            train, test, panel["timestamp"], panel["label_end"], embargo=f"{embargo}D"
        )


class EmbargoFromTestEnd(PurgedKFold):
    """The pre-issue-17 rule: the embargo counted from the last test date, inside the purge."""

    def _exclude(self, test, grid):
        purged = purge_and_embargo(test, grid, 0)
        d = np.arange(len(test))
        b = int(np.flatnonzero(test).max())
        embargoed = (d > b) & (d <= b + self.embargo_bars) & ~purged.purged
        return FoldDates(test, purged.train & ~embargoed, purged.purged, embargoed)


def test_purgedcv_catches_the_old_embargo_rule():
    horizon = 5
    panel = panel_with_gaps(horizon)
    ts, le = panel["timestamp"].to_numpy(), panel["label_end"].to_numpy()
    old = EmbargoFromTestEnd(n_splits=5, horizon=horizon, embargo=horizon)
    folds = list(old.split(ts, groups=ts, label_end=le))
    with pytest.raises(EmbargoViolationError):
        check_with_purgedcv(panel, horizon, horizon, folds)
    # embargo 0 and the old embargo of h give the same training sets: it removed nothing
    zero = PurgedKFold(n_splits=5, horizon=horizon, embargo=0)
    assert [tr.tolist() for tr, _ in folds] == [
        tr.tolist() for tr, _ in zero.split(ts, groups=ts, label_end=le)
    ]


@pytest.fixture(scope="module")
def demo_panel(tmp_path_factory):
    settings = Settings()
    data = tmp_path_factory.mktemp("sample")
    write_sample_universe(data)
    universe = load_universe(data, settings)
    return build_panel(universe, settings).frame, settings


def test_the_demo_fold_plans_pass_purgedcv(demo_panel):
    """The six fold plans of the demo (per target: the ranking plan over every labelled
    row, the OOF plan over the training window), with the default embargo (h bars)."""
    frame, settings = demo_panel
    sizes = {}
    for h in settings.horizons:
        target = f"fwd_ret_{h}"
        labelled = labelled_rows(frame, target, h)
        train = holdout_of(frame, h, settings.test_fraction, settings.embargo_for(h)).train
        for name, rows in (("ranking", labelled), ("oof", labelled_rows(train, target, h))):
            rows = rows.rename(columns={f"label_end_{h}": "label_end"})
            plan = make_fold_plan(
                PurgedKFold(settings.n_splits, h, settings.embargo_for(h)),
                rows["timestamp"].to_numpy(),
                rows["label_end"].to_numpy(),
                rows["symbol"],
            )
            folds = [(f.train_idx, f.test_idx) for f in plan.folds]
            check_with_purgedcv(rows, h, settings.embargo_for(h), folds)
            sizes[(name, h)] = [f.train_idx.size for f in plan.folds]
    # the issue's numbers: fwd_ret_20's OOF folds trained on [7357, 7297, 6894, 6758, 6838]
    # rows with embargo 0 and 20 alike; now the embargo takes 4 x 20 dates x 4 symbols
    assert sizes[("oof", 20)] == [7297, 7237, 6814, 6678, 6838]
    train = holdout_of(frame, 20, settings.test_fraction, settings.embargo_for(20)).train
    oof = labelled_rows(train, "fwd_ret_20", 20)
    assert [f.train_idx.size for f in default_fold_plan(oof, 20, settings).folds] == sizes[
        ("oof", 20)
    ]


# --------------------------------------------------------------------------- alphalens

H = 5


@pytest.fixture(scope="module")
def known_signal():
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
        }
    )
    return frame, preds


def test_portfolio_matches_alphalens(known_signal):
    frame, preds = known_signal
    leads = lead_returns(frame, H)
    doc = portfolio_report(preds, leads, H, quantiles=5)
    idx = pd.MultiIndex.from_arrays(
        [pd.DatetimeIndex(preds["timestamp"]), preds["symbol"]], names=["date", "asset"]
    )
    factor = pd.Series(preds["pred_stack"].to_numpy(), index=idx)
    joined = preds.merge(leads, on=["timestamp", "symbol"], how="left")
    # alphalens reads forward returns from columns named like periods: the single-bar
    # return k bars ahead as "kD", the h-bar target as one more column
    fwd = pd.DataFrame(
        {f"{k}D": joined[f"ret_lead_{k}"].to_numpy() for k in range(1, H + 1)}, index=idx
    )
    fwd["99D"] = preds["y_true"].to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = al_utils.get_clean_factor(factor, fwd, quantiles=5, max_loss=0.0)
        by_date, _ = al_perf.mean_return_by_quantile(data, by_date=True, demeaned=False)
        ic = al_perf.factor_information_coefficient(data)
        turnover = al_perf.quantile_turnover(data["factor_quantile"], 5, period=H)
    assert len(data) == len(preds)
    np.testing.assert_array_equal(
        quantile_labels(preds["timestamp"], preds["pred_stack"], 5),
        data["factor_quantile"].to_numpy(),
    )
    expected = by_date["99D"].groupby(level="factor_quantile").mean().to_numpy()
    np.testing.assert_allclose(doc["mean_return_by_quantile"], expected, rtol=1e-10)
    np.testing.assert_allclose(
        [x["rank_ic"] for x in doc["ic_decay"]],
        ic[[f"{k}D" for k in range(1, H + 1)]].mean().to_numpy(),
        rtol=1e-10,
        atol=1e-12,
    )
    assert doc["turnover"]["top_quantile"] == pytest.approx(turnover.mean(), rel=1e-10)


# --------------------------------------------------------------------------- DSR and HAC t


def test_deflated_sharpe_matches_purgedcv():
    rng = np.random.default_rng(7)
    r = 0.003 + 0.02 * rng.standard_t(5, 160)  # fat tails: skewness and kurtosis matter
    periods = 50.4
    for n_trials, var_annual in ((1, 0.0), (10, 0.8), (200, 2.0)):
        ours = deflated_sharpe(r, periods, Trials(n_trials, var_annual))
        theirs = purgedcv.deflated_sharpe_ratio_full(r, n_trials, var_annual / periods)
        assert ours["probability"] == pytest.approx(theirs.dsr, rel=1e-10, abs=1e-12)
        assert ours["sharpe"] == pytest.approx(theirs.observed_sr, rel=1e-12)
        assert ours["expected_max_sharpe"] == pytest.approx(theirs.sr_star, rel=1e-9, abs=1e-15)
        assert ours["skewness"] == pytest.approx(theirs.skew, rel=1e-10)
        assert ours["kurtosis"] == pytest.approx(theirs.kurt, rel=1e-10)


def test_newey_west_t_matches_statsmodels_hac_with_the_lag_rule():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(3)
    x = 0.02 + np.convolve(rng.normal(size=400), np.ones(10) / 10, mode="valid")
    for h in (1, 5, 20):
        lags = newey_west_lags(h)
        fit = sm.OLS(x, np.ones_like(x)).fit(
            cov_type="HAC", cov_kwds={"maxlags": lags, "use_correction": False}
        )
        assert newey_west_t(x, lags) == pytest.approx(float(fit.tvalues[0]), rel=1e-12)
    assert math.isfinite(newey_west_t(x, newey_west_lags(20)))
