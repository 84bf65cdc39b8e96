"""Scores of predictions against realised forward returns.

All functions are vectorised: per-date statistics use pandas groupby (sums, min/max, rank),
never a Python loop over dates, so a 1.25M-row panel is scored in well under a second.
Pairs where either the prediction or the target is NaN are ignored everywhere.

- IC: Pearson correlation of prediction and target across symbols on one date; rank IC:
  the same on within-date ranks (Spearman).
- ICIR: mean / standard deviation (ddof 1) of the per-date IC series (not annualised).
- Newey-West t: t-statistic of the mean of a series with a HAC (Bartlett kernel) standard
  error; forward returns over h bars overlap, so every caller takes its lags from the one
  rule :func:`newey_west_lags` (``max(h - 1, 1)``).
- Lead returns: :func:`forward_bar_returns` gives each row the single-bar returns of its
  symbol 1, 2, ... bars ahead (the lead profile of leakage.py, the IC decay of portfolio.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "auc_sign",
    "forward_bar_returns",
    "ic_by_date",
    "ic_by_group",
    "information_ratio",
    "newey_west_lags",
    "newey_west_t",
    "r2",
    "summarize_ic",
    "time_series_ic",
]

METHODS = ("pearson", "spearman")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _pairs(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Float arrays of the pairs where both are finite-or-inf numbers (NaN dropped)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"lengths differ: {x.size} vs {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def _group_ranks(codes: np.ndarray, starts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) of ``values`` within groups.

    ``codes`` are sorted group ids and ``starts`` the first position of each group.
    """
    n = values.size
    # sort by (group, value) through one int64 key: the value's global order, offset by group
    global_order = np.empty(n, dtype=np.int64)
    global_order[np.argsort(values)] = np.arange(n)
    order = np.argsort(codes.astype(np.int64) * n + global_order)  # keys are unique
    v = values[order]
    first = np.repeat(starts, np.diff(np.r_[starts, codes.size]))  # group start per position
    new_run = np.r_[True, (codes[1:] != codes[:-1]) | (v[1:] != v[:-1])]
    run_start = np.flatnonzero(new_run)
    run_end = np.r_[run_start[1:], v.size] - 1
    pos = np.arange(v.size) - first  # 0-based position within the group, in sorted order
    mean_rank = (pos[run_start] + pos[run_end]) / 2.0 + 1.0
    ranks = np.empty(v.size)
    ranks[order] = np.repeat(mean_rank, run_end - run_start + 1)
    return ranks


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) of ``values`` as one group."""
    return _group_ranks(np.zeros(values.size, dtype=np.int64), np.zeros(1, dtype=np.int64), values)


def ic_by_group(
    keys: Any, pred: Any, y: Any, method: str = "pearson", min_obs: int = 2
) -> pd.Series:
    """Correlation of ``pred`` with ``y`` within each group of ``keys`` (a date, a symbol).

    Groups with fewer than ``min_obs`` valid pairs, or fewer than 2 distinct values of
    either side, are skipped (a correlation there is undefined). Returns a float Series
    indexed by the sorted group keys.
    """
    _check_method(method)
    p = np.asarray(pred, dtype=np.float64).ravel()
    yy = np.asarray(y, dtype=np.float64).ravel()
    codes, uniques = pd.factorize(np.asarray(keys), sort=True)
    if not (len(codes) == p.size == yy.size):
        raise ValueError(f"lengths differ: keys {len(codes)}, pred {p.size}, y {yy.size}")
    keep = ~(np.isnan(p) | np.isnan(yy)) & (codes >= 0)
    # one stable sort by group, then every statistic is a segment reduction (no Python loop)
    order = np.argsort(codes[keep], kind="stable")
    c, p, yy = codes[keep][order], p[keep][order], yy[keep][order]
    if c.size == 0:
        return pd.Series([], index=pd.Index(uniques[:0], name="key"), dtype=float)
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    if method == "spearman":
        # Spearman = Pearson on within-group average ranks
        p = _group_ranks(c, starts, p)
        yy = _group_ranks(c, starts, yy)
    n = np.diff(np.r_[starts, c.size])
    # centre within the group before multiplying: sums of raw products lose precision
    pc = p - np.repeat(np.add.reduceat(p, starts) / n, n)
    yc = yy - np.repeat(np.add.reduceat(yy, starts) / n, n)
    pp = np.add.reduceat(pc * pc, starts)
    ss = np.add.reduceat(yc * yc, starts)
    py = np.add.reduceat(pc * yc, starts)
    ok = n >= max(min_obs, 2)
    ok &= np.maximum.reduceat(p, starts) > np.minimum.reduceat(p, starts)
    ok &= np.maximum.reduceat(yy, starts) > np.minimum.reduceat(yy, starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.clip(py[ok] / np.sqrt(pp[ok] * ss[ok]), -1.0, 1.0)
    return pd.Series(corr, index=pd.Index(uniques[c[starts][ok]], name="key"), dtype=float)


def ic_by_date(
    timestamps: Any, pred: Any, y: Any, method: str = "pearson", min_obs: int = 2
) -> pd.Series:
    """Per-date cross-sectional correlation of ``pred`` with ``y`` (IC, or rank IC).

    ``timestamps``, ``pred`` and ``y`` are per row. Dates with fewer than ``min_obs`` valid
    pairs, or fewer than 2 distinct values of either side, are skipped. Returns a float
    Series indexed by date (ascending ``DatetimeIndex`` named ``timestamp``), named ``"ic"``
    (pearson) or ``"rank_ic"`` (spearman).
    """
    out = ic_by_group(pd.to_datetime(np.asarray(timestamps)), pred, y, method, min_obs)
    out.index = pd.DatetimeIndex(out.index, name="timestamp")
    out.name = "ic" if method == "pearson" else "rank_ic"
    return out


def information_ratio(ic_series: Any) -> float:
    """Mean / standard deviation (ddof 1) of an IC series; NaN with < 2 values or no spread."""
    x = np.asarray(ic_series, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size < 2:
        return math.nan
    sd = float(np.std(x, ddof=1))
    return float(np.mean(x)) / sd if sd > 0 else math.nan


def newey_west_lags(horizon: int) -> int:
    """The Newey-West lag count for a per-date series scored on ``horizon``-bar forward returns.

    ``max(horizon - 1, 1)``. An h-bar forward return sampled every bar shares h - 1 bars with
    the next h - 1 ones, so under the null the per-date IC (or spread) series is MA(h - 1):
    its autocovariances vanish beyond lag h - 1 (Hansen and Hodrick 1980), and h - 1 lags
    reach every one that overlap makes non-zero. At least one lag, because the IC series of
    persistent features is mildly autocorrelated even without overlap (h = 1). The Bartlett
    weights keep the variance positive but shrink the far lags, so for a pure overlap the
    HAC variance is ~2/3 of the true one at h = 20 (t up to ~1.2x too large): read ``nw_t``
    as a screen, not a test at an exact level. Used by ranking, stacking and portfolio.
    """
    h = int(horizon)
    if h < 1:
        raise ValueError(f"horizon must be >= 1 bar, got {horizon}")
    return max(h - 1, 1)


def newey_west_t(series: Any, lags: int) -> float:
    """HAC t-statistic of the mean of ``series`` (Newey-West, Bartlett weights).

    ``var = g0 + 2 * sum_{j=1..L} (1 - j / (L + 1)) * g_j`` with autocovariances
    ``g_j = sum_t e_t e_{t-j} / n`` of the demeaned series, ``se = sqrt(var / n)``,
    ``t = mean / se``. ``L`` is capped at ``n - 1``. NaN with < 2 values or no variance.
    """
    if lags < 0:
        raise ValueError(f"lags must be >= 0, got {lags}")
    x = np.asarray(series, dtype=np.float64)
    x = x[~np.isnan(x)]
    n = x.size
    if n < 2:
        return math.nan
    mean = float(x.mean())
    e = x - mean
    var = float(e @ e) / n
    for j in range(1, min(int(lags), n - 1) + 1):  # lags, not rows: a handful of iterations
        var += 2.0 * (1.0 - j / (lags + 1.0)) * float(e[j:] @ e[:-j]) / n
    if not var > 0:
        return math.nan
    return mean / math.sqrt(var / n)


def r2(y: Any, pred: Any) -> float:
    """Out-of-sample R^2: ``1 - SSE / SST`` with SST around the mean of ``y``; NaN if SST = 0."""
    yy, pp = _pairs(y, pred)
    if yy.size < 2:
        return math.nan
    sst = float(np.sum((yy - yy.mean()) ** 2))
    if not sst > 0:
        return math.nan
    return 1.0 - float(np.sum((yy - pp) ** 2)) / sst


def auc_sign(y: Any, score: Any) -> float:
    """ROC AUC of ``score`` for the event ``y > 0`` (ties count one half); NaN if one class."""
    yy, ss = _pairs(y, score)
    pos = yy > 0
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    # Mann-Whitney U from average ranks
    ranks = _ranks(ss)
    u = float(ranks[pos].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def time_series_ic(pred: Any, y: Any, method: str = "pearson") -> float:
    """Correlation of ``pred`` and ``y`` over all their pairs (e.g. one symbol through time)."""
    _check_method(method)
    pp, yy = _pairs(pred, y)
    if pp.size < 2 or np.ptp(pp) == 0 or np.ptp(yy) == 0:
        return math.nan
    if method == "spearman":
        pp, yy = _ranks(pp), _ranks(yy)
    pc = pp - pp.mean()
    yc = yy - yy.mean()
    return float(np.clip((pc @ yc) / math.sqrt((pc @ pc) * (yc @ yc)), -1.0, 1.0))


def summarize_ic(
    timestamps: Any, pred: Any, y: Any, lags: int, min_obs: int = 2
) -> dict[str, float | int]:
    """Cross-sectional IC summary of predictions.

    Keys: ``ic`` / ``rank_ic`` (mean per-date IC / rank IC), ``icir`` / ``rank_icir``
    (their information ratios), ``nw_t`` (Newey-West t of the mean rank IC with ``lags``),
    ``n_dates`` (dates with a defined rank IC). Values are NaN where undefined.
    """
    ic = ic_by_date(timestamps, pred, y, "pearson", min_obs)
    ric = ic_by_date(timestamps, pred, y, "spearman", min_obs)
    return {
        "ic": float(ic.mean()) if len(ic) else math.nan,
        "rank_ic": float(ric.mean()) if len(ric) else math.nan,
        "icir": information_ratio(ic),
        "rank_icir": information_ratio(ric),
        "nw_t": newey_west_t(ric.to_numpy(), lags),
        "n_dates": int(len(ric)),
    }


def forward_bar_returns(timestamps: Any, symbols: Any, bar_return: Any, leads: Any) -> np.ndarray:
    """Per row and lead k, the single-bar return of the same symbol k of its own bars ahead.

    ``bar_return[i]`` is the return *into* row i's bar (e.g. the panel's ``ret_1``); the rows
    of a symbol must be its consecutive own bars (the panel convention: build_panel drops
    only the warm-up at the start). Column j of the result holds, for the row of symbol s at
    its bar t, ``bar_return`` of s's bar t + leads[j]; NaN past s's last row. Vectorised: one
    sort by (symbol, timestamp), then one shifted take per lead.
    Returns a float64 array of shape (rows, len(leads)).
    """
    ts = np.asarray(timestamps).astype("datetime64[ns]").view(np.int64)
    codes, _ = pd.factorize(np.asarray(symbols), sort=False)
    r = np.asarray(bar_return, dtype=np.float64).ravel()
    lead_list = [int(k) for k in np.atleast_1d(leads)]
    if not (len(ts) == len(codes) == r.size):
        raise ValueError(
            f"lengths differ: timestamps {len(ts)}, symbols {len(codes)}, returns {r.size}"
        )
    if any(k < 1 for k in lead_list):
        raise ValueError(f"leads must be >= 1 bar, got {lead_list}")
    order = np.lexsort((ts, codes))
    sym, rs = codes[order], r[order]
    n = order.size
    out = np.full((n, len(lead_list)), np.nan)
    idx = np.arange(n)
    for j, k in enumerate(lead_list):
        if k >= n:
            continue
        same = sym[k:] == sym[:-k]  # the row k places on is still the same symbol
        out[order[idx[:-k][same]], j] = rs[k:][same]
    return out
