"""Stacking: a meta-learner on the OOF columns, base models refit once, a held-out test.

- The meta-learner (ridge, or logistic for a sign target) trains on the OOF predictions
  of :mod:`cohortflow.oof`. It never refits base models to make its inputs: the OOF columns
  already are out-of-fold predictions on one purged fold plan.
- Its regularisation is chosen by walk-forward validation over the OOF rows' dates, with a
  gap of at least the horizon (the embargo) between each training window and test block.
- The base models are refit once on the whole training window, only to predict the
  held-out test period, which :func:`split_train_test` separates from training by the
  horizon plus the embargo (bars).
- Everything is saved in native formats (LightGBM text, XGBoost JSON, coefficients as
  JSON, Parquet) with deterministic bytes; loading runs no code (no pickle).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.linalg import solve_triangular
from scipy.optimize import minimize, nnls

from cohortflow import metrics
from cohortflow.canonical import canonical_json, normalize
from cohortflow.formats import json_bytes, parse_json, prediction_parquet_bytes
from cohortflow.names import validate_name
from cohortflow.oof import (
    TREE_MODELS,
    OOFResult,
    feature_matrix,
    fit_base_model,
    label_end_column,
    labelled_rows,
    model_input,
    pred_column,
    predict_base_model,
    resolve_model_features,
)
from cohortflow.settings import Settings
from cohortflow.splits import WalkForward

log = logging.getLogger(__name__)

# Ridge/logistic penalty per OOF row on standardised prediction columns: alpha_abs =
# alpha * n_rows, so a candidate means the same shrinkage whatever the number of rows.
ALPHA_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
EQUAL_WEIGHT = "equal_weight"
STACK = "stack"
FILES = {
    "lightgbm": "lightgbm.txt",
    "xgboost": "xgboost.json",
    "meta": "meta_learner.json",
    "card": "model_card.json",
    "predictions": "test_predictions.parquet",
    "evaluation": "evaluation.json",
}
STACKING_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- meta-learner


@dataclass(frozen=True)
class MetaLearner:
    """A linear combination of prediction columns (raw units), logistic-linked for "logistic".

    ``coef``/``intercept`` are rounded to the 12 significant digits that JSON keeps, and
    every in-memory prediction uses the rounded values, so a loaded model predicts exactly
    what the fitted one did. ``alpha`` is the penalty per row on standardised columns.
    """

    kind: str
    columns: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float
    alpha: float
    nonneg: bool
    center: tuple[float, ...]
    scale: tuple[float, ...]

    def decision(self, preds: np.ndarray) -> np.ndarray:
        """intercept + sum_j coef_j * preds[:, j], summed column by column in a fixed order.

        (A BLAS product would sum in an order that depends on the array's memory layout,
        so the same numbers could differ in the last bit between two callers.)
        """
        preds = np.asarray(preds, dtype=np.float64)
        if preds.ndim != 2 or preds.shape[1] != len(self.coef):
            raise ValueError(
                f"expected {len(self.coef)} prediction columns, got shape {preds.shape}"
            )
        out = np.full(preds.shape[0], self.intercept)
        for j, c in enumerate(self.coef):
            out += c * preds[:, j]
        return out

    def predict(self, preds: np.ndarray) -> np.ndarray:
        """Stack prediction from base predictions (rows x columns): a return, or P(y > 0)."""
        z = self.decision(preds)
        return _sigmoid(z) if self.kind == "logistic" else z

    def weights(self) -> dict[str, float]:
        """Each base model's share of the combination: coef / sum(|coef|) (0 if all are 0)."""
        total = float(np.sum(np.abs(self.coef)))
        models = [c.removeprefix("pred_") for c in self.columns]
        return {
            m: (c / total if total > 0 else 0.0) for m, c in zip(models, self.coef, strict=True)
        }

    def to_dict(self) -> dict[str, Any]:
        models = [c.removeprefix("pred_") for c in self.columns]
        return {
            "kind": self.kind,
            "alpha": self.alpha,
            "nonneg": self.nonneg,
            "feature_order": list(self.columns),
            "coef": dict(zip(models, self.coef, strict=True)),
            "coef_in_order": list(self.coef),
            "intercept": self.intercept,
            "link": "logistic" if self.kind == "logistic" else "identity",
            "fit_center": list(self.center),
            "fit_scale": list(self.scale),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetaLearner:
        return cls(
            kind=str(d["kind"]),
            columns=tuple(d["feature_order"]),
            coef=tuple(float(c) for c in d["coef_in_order"]),
            intercept=float(d["intercept"]),
            alpha=float(d["alpha"]),
            nonneg=bool(d["nonneg"]),
            center=tuple(float(c) for c in d.get("fit_center", ())),
            scale=tuple(float(c) for c in d.get("fit_scale", ())),
        )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def _round(x: float) -> float:
    return float(normalize(float(x)) or 0.0)


def _fit_logistic(z: np.ndarray, up: np.ndarray, alpha_abs: float, nonneg: bool) -> np.ndarray:
    """L2-penalised logistic regression (intercept first), bounds >= 0 when ``nonneg``."""
    n, k = z.shape

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = w[0] + z @ w[1:]
        resid = _sigmoid(s) - up
        value = float(np.sum(np.logaddexp(0.0, s) - up * s)) + 0.5 * alpha_abs * float(
            w[1:] @ w[1:]
        )
        grad = np.concatenate(([resid.sum()], z.T @ resid + alpha_abs * w[1:]))
        return value, grad

    bounds = [(None, None)] + [((0.0, None) if nonneg else (None, None))] * k
    res = minimize(loss, np.zeros(k + 1), jac=True, method="L-BFGS-B", bounds=bounds)
    return res.x


def _ridge_path(
    z: np.ndarray, yc: np.ndarray, alphas_abs: Sequence[float], nonneg: bool
) -> list[np.ndarray]:
    """argmin ||yc - z b||^2 + alpha ||b||^2 (b >= 0 when ``nonneg``) per alpha; z, yc centred.

    Solved on the k x k normal equations (k = base models), built once for all alphas: with
    G + alpha I = L L', the objective is ||L' b - L^-1 z'yc||^2 + const, so the bounded case
    is a k x k NNLS.
    """
    k = z.shape[1]
    gram, zy = z.T @ z, z.T @ yc
    out = []
    for alpha in alphas_abs:
        g = gram + alpha * np.eye(k)
        if nonneg:
            chol = np.linalg.cholesky(g)
            out.append(nnls(chol.T, solve_triangular(chol, zy, lower=True))[0])
        else:
            out.append(np.linalg.solve(g, zy))
    return out


def _demean_by_group(values: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """``values`` minus their mean within each group (rows x columns or a vector)."""
    if groups is None:
        return values - values.mean(axis=0)
    _, inverse = np.unique(groups, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    if values.ndim == 1:
        return values - (np.bincount(inverse, weights=values) / counts)[inverse]
    means = np.column_stack(
        [np.bincount(inverse, weights=values[:, j]) / counts for j in range(values.shape[1])]
    )
    return values - means[inverse]


def fit_meta_path(
    preds: np.ndarray,
    y: np.ndarray,
    columns: Sequence[str],
    kind: str,
    alphas: Sequence[float],
    nonneg: bool,
    folds: np.ndarray | None = None,
) -> list[MetaLearner]:
    """Fit the meta-learner for each penalty in ``alphas`` on prediction columns (rows x columns).

    Columns are standardised for the fit (so ``alpha``, a penalty per row, means the same
    for every scale of prediction); the coefficients are mapped back to raw units.
    "ridge" predicts the return ``y``; "logistic" fits P(y > 0).

    ``folds``: the OOF fold of each row. The ridge slopes are fitted on predictions and
    returns demeaned within each fold: a fold's model learns the mean return of the *other*
    folds, so pooled OOF predictions anti-correlate with each fold's mean return, an
    artefact of k-fold that would push every slope negative (to zero with ``nonneg``).
    """
    preds = np.asarray(preds, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    center = preds.mean(axis=0)
    scale = preds.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)  # a constant column gets coefficient 0 anyway
    z = (preds - center) / scale
    alphas_abs = [float(a) * len(z) for a in alphas]
    if kind == "ridge":
        zc, yc = _demean_by_group(z, folds), _demean_by_group(y, folds)
        fits = [(float(y.mean()), beta) for beta in _ridge_path(zc, yc, alphas_abs, nonneg)]
    elif kind == "logistic":
        up = (y > 0).astype(np.float64)
        fits = [(float(w[0]), w[1:]) for w in (_fit_logistic(z, up, a, nonneg) for a in alphas_abs)]
    else:
        raise ValueError(f"meta-learner kind must be 'ridge' or 'logistic', got {kind!r}")
    out = []
    for alpha, (b, beta) in zip(alphas, fits, strict=True):
        coef = beta / scale
        intercept = b - float(np.sum(beta * center / scale))
        out.append(
            MetaLearner(
                kind=kind,
                columns=tuple(columns),
                coef=tuple(_round(c) for c in coef),
                intercept=_round(intercept),
                alpha=float(alpha),
                nonneg=bool(nonneg),
                center=tuple(_round(c) for c in center),
                scale=tuple(_round(v) for v in scale),
            )
        )
    return out


def fit_meta(
    preds: np.ndarray, y: np.ndarray, columns: Sequence[str], kind: str, alpha: float, nonneg: bool
) -> MetaLearner:
    """The meta-learner with one penalty ``alpha`` (see :func:`fit_meta_path`)."""
    return fit_meta_path(preds, y, columns, kind, (alpha,), nonneg)[0]


def _validation_score(kind: str, y: np.ndarray, pred: np.ndarray, base_level: float) -> float:
    """Higher is better. Ridge: out-of-sample R^2 gained over predicting the training mean
    ``base_level`` (the level error that every candidate shares on a block whose mean
    return moved would otherwise decide the choice); logistic: minus the mean log loss."""
    if kind == "ridge":
        return metrics.r2(y, pred) - metrics.r2(y, np.full(len(y), base_level))
    p = np.clip(pred, 1e-12, 1.0 - 1e-12)
    up = np.asarray(y) > 0
    return float(np.mean(np.where(up, np.log(p), np.log1p(-p))))


def _alpha_key(alpha: float) -> str:
    return f"{alpha:g}"


def fit_meta_learner(
    oof_frame: pd.DataFrame,
    models: Sequence[str],
    horizon: int,
    settings: Settings,
    label_end: Any = None,
) -> tuple[MetaLearner, dict[str, Any]]:
    """Choose the meta-learner's penalty by walk-forward validation, then fit it on all OOF rows.

    Walk-forward over the OOF rows' dates: ``settings.n_splits`` test blocks, an expanding
    training window, ``settings.embargo_for(horizon)`` bars (>= horizon) between them, and
    rows whose label windows (``label_end``, per OOF row) reach a test block purged. Each
    candidate of :data:`ALPHA_GRID` is scored per block; the best mean wins (ties go to the
    larger penalty). Only the OOF columns are used: no base model is refit here.
    """
    kind = settings.meta_learner
    columns = [pred_column(m) for m in models]
    preds = oof_frame[columns].to_numpy(dtype=np.float64)
    y = oof_frame["y_true"].to_numpy(dtype=np.float64)
    ts = oof_frame["timestamp"].to_numpy(dtype="datetime64[ns]")
    oof_folds = oof_frame["fold"].to_numpy() if "fold" in oof_frame else np.zeros(len(y), dtype=int)
    if not np.all(np.isfinite(preds)):
        raise ValueError("OOF prediction columns hold NaN or infinite values")
    gap = settings.embargo_for(horizon)
    splitter = WalkForward(settings.n_splits, horizon, gap=gap)
    folds, scores = [], {a: [] for a in ALPHA_GRID}
    for k, (tr, te) in enumerate(splitter.split(preds, y, groups=ts, label_end=label_end)):
        fold_scores = {}
        path = fit_meta_path(
            preds[tr], y[tr], columns, kind, ALPHA_GRID, settings.nonneg_weights, oof_folds[tr]
        )
        p_te, y_te = preds[te], y[te]
        for alpha, model in zip(ALPHA_GRID, path, strict=True):
            score = _validation_score(kind, y_te, model.predict(p_te), float(y[tr].mean()))
            scores[alpha].append(score)
            fold_scores[_alpha_key(alpha)] = score
        folds.append(
            {
                "fold": k,
                "train_rows": len(tr),
                "test_rows": len(te),
                "train_last": pd.Timestamp(ts[tr].max()).isoformat(),
                "test_first": pd.Timestamp(ts[te].min()).isoformat(),
                "test_last": pd.Timestamp(ts[te].max()).isoformat(),
                "scores": fold_scores,
            }
        )
    means = {
        a: float(np.nanmean(s)) if np.isfinite(s).any() else -np.inf for a, s in scores.items()
    }
    chosen = max(sorted(ALPHA_GRID, reverse=True), key=lambda a: means[a])
    meta = fit_meta_path(preds, y, columns, kind, (chosen,), settings.nonneg_weights, oof_folds)[0]
    validation = {
        "scheme": "walk_forward",
        "kind": kind,
        "score": "r2_gain_over_mean" if kind == "ridge" else "neg_log_loss",
        "n_splits": settings.n_splits,
        "gap_bars": gap,
        "candidates": [_alpha_key(a) for a in ALPHA_GRID],
        "folds": folds,
        "mean_scores": {_alpha_key(a): means[a] for a in ALPHA_GRID},
        "chosen_alpha": chosen,
        "oof_rows": len(y),
    }
    return meta, validation


# --------------------------------------------------------------------------- hold-out


# --------------------------------------------------------------------------- stacking


@dataclass(frozen=True)
class StackingResult:
    """A fitted stack and its held-out evaluation (see the module docstring)."""

    target: str
    horizon: int
    base_models: tuple[str, ...]
    meta: dict
    weights: dict[str, float]
    meta_validation: dict
    test_metrics: dict
    test_predictions: pd.DataFrame
    boosters: Mapping[str, Any]
    model_card: dict
    features: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def column_metrics(
    y: np.ndarray, pred: np.ndarray, ts: np.ndarray, horizon: int, probability: bool = False
) -> dict[str, Any]:
    """r2, ic, rank_ic, icir, auc_sign, n_rows of one prediction column on the test rows.

    ``probability``: the column is P(y > 0), whose R^2 against returns means nothing (None).
    """
    summary = metrics.summarize_ic(ts, pred, y, lags=metrics.newey_west_lags(horizon))
    return {
        "r2": None if probability else metrics.r2(y, pred),
        "ic": summary["ic"],
        "rank_ic": summary["rank_ic"],
        "icir": summary["icir"],
        "auc_sign": metrics.auc_sign(y, pred),
        "n_rows": len(y),
    }


def _oof_label_end(oof: OOFResult, train: pd.DataFrame, horizon: int) -> np.ndarray:
    """Each OOF row's label end, looked up in the training frame by (timestamp, symbol)."""
    le_col = label_end_column(horizon)
    keys = oof.frame[["timestamp", "symbol"]].astype({"timestamp": "datetime64[ns]", "symbol": str})
    lookup = train[["timestamp", "symbol", le_col]].astype(
        {"timestamp": "datetime64[ns]", "symbol": str, le_col: "datetime64[ns]"}
    )
    found = keys.merge(lookup, on=["timestamp", "symbol"], how="left", validate="one_to_one")
    if found[le_col].isna().any():
        raise ValueError(
            "OOF rows not found in the training frame: pass the frame the OOF was built on"
        )
    return found[le_col].to_numpy(dtype="datetime64[ns]")


def _round_linear(est: Any) -> None:
    """Round a linear extra's coefficients to what JSON keeps, so saved == in memory."""
    est.coef_ = np.array([_round(c) for c in np.ravel(est.coef_)])
    est.intercept_ = _round(float(np.ravel(est.intercept_)[0]))


def refit_base_models(
    train: pd.DataFrame,
    target: str,
    models: Sequence[str],
    per_model: Mapping[str, Sequence[str]],
    settings: Settings,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Base models fitted once on the whole (labelled) training window, for the test period."""
    y = train[target].to_numpy(dtype=np.float64)
    out = {}
    for name in models:
        est = fit_base_model(
            name, settings, feature_matrix(train, per_model[name]), y, (params or {}).get(name)
        )
        if name not in TREE_MODELS and _is_linear(est):
            _round_linear(est)
        out[name] = est
    return out


def _is_linear(est: Any) -> bool:
    coef = getattr(est, "coef_", None)
    return coef is not None and np.ndim(coef) == 1 and np.ndim(getattr(est, "intercept_", 0.0)) == 0


def _window(frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "first": frame["timestamp"].min().isoformat() if len(frame) else None,
        "last": frame["timestamp"].max().isoformat() if len(frame) else None,
        "rows": len(frame),
        "symbols": int(frame["symbol"].nunique()),
    }


def fit_stacking(
    oof: OOFResult,
    train: pd.DataFrame,
    test: pd.DataFrame,
    target: str,
    horizon: int,
    features: Sequence[str],
    settings: Settings,
    *,
    model_features: Mapping[str, Sequence[str]] | None = None,
    split_info: Mapping[str, Any] | None = None,
) -> StackingResult:
    """Fit the meta-learner on ``oof``'s columns, refit base models on ``train``, score ``test``.

    ``train`` is the frame the OOF dataset was built on (its label ends purge the
    meta-learner's walk-forward folds); ``test`` the held-out period (see
    :func:`split_train_test`, whose info dict is ``split_info``). ``model_features``
    defaults to the OOF dataset's feature subsets and must match them when given. Base
    models are refit with ``oof.params``.
    """
    validate_name("target", target)
    models = tuple(oof.models)
    if model_features is None and oof.features:
        model_features = oof.features  # the subsets the OOF columns were made with
    per_model = resolve_model_features(models, features, model_features)
    if oof.features and {m: tuple(f) for m, f in oof.features.items()} != per_model:
        raise ValueError(
            f"feature subsets {per_model} differ from those of the OOF dataset {dict(oof.features)}"
        )
    train_l = labelled_rows(train, target, horizon)
    test_l = labelled_rows(test, target, horizon)
    if len(test_l) == 0:
        raise ValueError("the test period has no labelled rows")
    last_label_end = train_l[label_end_column(horizon)].max()
    if test_l["timestamp"].min() <= last_label_end:
        raise ValueError(
            f"test period starts {test_l['timestamp'].min()} at or before the last training "
            f"label end {last_label_end}: the hold-out would leak"
        )

    meta, validation = fit_meta_learner(
        oof.frame, models, horizon, settings, label_end=_oof_label_end(oof, train_l, horizon)
    )
    boosters = refit_base_models(train_l, target, models, per_model, settings, oof.params)

    y = test_l[target].to_numpy(dtype=np.float64)
    ts = test_l["timestamp"].to_numpy(dtype="datetime64[ns]")
    base = {
        m: predict_base_model(m, boosters[m], feature_matrix(test_l, per_model[m])) for m in models
    }
    stacked = np.column_stack([base[m] for m in models])
    predictions = pd.DataFrame(
        {
            "timestamp": ts,
            "symbol": test_l["symbol"].to_numpy(),
            "y_true": y,
            **{pred_column(m): base[m] for m in models},
            pred_column(EQUAL_WEIGHT): stacked.mean(axis=1),
            pred_column(STACK): meta.predict(stacked),
        }
    )
    test_metrics: dict[str, Any] = {
        name: column_metrics(y, predictions[pred_column(name)].to_numpy(), ts, horizon)
        for name in (*models, EQUAL_WEIGHT)
    }
    test_metrics[STACK] = column_metrics(
        y,
        predictions[pred_column(STACK)].to_numpy(),
        ts,
        horizon,
        probability=meta.kind == "logistic",
    )
    info = dict(split_info or {})
    test_metrics.update(
        {
            "test_first": pd.Timestamp(ts.min()).isoformat(),
            "test_last": pd.Timestamp(ts.max()).isoformat(),
            "gap_bars": info.get("gap_bars"),
            "label_gap_bars": info.get("label_gap_bars"),
        }
    )
    card = _model_card(
        oof,
        train_l,
        test_l,
        target,
        horizon,
        features,
        per_model,
        meta,
        validation,
        test_metrics,
        boosters,
        info,
    )
    log.info("stack %s: weights %s, test R2 %s", target, meta.weights(), test_metrics[STACK]["r2"])
    return StackingResult(
        target=target,
        horizon=int(horizon),
        base_models=models,
        meta=meta.to_dict(),
        weights=meta.weights(),
        meta_validation=validation,
        test_metrics=test_metrics,
        test_predictions=predictions,
        boosters=boosters,
        model_card=card,
        features=per_model,
    )


def _model_params(est: Any) -> dict[str, Any]:
    # threads change speed, not numbers; keep them out of the card
    return {k: v for k, v in sorted(est.get_params().items()) if k not in ("n_jobs", "nthread")}


def _model_card(
    oof: OOFResult,
    train: pd.DataFrame,
    test: pd.DataFrame,
    target: str,
    horizon: int,
    features: Sequence[str],
    per_model: Mapping[str, Sequence[str]],
    meta: MetaLearner,
    validation: Mapping[str, Any],
    test_metrics: Mapping[str, Any],
    boosters: Mapping[str, Any],
    split_info: Mapping[str, Any],
) -> dict[str, Any]:
    import lightgbm
    import sklearn
    import xgboost

    return {
        "format_version": STACKING_FORMAT_VERSION,
        "target": target,
        "horizon": int(horizon),
        "base_models": list(oof.models),
        "features": list(features),
        "model_features": {m: list(f) for m, f in per_model.items()},
        "model_files": {m: _model_file(m) for m in oof.models},
        "model_params": {m: _model_params(est) for m, est in boosters.items()},
        "meta_learner": {"kind": meta.kind, "alpha": meta.alpha, "nonneg": meta.nonneg},
        "weights": meta.weights(),
        "folds": oof.fold_plan.to_dict(),
        "oof": {
            "rows": len(oof.frame),
            "first": oof.frame["timestamp"].min().isoformat(),
            "last": oof.frame["timestamp"].max().isoformat(),
            "fold_metrics": list(oof.fold_metrics),
        },
        "meta_validation": {
            "chosen_alpha": validation["chosen_alpha"],
            "mean_scores": validation["mean_scores"],
        },
        "training_window": _window(train),
        "test_window": _window(test),
        "split": dict(split_info),
        "metrics": dict(test_metrics),
        "versions": {
            "lightgbm": lightgbm.__version__,
            "xgboost": xgboost.__version__,
            "scikit-learn": sklearn.__version__,
        },
    }


# --------------------------------------------------------------------------- save / load


def _model_file(name: str) -> str:
    return FILES.get(name) if name in TREE_MODELS else f"{validate_name('model', name)}.json"


def _model_bytes(name: str, est: Any, features: Sequence[str]) -> bytes:
    """Native bytes of one base model; scikit-learn extras only as linear coefficients."""
    if name == "lightgbm":
        return est.booster_.model_to_string().encode("utf-8")
    if name == "xgboost":
        return bytes(est.get_booster().save_raw(raw_format="json"))
    if not _is_linear(est):
        raise ValueError(
            f"cannot save base model {name!r} ({type(est).__name__}) without pickle: only "
            "linear scikit-learn extras (1-D coef_, scalar intercept_) are supported"
        )
    doc = {
        "kind": "linear",
        "estimator": f"{type(est).__module__}.{type(est).__name__}",
        "features": list(features),
        "coef": [float(c) for c in np.ravel(est.coef_)],
        "intercept": float(np.ravel(est.intercept_)[0]),
        "missing": "NaN and infinities are replaced by 0 before predicting",
    }
    return canonical_json(doc).encode("utf-8")


def stacking_files(result: StackingResult) -> dict[str, bytes]:
    """The stack's files in native formats only (no pickle), deterministic bytes, by name:
    ``lightgbm.txt``, ``xgboost.json``, ``{extra}.json`` (linear extras),
    ``meta_learner.json``, ``model_card.json``, ``test_predictions.parquet``,
    ``evaluation.json``. The store writes them into the attempt's ``stacking/`` folder."""
    files = {
        _model_file(name): _model_bytes(name, result.boosters[name], result.features[name])
        for name in result.base_models
    }
    evaluation = {
        "target": result.target,
        "horizon": result.horizon,
        "test_metrics": result.test_metrics,
        "meta_validation": result.meta_validation,
        "weights": result.weights,
    }
    files[FILES["meta"]] = json_bytes(
        {**result.meta, "target": result.target, "horizon": result.horizon}
    )
    files[FILES["card"]] = json_bytes(result.model_card)
    files[FILES["predictions"]] = prediction_parquet_bytes(result.test_predictions)
    files[FILES["evaluation"]] = json_bytes(evaluation)
    return dict(sorted(files.items()))


@dataclass(frozen=True)
class LinearModel:
    """A linear scikit-learn extra read back from its JSON coefficients."""

    coef: np.ndarray
    intercept: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.intercept + np.asarray(x, dtype=np.float64) @ self.coef


@dataclass(frozen=True)
class LoadedStack:
    """A stack read from its folder: native boosters, linear coefficients, the meta JSON."""

    target: str
    horizon: int
    base_models: tuple[str, ...]
    features: Mapping[str, tuple[str, ...]]
    models: Mapping[str, Any]
    meta: MetaLearner
    model_card: dict

    def predict_base(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``pred_{model}`` per base model for the rows of ``frame`` (feature columns by name)."""
        out = {}
        for name in self.base_models:
            x = feature_matrix(frame, self.features[name])
            model = self.models[name]
            if name == "lightgbm":
                pred = model.predict(x)
            elif name == "xgboost":
                pred = model.inplace_predict(x)
            else:
                pred = model.predict(model_input(name, x))
            out[pred_column(name)] = np.asarray(pred, dtype=np.float64)
        return pd.DataFrame(out, index=frame.index)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """The stack's prediction per row of ``frame``: a return, or P(y > 0) if logistic."""
        base = self.predict_base(frame)
        return self.meta.predict(base[list(self.meta.columns)].to_numpy())


def stack_from_files(read: Callable[[str], bytes]) -> LoadedStack:
    """A stack from its files, ``read(name)`` giving each file's bytes (see
    :func:`stacking_files`); parses files only, runs no code.

    LightGBM text and XGBoost JSON go to their own loaders (``lgb.Booster(model_str=...)``,
    ``xgb.Booster().load_model(...)``), linear extras and the meta-learner are JSON numbers.
    File names come from the model names, never from paths stored in the card.
    """
    import lightgbm as lgb
    import xgboost as xgb

    card = parse_json(FILES["card"], read(FILES["card"]))
    meta = MetaLearner.from_dict(parse_json(FILES["meta"], read(FILES["meta"])))
    models: dict[str, Any] = {}
    for name in card["base_models"]:
        data = read(_model_file(validate_name("model", name)))
        if name == "lightgbm":
            models[name] = lgb.Booster(model_str=data.decode("utf-8"))
        elif name == "xgboost":
            booster = xgb.Booster()
            booster.load_model(bytearray(data))
            models[name] = booster
        else:
            doc = parse_json(_model_file(name), data)
            models[name] = LinearModel(
                np.asarray(doc["coef"], dtype=np.float64), float(doc["intercept"])
            )
    return LoadedStack(
        target=card["target"],
        horizon=int(card["horizon"]),
        base_models=tuple(card["base_models"]),
        features={m: tuple(f) for m, f in card["model_features"].items()},
        models=models,
        meta=meta,
        model_card=card,
    )
