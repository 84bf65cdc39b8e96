"""Portfolio evaluation of held-out predictions: what a factor researcher reads.

From the stack's predictions on the held-out period (``stacking/test_predictions.parquet``:
``timestamp``, ``symbol``, ``y_true`` = the realised ``fwd_ret_h``, ``pred_stack``) and the
single-bar returns ahead of each row, :func:`portfolio_report` builds the
``portfolio.json`` document:

- ``quantiles``: Q groups formed on each date by the rank of the prediction (1 = lowest),
  with the edges of ``pandas.qcut`` (alphalens' ``quantize_factor``): the row of 0-based
  rank ``i`` among ``N`` names goes to ``max(1, ceil(i * Q / (N - 1)))``. With fewer names
  than Q some quantiles stay empty on a date; dates with one name form none.
- ``mean_return_by_quantile``: per quantile, the mean over dates of the equal-weight mean
  ``y_true`` of its names (an h-bar return, not demeaned).
- ``long_short``: top minus bottom quantile. The h-bar returns overlap from one date to the
  next, so the Sharpe ratio and its t use non-overlapping periods: the dates at positions
  0, h, 2h, ... of the held-out dates (one rebalance every h bars); ``sharpe_annualized =
  mean / std * sqrt(bars_per_year / h)``. ``nw_t_stat`` uses every date instead, with a
  Newey-West error (:func:`cohortflow.metrics.newey_west_lags`).
- ``turnover``: the top quantile's mean fraction of names not in it h bars earlier (one
  rebalance), as alphalens' ``quantile_turnover(..., period=h)``.
- ``ic_decay``: the mean per-date rank IC of the prediction with the single-bar return k
  bars ahead, k = 1..h (how fast the signal is used up).
- ``deflated_sharpe``: Bailey and López de Prado (2014) on the non-overlapping long-short
  returns, deflated for the number of trials (:class:`Trials`).

Everything is vectorised over rows (one rank sort, group-by sums); the output is plain
floats normalised through :func:`cohortflow.canonical.normalize`, so the same inputs give
the same bytes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from cohortflow.canonical import normalize
from cohortflow.leakage import average_ranks
from cohortflow.metrics import forward_bar_returns, ic_by_date, newey_west_lags, newey_west_t

log = logging.getLogger(__name__)

__all__ = [
    "PORTFOLIO_SCHEMA",
    "Trials",
    "deflated_sharpe",
    "dsr_probability",
    "expected_max_sharpe_z",
    "infer_bars_per_year",
    "lead_returns",
    "portfolio_report",
    "portfolio_summary",
    "quantile_labels",
    "with_trials",
]

PORTFOLIO_SCHEMA = "1.0"
DEFAULT_QUANTILES = 5
EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()
DAYS_PER_YEAR = 365.25


def lead_column(k: int) -> str:
    return f"ret_lead_{int(k)}"


# --------------------------------------------------------------------------- inputs


def lead_returns(panel_frame: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """The single-bar simple returns 1..``horizon`` bars ahead of every panel row.

    Columns ``timestamp``, ``symbol`` (str), ``ret_lead_1`` .. ``ret_lead_{horizon}``: for a
    row of symbol s at its bar t, ``close[t+k] / close[t+k-1] - 1`` of s (its own bars),
    from the panel's ``ret_1`` (the 1-bar log return; the panel holds every bar of a symbol
    after its warm-up, so the k-th next row is the k-th next bar). NaN past a symbol's last
    bar. Pass the whole panel, not the test rows: the bars after the test period's last
    date are what its last leads need.
    """
    if "ret_1" not in panel_frame.columns:
        raise ValueError("lead returns need the panel's ret_1 column (1-bar log returns)")
    h = int(horizon)
    if h < 1:
        raise ValueError(f"horizon must be >= 1 bar, got {horizon}")
    ts = panel_frame["timestamp"].to_numpy(dtype="datetime64[ns]")
    symbols = panel_frame["symbol"].astype(str).to_numpy()
    fwd = forward_bar_returns(
        ts, symbols, np.expm1(panel_frame["ret_1"].to_numpy(np.float64)), range(1, h + 1)
    )
    out = pd.DataFrame({"timestamp": ts, "symbol": symbols})
    for k in range(1, h + 1):
        out[lead_column(k)] = fwd[:, k - 1]
    return out


def infer_bars_per_year(timestamps: Any) -> float:
    """Bars per year of a bar series: (distinct dates - 1) / years spanned (365.25 days).

    252-ish for daily bars, whatever the weekends and holidays. Needs two dates at least.
    """
    ts = np.unique(np.asarray(timestamps, dtype="datetime64[ns]"))
    if ts.size < 2:
        raise ValueError("need at least two dates to infer the bar frequency")
    years = (ts[-1] - ts[0]) / np.timedelta64(1, "D") / DAYS_PER_YEAR
    return float((ts.size - 1) / years)


def quantile_labels(timestamps: Any, values: Any, quantiles: int = DEFAULT_QUANTILES) -> np.ndarray:
    """Per row, its quantile 1..``quantiles`` among the rows of its date, by rank of value.

    ``max(1, ceil(i * Q / (N - 1)))`` for the 0-based average rank ``i`` among the date's
    ``N`` finite values: the bins of ``pandas.qcut`` on distinct values. 0 where the value
    is NaN or the date has a single finite value (no cross-section to split).
    """
    q = int(quantiles)
    if q < 2:
        raise ValueError(f"quantiles must be >= 2, got {quantiles}")
    v = np.asarray(values, dtype=np.float64)
    codes = pd.factorize(np.asarray(timestamps), sort=True)[0]
    ranks = average_ranks(v, codes)  # NaN where v is NaN
    ok = np.isfinite(ranks)
    n = np.bincount(codes[ok], minlength=codes.max() + 1 if codes.size else 0)[codes]
    out = np.zeros(v.size, dtype=np.int64)
    many = ok & (n >= 2)
    i = ranks[many] - 1.0
    # the small epsilon keeps i * Q / (N - 1) that is an exact integer from rounding up
    out[many] = np.maximum(1, np.ceil(i * q / (n[many] - 1.0) - 1e-9)).astype(np.int64)
    return out


# --------------------------------------------------------------------------- trials and DSR


@dataclass(frozen=True)
class Trials:
    """The trials a reported Sharpe ratio was chosen from (targets x attempts of a batch).

    ``sharpe_variance``: the variance of the trials' *annualised* Sharpe ratios (comparable
    across horizons; converted to this strategy's period). None: unknown. With one trial no
    deflation applies; with several and no variance, the sampling variance of this
    strategy's own Sharpe estimate stands in (the spread of N trials that are all noise).
    """

    n: int = 1
    sharpe_variance: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or int(self.n) != self.n or self.n < 1:
            raise ValueError(f"the number of trials must be an integer >= 1, got {self.n!r}")
        object.__setattr__(self, "n", int(self.n))
        if self.sharpe_variance is not None:
            var = float(self.sharpe_variance)
            if not math.isfinite(var) or var < 0:
                raise ValueError(f"sharpe_variance must be finite and >= 0, got {var}")
            object.__setattr__(self, "sharpe_variance", var)

    @classmethod
    def from_sharpes(cls, sharpes_annualized: Sequence[float | None]) -> Trials:
        """Trials from their annualised Sharpe ratios: n counts every trial (one whose
        Sharpe is undefined -- None or NaN -- was still tried), the variance (ddof 1) uses the
        defined ones (None with fewer than two)."""
        values = list(sharpes_annualized)
        if not values:
            raise ValueError("no trial given")
        s = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
        s = s[np.isfinite(s)]
        return cls(len(values), float(np.var(s, ddof=1)) if s.size > 1 else None)


def expected_max_sharpe_z(n_trials: int) -> float:
    """E[max of n independent N(0, 1)] (Bailey and López de Prado's approximation).

    ``(1 - g) * Phi^-1(1 - 1/n) + g * Phi^-1(1 - 1/(n e))``, g the Euler-Mascheroni
    constant; 0 for a single trial (nothing was selected).
    """
    n = int(n_trials)
    if n <= 1:
        return 0.0
    return (1.0 - EULER_GAMMA) * _NORMAL.inv_cdf(1.0 - 1.0 / n) + EULER_GAMMA * _NORMAL.inv_cdf(
        1.0 - 1.0 / (n * math.e)
    )


def _moments(returns: np.ndarray) -> tuple[float, float, float]:
    """(Sharpe with ddof 0, skewness, kurtosis -- not excess -- both bias-corrected, as
    scipy.stats.skew/kurtosis(bias=False))."""
    n = returns.size
    mean = float(returns.mean())
    d = returns - mean
    m2 = float(d @ d) / n
    sd = math.sqrt(m2)
    m3 = float(np.mean(d**3))
    m4 = float(np.mean(d**4))
    g1 = m3 / m2**1.5
    g2 = m4 / m2**2 - 3.0
    skew = g1 * math.sqrt(n * (n - 1.0)) / (n - 2.0)
    excess = ((n + 1.0) * g2 + 6.0) * (n - 1.0) / ((n - 2.0) * (n - 3.0))
    return mean / sd, skew, excess + 3.0


def deflated_sharpe(
    returns: Any, periods_per_year: float, trials: Trials | None = None
) -> dict[str, Any]:
    """The deflated Sharpe ratio of per-period returns (Bailey and López de Prado 2014).

    ``DSR = Phi((SR - SR0) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2))`` with SR the
    per-period Sharpe ratio (standard deviation with ddof 0), g3 / g4 the skewness and
    kurtosis of the T returns, and SR0 the expected maximum Sharpe ratio of the trials
    under the null: ``sqrt(V) * expected_max_sharpe_z(N)``, V the trials' per-period Sharpe
    variance (``Trials.sharpe_variance / periods_per_year``). ``probability`` is None with
    fewer than 4 returns or no spread.
    """
    trials = trials or Trials()
    r = np.asarray(returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    t = int(r.size)
    out: dict[str, Any] = {
        "probability": None,
        "n_periods": t,
        "n_trials": trials.n,
        "periods_per_year": float(periods_per_year),
    }
    if t < 4 or not float(np.ptp(r)) > 0:
        out["reason"] = "fewer than 4 periods or no spread"
        return out
    sr, skew, kurt = _moments(r)
    denom = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr * sr
    if trials.n <= 1:
        var, source = 0.0, "single_trial"
    elif trials.sharpe_variance is not None:
        var, source = trials.sharpe_variance / periods_per_year, "trials"
    else:
        var, source = max(denom, 0.0) / (t - 1.0), "estimator"
    sr0 = math.sqrt(var) * expected_max_sharpe_z(trials.n)
    ann = math.sqrt(periods_per_year)
    out.update(
        {
            "sharpe": sr,
            "sharpe_annualized": sr * ann,
            "expected_max_sharpe": sr0,
            "expected_max_sharpe_annualized": sr0 * ann,
            "trials_sharpe_variance_annualized": var * periods_per_year,
            "variance_source": source,
            "skewness": skew,
            "kurtosis": kurt,
        }
    )
    out["probability"] = dsr_probability(sr, t, skew, kurt, sr0)
    if out["probability"] is None:
        out["reason"] = "non-positive variance term (moments too extreme)"
    return out


def dsr_probability(
    sharpe: float, n_periods: int, skewness: float, kurtosis: float, benchmark: float
) -> float | None:
    """P(true Sharpe > ``benchmark``) given a per-period Sharpe ratio estimated from
    ``n_periods`` returns with these skewness and kurtosis (not excess): the probabilistic
    Sharpe ratio, which with ``benchmark`` = the expected maximum of the trials is the DSR.
    None where ``1 - g3 SR + (g4 - 1) / 4 SR^2`` is not positive."""
    denom = 1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe * sharpe
    if not denom > 0 or n_periods < 2:
        return None
    return _NORMAL.cdf((sharpe - benchmark) * math.sqrt(n_periods - 1.0) / math.sqrt(denom))


# --------------------------------------------------------------------------- the report


def _date_means(codes: np.ndarray, quantile: np.ndarray, y: np.ndarray, q: int, n_dates: int):
    """(dates x quantiles) equal-weight mean of ``y`` per date and quantile (NaN if empty)."""
    key = codes * q + (quantile - 1)
    keep = quantile > 0
    sums = np.bincount(key[keep], y[keep], minlength=n_dates * q).reshape(n_dates, q)
    counts = np.bincount(key[keep], minlength=n_dates * q).reshape(n_dates, q)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts, counts


def _turnover(codes: np.ndarray, symbols: np.ndarray, top: np.ndarray, lag: int, n_dates: int):
    """Mean over dates d >= lag of |S_d - S_{d-lag}| / |S_d|, S_d the top quantile's names."""
    sym_codes = pd.factorize(symbols, sort=True)[0]
    member = np.zeros((n_dates, int(sym_codes.max()) + 1 if sym_codes.size else 0), dtype=bool)
    member[codes[top], sym_codes[top]] = True
    if n_dates <= lag:
        return None, 0
    now, before = member[lag:], member[:-lag]
    size = now.sum(axis=1)
    new = (now & ~before).sum(axis=1)
    ok = (size > 0) & (before.sum(axis=1) > 0)
    if not ok.any():
        return None, 0
    return float(np.mean(new[ok] / size[ok])), int(ok.sum())


def portfolio_report(
    predictions: pd.DataFrame,
    leads: pd.DataFrame | None,
    horizon: int,
    *,
    bars_per_year: float | None = None,
    quantiles: int = DEFAULT_QUANTILES,
    trials: Trials | None = None,
    pred_col: str = "pred_stack",
) -> dict[str, Any]:
    """The ``portfolio.json`` document of held-out predictions (module docstring).

    ``predictions``: ``timestamp``, ``symbol``, ``y_true`` (the realised h-bar return) and
    ``pred_col``; rows with either NaN are left out. ``leads``: :func:`lead_returns` of the
    panel (any frame with ``timestamp``, ``symbol``, ``ret_lead_1..h``), joined on
    (timestamp, symbol); None skips ``ic_decay``. ``horizon``: h in bars.
    ``bars_per_year``: the bar frequency; None infers it from the prediction dates
    (:func:`infer_bars_per_year`). ``trials``: for the deflated Sharpe ratio (default: one).
    Returns plain JSON types, normalised (12 significant digits).
    """
    h = int(horizon)
    if h < 1:
        raise ValueError(f"horizon must be >= 1 bar, got {horizon}")
    q = int(quantiles)
    missing = [c for c in ("timestamp", "symbol", "y_true", pred_col) if c not in predictions]
    if missing:
        raise ValueError(f"predictions lack column(s) {missing}")
    frame = predictions[["timestamp", "symbol", "y_true", pred_col]].copy()
    frame["timestamp"] = frame["timestamp"].astype("datetime64[ns]")
    frame["symbol"] = frame["symbol"].astype(str)
    y_all = frame["y_true"].to_numpy(np.float64)
    p_all = frame[pred_col].to_numpy(np.float64)
    frame = frame.loc[np.isfinite(y_all) & np.isfinite(p_all)].reset_index(drop=True)
    if frame.empty:
        raise ValueError("no prediction with a finite y_true")
    ts = frame["timestamp"].to_numpy()
    dates, codes = np.unique(ts, return_inverse=True)
    n_dates = dates.size
    if bars_per_year is None:
        bpy, bpy_source = infer_bars_per_year(dates), "inferred"
    else:
        bpy, bpy_source = float(bars_per_year), "given"
        if not bpy > 0:
            raise ValueError(f"bars_per_year must be > 0, got {bars_per_year}")
    # rounded as the document records them, so with_trials() on the document reproduces it
    bpy = normalize(bpy)
    periods_per_year = normalize(bpy / h)
    y = frame["y_true"].to_numpy(np.float64)
    pred = frame[pred_col].to_numpy(np.float64)
    quantile = quantile_labels(ts, pred, q)

    means, counts = _date_means(codes, quantile, y, q, n_dates)
    by_quantile = [
        float(np.nanmean(means[:, k])) if np.isfinite(means[:, k]).any() else None for k in range(q)
    ]

    spread = means[:, q - 1] - means[:, 0]  # per date; NaN where a side is empty
    periods = np.arange(0, n_dates, h)  # one rebalance every h bars: non-overlapping
    ls = spread[periods]
    ok = np.isfinite(ls)
    ls_dates, ls = dates[periods][ok], ls[ok]
    n_p = int(ls.size)
    mean = float(ls.mean()) if n_p else None
    std = float(ls.std(ddof=1)) if n_p > 1 else None
    sharpe = mean / std if std else None
    long_short = {
        "note": None
        if n_p
        else "no date with both a top and a bottom quantile (the prediction is constant "
        "within dates): no long-short portfolio",
        "mean": mean,
        "std": std,
        "n_periods": n_p,
        "sharpe": sharpe,
        "sharpe_annualized": sharpe * math.sqrt(periods_per_year) if sharpe is not None else None,
        "t_stat": sharpe * math.sqrt(n_p) if sharpe is not None else None,
        "nw_t_stat": newey_west_t(spread[np.isfinite(spread)], newey_west_lags(h)),
        "nw_lags": newey_west_lags(h),
        "n_dates": int(np.isfinite(spread).sum()),
        "series": [
            [pd.Timestamp(d).isoformat(), float(v)] for d, v in zip(ls_dates, ls, strict=True)
        ],
    }

    turnover, n_turn = _turnover(codes, frame["symbol"].to_numpy(), quantile == q, h, n_dates)

    doc: dict[str, Any] = {
        "schema": PORTFOLIO_SCHEMA,
        "prediction": pred_col,
        "horizon": h,
        "bars_per_year": bpy,
        "bars_per_year_source": bpy_source,
        "periods_per_year": periods_per_year,
        "first": pd.Timestamp(dates[0]).isoformat(),
        "last": pd.Timestamp(dates[-1]).isoformat(),
        "n_dates": int(n_dates),
        "n_rows": len(frame),
        "n_symbols": int(frame["symbol"].nunique()),
        "quantiles": q,
        "mean_return_by_quantile": by_quantile,
        "quantile_dates": [int((counts[:, k] > 0).sum()) for k in range(q)],
        "long_short": long_short,
        "turnover": {"top_quantile": turnover, "lag_bars": h, "n_dates": n_turn},
        "ic_decay": _ic_decay(frame, leads, h, pred_col) if leads is not None else None,
        # from the period returns as the document records them (12 digits), so that
        # with_trials() on the document reproduces it exactly
        "deflated_sharpe": deflated_sharpe(normalize(ls.tolist()), periods_per_year, trials),
    }
    log.info(
        "portfolio %s h=%d: long-short Sharpe %s (annualised), DSR %s",
        pred_col,
        h,
        long_short["sharpe_annualized"],
        doc["deflated_sharpe"]["probability"],
    )
    return normalize(doc)


def _ic_decay(
    frame: pd.DataFrame, leads: pd.DataFrame, h: int, pred_col: str
) -> list[dict[str, Any]]:
    """Mean per-date rank IC of the prediction with the single-bar return k bars ahead."""
    cols = [lead_column(k) for k in range(1, h + 1)]
    missing = [c for c in ("timestamp", "symbol", *cols) if c not in leads]
    if missing:
        raise ValueError(f"lead returns lack column(s) {missing}")
    right = leads[["timestamp", "symbol", *cols]].copy()
    right["timestamp"] = right["timestamp"].astype("datetime64[ns]")
    right["symbol"] = right["symbol"].astype(str)
    joined = frame.merge(right, on=["timestamp", "symbol"], how="left", validate="one_to_one")
    ts = joined["timestamp"].to_numpy()
    pred = joined[pred_col].to_numpy(np.float64)
    out = []
    for k, col in enumerate(cols, start=1):
        ic = ic_by_date(ts, pred, joined[col].to_numpy(np.float64), "spearman")
        out.append(
            {"lead": k, "rank_ic": float(ic.mean()) if len(ic) else None, "n_dates": len(ic)}
        )
    return out


def with_trials(doc: Mapping[str, Any], trials: Trials) -> dict[str, Any]:
    """``doc`` with its ``deflated_sharpe`` recomputed for ``trials``, from the long-short
    period returns it records (``long_short.series``): for when the trials (every target and
    attempt of a batch) are known only after each target's report was made. Typically
    ``Trials.from_sharpes([d["long_short"]["sharpe_annualized"] for d in docs])``."""
    returns = [float(v) for _, v in doc["long_short"]["series"]]
    out = dict(doc)
    out["deflated_sharpe"] = deflated_sharpe(returns, float(doc["periods_per_year"]), trials)
    return normalize(out)


def portfolio_summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The few numbers a run log or a snapshot quotes from a ``portfolio.json`` document."""
    ls = doc["long_short"]
    return {
        "long_short_sharpe_annualized": ls["sharpe_annualized"],
        "long_short_mean": ls["mean"],
        "top_turnover": doc["turnover"]["top_quantile"],
        "deflated_sharpe": doc["deflated_sharpe"]["probability"],
    }
