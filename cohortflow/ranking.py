"""Target ranking (stage TARGET_RANKING): how predictable is each forward return?

For one target, two views are scored with quick models on purged k-fold OOF predictions:

- CROSS_SECTIONAL: all symbols pooled. Per fold a quick LightGBM and a linear model
  (Ridge on standardised features, NaN filled with the training medians) are fit on at most
  ``MAX_TRAIN_ROWS`` of the fold's training rows (LightGBM on the view's bins, computed
  once per view); the OOF
  predictions give per-date IC and rank IC across symbols (dates with at least
  ``MIN_CS_SYMBOLS`` symbols), ICIR, a Newey-West t of the rank IC (``max(h - 1, 1)`` lags:
  h-bar returns overlap), OOF R^2, the AUC of the sign, and the time-series IC / rank IC
  per symbol.
- SYMBOL_SPECIFIC: each symbol alone, same fold logic on its own rows: OOF R^2, AUC of the
  sign, time-series IC and rank IC.

Time-series scores (``ts_*``, and ``ic``/``rank_ic``/``auc`` of a symbol view) are computed
within each test fold and then averaged: pooled over folds they are biased below zero on
pure noise, because each fold's model is fit on a training mean that excludes the test
fold's mean, so the level of the predictions moves against the level of the target from
fold to fold. The pooled numbers are reported too (``*_oof``); R^2 is the pooled OOF R^2.

Score (orders the targets): the mean OOF rank IC of the pooled LightGBM. It is the mean
per-date cross-sectional rank IC when at least ``MIN_CS_DATE_SHARE`` of the OOF dates have
``MIN_CS_SYMBOLS`` symbols or more (``score_basis="cs_rank_ic"``); otherwise the cross
section is too thin to rank in and the mean per-symbol time-series rank IC is used
(``score_basis="ts_rank_ic"``). Rank IC is scale-free, so targets of different horizons
and volatilities compare; both numbers are always reported.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from cohortflow.metrics import (
    auc_sign,
    ic_by_date,
    ic_by_group,
    newey_west_lags,
    r2,
    summarize_ic,
    time_series_ic,
)
from cohortflow.models import (
    lightgbm_binned,
    lightgbm_params,
    map_parallel,
    parallel_settings,
    train_lightgbm,
)
from cohortflow.settings import Settings
from cohortflow.splits import FoldPlan, PurgedKFold, make_fold_plan, subsample

logger = logging.getLogger(__name__)

__all__ = [
    "CROSS_SECTIONAL",
    "MODELS",
    "SYMBOL_SPECIFIC",
    "TargetRanking",
    "ViewRanking",
    "rank_target",
]

CROSS_SECTIONAL = "CROSS_SECTIONAL"
SYMBOL_SPECIFIC = "SYMBOL_SPECIFIC"
MODELS = ("lightgbm", "linear")
# a per-date correlation over fewer symbols is noise (over 2 it is always +-1)
MIN_CS_SYMBOLS = 3
MIN_CS_DATE_SHARE = 0.5
RIDGE_ALPHA = 1.0
# folds with more training rows than this are fitted one at a time with all the threads
PARALLEL_MAX_ROWS = 250_000
# the quick models of a fold learn from at most this many of its training rows (a seeded
# uniform subset; every test row is scored): a ranking orders targets, and a rank IC
# measured on 200,000 rows has a sampling sd near 0.002, while fitting a 500-symbol panel's
# million rows per fold cost minutes and a 0.5 GB copy of the matrix
MAX_TRAIN_ROWS = 200_000


@dataclass(frozen=True, eq=False)
class ViewRanking:
    """Scores of one target in one view (the pooled panel, or one symbol).

    ``metrics``: ``{model: {"folds": [per-fold dict, ...], "summary": {...}}}`` for
    ``MODELS``; plain JSON types (NaN where undefined). ``importances``: ``{"lightgbm":
    DataFrame[feature, importance, rank, share]}``, gain averaged over folds, sorted by
    importance (descending) then feature. ``n_rows``: rows with a target in this view.
    """

    view: str
    symbol: str | None
    metrics: dict[str, Any]
    importances: dict[str, pd.DataFrame]
    n_rows: int
    fold_plan: FoldPlan


@dataclass(frozen=True, eq=False)
class TargetRanking:
    """Both views of one target and the score that orders targets (see module docstring)."""

    target: str
    horizon: int
    cross_sectional: ViewRanking
    symbol_specific: tuple[ViewRanking, ...]
    score: float
    score_basis: str = "cs_rank_ic"


# --------------------------------------------------------------------------- models


class MedianImputer(TransformerMixin, BaseEstimator):
    """NaN -> the column's training median (0 for a column with no value), like
    ``SimpleImputer(strategy="median", keep_empty_features=True)``, same medians.

    ``SimpleImputer`` takes medians through masked arrays: on 285,000 rows x 80 features
    that took ~3 s and several copies of the matrix per fold, 5x ``np.nanmedian``. With
    ``copy=False`` the NaN are filled in the array passed in (the caller's temporary).
    """

    def __init__(self, copy: bool = True) -> None:
        self.copy = copy

    def fit(self, X: np.ndarray, y: Any = None) -> MedianImputer:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"expected a non-empty 2-D array, got shape {X.shape}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: filled below
            medians = np.nanmedian(X, axis=0)
        self.statistics_ = np.where(np.isnan(medians), 0.0, medians)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.array(X, dtype=np.float64, copy=self.copy)
        rows, cols = np.nonzero(np.isnan(X))
        X[rows, cols] = self.statistics_[cols]
        return X


def linear_model(copy: bool = True) -> Pipeline:
    """Ridge on standardised features; NaN filled with the training medians.

    ``copy=False`` imputes and scales the arrays given to ``fit``/``predict`` in place:
    for callers that pass temporaries (a fold's rows), two fewer copies of the matrix.
    """
    return Pipeline(
        [
            ("impute", MedianImputer(copy=copy)),
            ("scale", StandardScaler(copy=copy)),
            ("ridge", Ridge(alpha=RIDGE_ALPHA, copy_X=copy)),
        ]
    )


@dataclass(frozen=True)
class _Oof:
    preds: dict[str, np.ndarray]  # model -> OOF prediction per row (NaN where never tested)
    gain: np.ndarray  # (n_features,) LightGBM gain averaged over folds


@dataclass(frozen=True, eq=False)
class _Columns:
    """Feature columns of a panel and the rows to use (positions): ``cols[rows]`` gives a
    fresh float64 matrix of those rows, as the whole matrix indexed would."""

    columns: list[np.ndarray]
    rows: np.ndarray

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        at = self.rows[idx]
        out = np.empty((at.size, len(self.columns)))
        for j, col in enumerate(self.columns):
            out[:, j] = col[at]
        return out


@dataclass(frozen=True)
class _ViewJob:
    """One view to fit: its rows (positions in the pooled arrays; None = all) and fold plan."""

    view: str
    symbol: str | None
    rows: np.ndarray | None
    plan: FoldPlan


def _fit_views(
    X: _Columns, y: np.ndarray, jobs: Sequence[_ViewJob], settings: Settings
) -> list[_Oof | ValueError]:
    """The OOF predictions and gain of every view, the folds of all views fitted as one batch
    of jobs side by side (models.parallel_settings: the same numbers as one at a time). A
    view whose fit raised ValueError gets that error instead.

    Each view's rows are binned for LightGBM once, by the first of its folds to run; every
    fold fits on a subset of those bins. A fold learns from at most ``MAX_TRAIN_ROWS`` of its
    training rows (seeded), and scores all of its test rows.

    Folds of more than PARALLEL_MAX_ROWS training rows run one after another with all the
    threads: a large fit uses two threads well, and two at once would hold two copies of
    the largest matrices."""
    tasks = [(i, k) for i, job in enumerate(jobs) for k in range(len(job.plan.folds))]

    def train_rows(task: tuple[int, int]) -> np.ndarray:  # positions in the view's rows
        i, k = task
        return subsample(jobs[i].plan.folds[k].train_idx, MAX_TRAIN_ROWS, (settings.seed, 3, k))

    large_set = {t for t in tasks if train_rows(t).size > PARALLEL_MAX_ROWS}
    large = [t for t in tasks if t in large_set]
    small = [t for t in tasks if t not in large_set]
    small_settings, workers = parallel_settings(settings, len(small))
    binned: dict[int, Any] = {}
    binning = [threading.Lock() for _ in jobs]

    def view_rows(i: int, idx: np.ndarray) -> np.ndarray:  # view positions -> pooled rows
        return idx if jobs[i].rows is None else jobs[i].rows[idx]

    def binned_view(i: int, fit_settings: Settings) -> Any:
        with binning[i]:
            if i not in binned:
                n = len(y) if jobs[i].rows is None else jobs[i].rows.size
                binned[i] = lightgbm_binned(
                    lambda idx: X[view_rows(i, idx)],
                    n,
                    y[view_rows(i, np.arange(n))],
                    lightgbm_params(fit_settings),
                )
            return binned[i]

    def fit_fold(task: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | ValueError:
        """(LightGBM predictions, its gain, linear predictions) of one fold's test rows."""
        i, k = task
        tr_view = train_rows(task)
        tr, te = view_rows(i, tr_view), view_rows(i, jobs[i].plan.folds[k].test_idx)
        try:
            fit_settings = settings if task in large_set else small_settings
            params = lightgbm_params(fit_settings, n_estimators=settings.quick_estimators)
            gbm = train_lightgbm(params, binned_view(i, fit_settings), tr_view)
            x_tr, x_te = X[tr], X[te]  # fresh copies, one of each
            pred = gbm.predict(x_te, num_threads=fit_settings.n_threads)
            gain = gbm.feature_importance(importance_type="gain")
            # the ridge last: it imputes and scales the copies in place (copy=False)
            lin = linear_model(copy=False).fit(x_tr, y[tr])
            return pred, gain, lin.predict(x_te)
        except ValueError as exc:
            return exc

    done = dict(zip(large, map_parallel(fit_fold, large, 1), strict=True))
    done.update(zip(small, map_parallel(fit_fold, small, workers), strict=True))
    binned.clear()
    results = iter(done[t] for t in tasks)
    out: list[_Oof | ValueError] = []
    for job in jobs:
        n = len(y) if job.rows is None else job.rows.size
        preds = {m: np.full(n, np.nan) for m in MODELS}
        gains = []
        error = None
        for fold in job.plan.folds:
            got = next(results)
            if isinstance(got, ValueError):
                error = error or got
                continue
            gbm_pred, gain, lin_pred = got
            preds["lightgbm"][fold.test_idx] = gbm_pred
            preds["linear"][fold.test_idx] = lin_pred
            gains.append(gain)
        out.append(error or _Oof(preds, np.mean(np.asarray(gains, dtype=np.float64), axis=0)))
    return out


def importance_frame(features: Sequence[str], importance: np.ndarray) -> pd.DataFrame:
    """feature, importance, rank (1 = most important), share (of the total; 0 if none)."""
    df = pd.DataFrame({"feature": list(features), "importance": np.asarray(importance, float)})
    df = df.sort_values(["importance", "feature"], ascending=[False, True], kind="mergesort")
    df = df.reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    total = float(df["importance"].sum())
    df["share"] = df["importance"] / total if total > 0 else 0.0
    return df


# --------------------------------------------------------------------------- metrics


def _mean(values: pd.Series | np.ndarray) -> float:
    a = np.asarray(values, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else math.nan


def _cs_fold_scores(
    ts: np.ndarray, sym: np.ndarray, p: np.ndarray, y: np.ndarray
) -> dict[str, Any]:
    """Scores of the pooled view on one fold's test rows."""
    return {
        "ic": _mean(ic_by_date(ts, p, y, "pearson", MIN_CS_SYMBOLS)),
        "rank_ic": _mean(ic_by_date(ts, p, y, "spearman", MIN_CS_SYMBOLS)),
        "ts_ic": _mean(ic_by_group(sym, p, y, "pearson")),
        "ts_rank_ic": _mean(ic_by_group(sym, p, y, "spearman")),
        "r2": r2(y, p),
        "auc": auc_sign(y, p),
    }


def _within_fold_ts(
    fold: np.ndarray, sym: np.ndarray, p: np.ndarray, y: np.ndarray, method: str
) -> float:
    """Mean over (symbol, test fold) groups of the time-series correlation (see module doc)."""
    codes = pd.factorize(sym, sort=True)[0].astype(np.int64)
    keys = fold.astype(np.int64) * (int(codes.max()) + 1) + codes
    return _mean(ic_by_group(keys, p, y, method))


def _cs_date_share(ts: np.ndarray) -> float:
    """Share of dates with at least MIN_CS_SYMBOLS rows (symbols) among the given rows."""
    counts = pd.Series(ts).value_counts()
    return float((counts >= MIN_CS_SYMBOLS).mean()) if len(counts) else 0.0


def _cross_sectional_metrics(
    ts: np.ndarray, sym: np.ndarray, y: np.ndarray, oof: _Oof, plan: FoldPlan, horizon: int
) -> tuple[dict[str, Any], str]:
    lags = newey_west_lags(horizon)
    tested = plan.test_fold() >= 0
    share = _cs_date_share(ts[tested])
    basis = "cs_rank_ic" if share >= MIN_CS_DATE_SHARE else "ts_rank_ic"
    out: dict[str, Any] = {}
    for model in MODELS:
        p = oof.preds[model]
        folds = []
        for f in plan.folds:
            te = f.test_idx
            scores = _cs_fold_scores(ts[te], sym[te], p[te], y[te])
            folds.append(
                {
                    "fold": f.fold,
                    "n_train": int(f.train_idx.size),
                    "n_test": int(te.size),
                    "n_test_dates": int(np.unique(ts[te]).size),
                    **scores,
                }
            )
        rows = np.flatnonzero(tested)
        fold_of = plan.test_fold()[rows]
        pr, yr, sr = p[rows], y[rows], sym[rows]
        summary = {
            **summarize_ic(ts[rows], pr, yr, lags, MIN_CS_SYMBOLS),
            "ts_ic": _within_fold_ts(fold_of, sr, pr, yr, "pearson"),
            "ts_rank_ic": _within_fold_ts(fold_of, sr, pr, yr, "spearman"),
            "ts_rank_ic_oof": _mean(ic_by_group(sr, pr, yr, "spearman")),
            "r2_oof": r2(yr, pr),
            "auc": _mean(np.array([f["auc"] for f in folds], dtype=float)),
            "auc_oof": auc_sign(yr, pr),
            "nw_lags": lags,
            "n_rows": int(rows.size),
            "n_symbols": int(np.unique(sym[rows]).size),
            "cs_date_share": share,
            "score_basis": basis,
        }
        summary["score"] = summary["rank_ic"] if basis == "cs_rank_ic" else summary["ts_rank_ic"]
        out[model] = {"folds": folds, "summary": summary}
    return out, basis


def _ts_scores(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {
        "ic": time_series_ic(p, y, "pearson"),
        "rank_ic": time_series_ic(p, y, "spearman"),
        "r2": r2(y, p),
        "auc": auc_sign(y, p),
    }


def _symbol_metrics(y: np.ndarray, oof: _Oof, plan: FoldPlan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tested = np.flatnonzero(plan.test_fold() >= 0)
    for model in MODELS:
        p = oof.preds[model]
        folds = [
            {
                "fold": f.fold,
                "n_train": int(f.train_idx.size),
                "n_test": int(f.test_idx.size),
                **_ts_scores(p[f.test_idx], y[f.test_idx]),
            }
            for f in plan.folds
        ]
        s = _ts_scores(p[tested], y[tested])

        def fold_mean(key: str, folds: list[dict[str, Any]] = folds) -> float:
            return _mean(np.array([f[key] for f in folds], dtype=float))

        summary = {
            "ic": fold_mean("ic"),
            "rank_ic": fold_mean("rank_ic"),
            "auc": fold_mean("auc"),
            "r2_oof": s["r2"],
            "auc_oof": s["auc"],
            "rank_ic_oof": s["rank_ic"],
            "n_rows": int(tested.size),
        }
        out[model] = {"folds": folds, "summary": summary}
    return out


# --------------------------------------------------------------------------- ranking


def _check_panel(panel: pd.DataFrame, target: str, horizon: int, features: Sequence[str]) -> None:
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 bar, got {horizon}")
    if not features:
        raise ValueError(f"no features to rank target {target!r} with")
    needed = ["timestamp", "symbol", target, *features]
    missing = [c for c in needed if c not in panel.columns]
    if missing:
        raise ValueError(f"panel lacks column(s) {missing} needed to rank {target!r}")


def _plan(
    ts: np.ndarray, label_end: np.ndarray | None, horizon: int, settings: Settings
) -> FoldPlan:
    splitter = PurgedKFold(settings.n_splits, horizon, settings.embargo_for(horizon))
    return make_fold_plan(splitter, ts, label_end)


def _view_ranking(
    job: _ViewJob,
    oof: _Oof,
    y: np.ndarray,
    ts: np.ndarray,
    sym: np.ndarray,
    features: Sequence[str],
    horizon: int,
) -> tuple[ViewRanking, str]:
    """The metrics and importances of one fitted view (``y``, ``ts``, ``sym``: its rows)."""
    if job.view == CROSS_SECTIONAL:
        metrics, basis = _cross_sectional_metrics(ts, sym, y, oof, job.plan, horizon)
    else:
        metrics, basis = _symbol_metrics(y, oof, job.plan), "ts_rank_ic"
    importances = {"lightgbm": importance_frame(features, oof.gain)}
    return ViewRanking(job.view, job.symbol, metrics, importances, int(len(y)), job.plan), basis


def symbols_for_view(panel: pd.DataFrame, target: str, limit: int) -> list[str]:
    """The symbols that get a SYMBOL_SPECIFIC view: at most ``limit``, those with the most
    labelled rows (ties by name), returned sorted by name. ``limit`` 0 turns the view off.

    One model per symbol per fold is the cost that grows fastest with the universe, so
    large universes keep the view for their longest histories only.
    """
    if limit <= 0:
        return []
    counts = panel.loc[panel[target].notna(), "symbol"].astype(str).value_counts()
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return sorted(name for name, _ in ranked)


def rank_target(
    panel: pd.DataFrame,
    target: str,
    horizon: int,
    features: Sequence[str],
    settings: Settings,
    symbols: Sequence[str] | None = None,
) -> TargetRanking:
    """Score how predictable ``target`` (``fwd_ret_{horizon}``) is from ``features``.

    ``panel`` follows the panel convention (docs/ARCHITECTURE.md); rows with a NaN target
    are dropped; ``label_end_{horizon}`` (if present) drives purging. Folds:
    ``PurgedKFold(settings.n_splits, horizon, settings.embargo_for(horizon))`` on dates,
    per view. A symbol whose rows are too few for those folds is left out of the
    symbol-specific view (logged); ``symbols`` limits that view (default: every symbol).
    Models: ``settings.quick_estimators`` LightGBM trees (``settings.seed``,
    ``settings.n_threads``) and a ridge.
    """
    features = list(features)
    _check_panel(panel, target, horizon, features)
    # the rows with a target, taken column by column: no copy of the whole panel first (at
    # 500 symbols that copy was 0.8 GB next to the feature matrix's 0.7 GB)
    keep = np.flatnonzero(panel[target].notna().to_numpy())
    if keep.size == 0:
        raise ValueError(f"target {target!r} has no non-NaN values")
    le_col = f"label_end_{horizon}"
    if le_col in panel.columns:
        label_end = panel[le_col].to_numpy()[keep]
    else:
        logger.warning(
            "%s: no %s column; label windows taken as %d grid bars", target, le_col, horizon
        )
        label_end = None
    # no matrix of all rows: each fold's rows are cut from the panel's columns when it runs
    # (at 500 symbols the matrix was 0.7 GB beside the fold copies)
    X = _Columns([panel[name].to_numpy(dtype=np.float64) for name in features], keep)
    y = panel[target].to_numpy(dtype=np.float64)[keep]
    ts = panel["timestamp"].to_numpy()[keep]
    sym = panel["symbol"].iloc[keep].astype(str).to_numpy()

    # every view's folds go into one batch of fits (the symbol views' small fits side by
    # side); a symbol whose rows are too few for the folds is left out
    jobs = [_ViewJob(CROSS_SECTIONAL, None, None, _plan(ts, label_end, horizon, settings))]
    wanted = None if symbols is None else set(symbols)
    for symbol, idx in sorted(pd.Series(sym).groupby(sym, sort=True).indices.items()):
        if wanted is not None and symbol not in wanted:
            continue
        le = None if label_end is None else label_end[idx]
        try:
            jobs.append(
                _ViewJob(SYMBOL_SPECIFIC, str(symbol), idx, _plan(ts[idx], le, horizon, settings))
            )
        except ValueError as exc:
            logger.warning("%s: symbol %s left out of the symbol view: %s", target, symbol, exc)
    fitted = _fit_views(X, y, jobs, settings)
    if isinstance(fitted[0], ValueError):
        raise fitted[0]
    cs, basis = _view_ranking(jobs[0], fitted[0], y, ts, sym, features, horizon)
    per_symbol = []
    for job, oof in zip(jobs[1:], fitted[1:], strict=True):
        idx = job.rows
        try:
            if isinstance(oof, ValueError):
                raise oof
            view, _ = _view_ranking(job, oof, y[idx], ts[idx], sym[idx], features, horizon)
        except ValueError as exc:
            logger.warning("%s: symbol %s left out of the symbol view: %s", target, job.symbol, exc)
            continue
        per_symbol.append(view)
    score = float(cs.metrics["lightgbm"]["summary"]["score"])
    logger.info(
        "%s: score %.4f (%s), %d rows, %d symbol views", target, score, basis, cs.n_rows,
        len(per_symbol),
    )  # fmt: skip
    return TargetRanking(target, int(horizon), cs, tuple(per_symbol), score, basis)
