"""Out-of-fold (OOF) predictions on one shared purged fold plan (stage TRAINING).

Every base model is fitted on the same purged folds (``PurgedKFold(n_splits, horizon,
embargo)`` over the training dates), so each OOF row was predicted by a model whose
training rows exclude the row itself, every row whose label window overlaps its label
window, and the embargo after its fold. The OOF columns are what the stacking
meta-learner trains on; nothing downstream refits base models to recreate them.

Speed: the feature matrix is built once as a contiguous float32 array and folds are cut
with numpy indexing, once per fold and feature set (shared by models that read the same
columns), so the cost is the model fits themselves (see ``bench/bench_oof.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cohortflow import metrics
from cohortflow.canonical import normalize, sha256_hex
from cohortflow.errors import CohortflowError
from cohortflow.formats import prediction_parquet_bytes, read_parquet
from cohortflow.fsio import atomic_write_bytes
from cohortflow.layout import as_root
from cohortflow.models import (
    base_model_names,
    fit_counted,
    make_base_model,
    map_parallel,
    parallel_settings,
)
from cohortflow.names import validate_name
from cohortflow.settings import Settings
from cohortflow.splits import FoldPlan, PurgedKFold, make_fold_plan

log = logging.getLogger(__name__)

OOF_KEY_COLUMNS = ("timestamp", "symbol", "fold", "y_true")
PRED_PREFIX = "pred_"
TREE_MODELS = ("lightgbm", "xgboost")


class TuningUnavailableError(CohortflowError, ImportError):
    """``settings.tune`` is on but the optional tuning dependency is not installed."""


@dataclass(frozen=True)
class OOFResult:
    """OOF predictions of every base model on one fold plan.

    ``frame``: timestamp, symbol, fold (int32), y_true, ``pred_{model}`` per base model;
    only rows that were out of fold; sorted by timestamp then symbol.
    ``fold_metrics``: one dict per fold and model (fold, model, n_train, n_test rows, r2,
    ic, rank_ic). ``params``: the hyper-parameters each model was fitted with beyond the
    settings' defaults (tuned ones, or the ones passed in). ``features``: the feature
    columns each model read, in order.
    """

    frame: pd.DataFrame
    fold_plan: FoldPlan
    fold_metrics: tuple[dict, ...]
    models: tuple[str, ...]
    params: Mapping[str, dict] = field(default_factory=dict)
    features: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def pred_columns(self) -> tuple[str, ...]:
        return tuple(pred_column(m) for m in self.models)


def pred_column(model: str) -> str:
    return f"{PRED_PREFIX}{model}"


def label_end_column(horizon: int) -> str:
    return f"label_end_{int(horizon)}"


# --------------------------------------------------------------------------- inputs


def labelled_rows(frame: pd.DataFrame, target: str, horizon: int) -> pd.DataFrame:
    """The rows of a panel that carry a label: finite ``target`` and a ``label_end``.

    Rows at the end of each symbol's history have no future bar, hence no label; they
    can neither be fitted nor scored. Returns a frame with a fresh 0..n-1 index.
    """
    missing = [
        c for c in ("timestamp", "symbol", target, label_end_column(horizon)) if c not in frame
    ]
    if missing:
        raise ValueError(f"panel is missing column(s) {missing} needed for target {target!r}")
    y = frame[target].to_numpy(dtype=np.float64)
    keep = np.isfinite(y) & frame[label_end_column(horizon)].notna().to_numpy()
    if keep.all():  # already labelled (e.g. a training window): no copy of the data
        return frame.reset_index(drop=True)
    return frame.loc[keep].reset_index(drop=True)


def feature_matrix(frame: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    """Features as one C-contiguous float32 array (rows x features); NaN stays NaN."""
    missing = [f for f in features if f not in frame]
    if missing:
        raise ValueError(f"panel is missing feature column(s) {missing}")
    return np.ascontiguousarray(frame[list(features)].to_numpy(dtype=np.float32))


def resolve_model_features(
    models: Sequence[str],
    features: Sequence[str],
    model_features: Mapping[str, Sequence[str]] | None,
) -> dict[str, tuple[str, ...]]:
    """Feature columns per model: all ``features`` unless ``model_features`` names a subset."""
    features = tuple(features)
    if not features:
        raise ValueError("no features given")
    if len(set(features)) != len(features):
        raise ValueError(f"features repeat a column: {list(features)}")
    out: dict[str, tuple[str, ...]] = {}
    for name in models:
        subset = tuple((model_features or {}).get(name, features))
        unknown = [f for f in subset if f not in features]
        if unknown or not subset:
            raise ValueError(f"model {name!r}: feature subset {list(subset)} not within features")
        out[name] = subset
    extra = sorted(set(model_features or {}) - set(models))
    if extra:
        raise ValueError(f"model_features names unknown model(s) {extra}; models: {list(models)}")
    return out


def model_input(name: str, x: np.ndarray) -> np.ndarray:
    """What a model sees: trees handle NaN natively; scikit-learn extras get NaN -> 0.

    Zero is a fixed constant (no statistic of any rows), so the fill cannot leak.
    """
    if name in TREE_MODELS:
        return x
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def fit_base_model(
    name: str,
    settings: Settings,
    x: np.ndarray,
    y: np.ndarray,
    params: Mapping[str, Any] | None = None,
):
    """A fresh base model with the settings' deterministic parameters, fitted on (x, y)."""
    est = make_base_model(name, settings)
    if params:
        est.set_params(**dict(params))
    return fit_counted(est, _on_model_device(name, est, model_input(name, x)), y)


def predict_base_model(name: str, est: Any, x: np.ndarray) -> np.ndarray:
    pred = est.predict(_on_model_device(name, est, model_input(name, x)))
    if hasattr(pred, "get"):  # a CuPy array: back to host memory
        pred = pred.get()
    return np.asarray(pred, dtype=np.float64)


def _on_model_device(name: str, est: Any, x: np.ndarray) -> Any:
    """``x`` where the model computes: on the GPU (CuPy, when installed) for an XGBoost model
    with ``device="cuda"``, else unchanged.

    From host memory XGBoost sketches the quantiles on the CPU and predicts through a host
    copy ("mismatched devices"), which costs several times the GPU fit itself (see
    bench/gpu_oof.py). Same values either way: only where they live changes.
    """
    if name != "xgboost" or not str(est.get_params().get("device", "cpu")).startswith("cuda"):
        return x
    try:
        import cupy
    except ImportError:
        return x
    return cupy.asarray(x)


# --------------------------------------------------------------------------- OOF


def default_fold_plan(labelled: pd.DataFrame, horizon: int, settings: Settings) -> FoldPlan:
    """The one purged k-fold plan over the training dates, shared by every base model."""
    splitter = PurgedKFold(settings.n_splits, horizon, settings.embargo_for(horizon))
    return make_fold_plan(
        splitter,
        labelled["timestamp"].to_numpy(),
        label_end=labelled[label_end_column(horizon)].to_numpy(),
    )


def _check_plan(plan: FoldPlan, labelled: pd.DataFrame) -> np.ndarray:
    """Validate ``plan`` against the labelled rows; return each row's test fold (-1: none)."""
    n = len(labelled)
    plan_ts = np.asarray(plan.timestamps, dtype="datetime64[ns]")
    rows_ts = labelled["timestamp"].to_numpy(dtype="datetime64[ns]")
    if len(plan_ts) != n or not np.array_equal(plan_ts, rows_ts):
        raise ValueError(
            f"fold plan covers {len(plan_ts)} rows but the training frame has {n} labelled rows "
            "with other timestamps; build the plan on the labelled training rows"
        )
    fold_of = np.full(n, -1, dtype=np.int32)
    for fold in plan.folds:
        test = np.asarray(fold.test_idx)
        if np.any(fold_of[test] >= 0):
            raise ValueError(f"fold plan: fold {fold.fold} re-tests rows of an earlier fold")
        fold_of[test] = fold.fold
    return fold_of


def generate_oof(
    train: pd.DataFrame,
    target: str,
    horizon: int,
    features: Sequence[str],
    settings: Settings,
    plan: FoldPlan | None = None,
    params: Mapping[str, dict] | None = None,
    *,
    model_features: Mapping[str, Sequence[str]] | None = None,
) -> OOFResult:
    """OOF predictions of every base model on one purged fold plan of ``train``.

    ``train``: the training window of a panel (never the held-out test period). Rows
    without a label are dropped first; ``plan`` (if given) must index the remaining rows.
    ``horizon`` and the embargo are in bars. ``params``: per-model hyper-parameters over
    the settings' defaults; when ``None`` and ``settings.tune`` is on they are tuned on
    the training rows (:func:`tune_params`). ``model_features``: optional feature subset
    per model (default: every model reads all ``features``).
    """
    validate_name("target", target)
    models = base_model_names(settings)
    for name in models:
        validate_name("model", name)
    per_model = resolve_model_features(models, features, model_features)
    labelled = labelled_rows(train, target, horizon)
    if plan is None:
        plan = default_fold_plan(labelled, horizon, settings)
    fold_of = _check_plan(plan, labelled)
    # nested tuning: each fold's models are tuned on that fold's training rows only, so no
    # OOF prediction comes from parameters chosen with its own row; ``params`` (tuned on
    # the whole training window) is what the stack's refit uses
    fold_params: dict[int, dict[str, dict]] = {}
    if params is None and settings.tune:
        for fold in plan.folds:
            fold_params[fold.fold] = tune_params(
                labelled.iloc[np.asarray(fold.train_idx)], target, horizon, features, settings,
                model_features=model_features,
            )  # fmt: skip
        params = tune_params(
            labelled, target, horizon, features, settings, model_features=model_features
        )
    params = {m: dict((params or {}).get(m, {})) for m in models}

    y = labelled[target].to_numpy(dtype=np.float64)
    x_all = feature_matrix(labelled, features)
    col_index = {f: i for i, f in enumerate(features)}
    # one matrix per distinct feature subset, so models reading the same columns share it
    matrices: dict[tuple[str, ...], np.ndarray] = {}
    for subset in per_model.values():
        if subset not in matrices:
            cols = [col_index[f] for f in subset]
            full = subset == tuple(features)
            matrices[subset] = x_all if full else np.ascontiguousarray(x_all[:, cols])

    # folds side by side share the settings' threads: n_threads // fold_workers a fit
    fit_settings, workers = parallel_settings(settings, len(plan.folds))

    def fit_fold(fold: Any) -> dict[str, np.ndarray]:
        """Every model's predictions on the fold's test rows, fitted on its training rows."""
        tr, te = np.asarray(fold.train_idx), np.asarray(fold.test_idx)
        started = time.perf_counter()
        cut: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
        out = {}
        for name in models:
            subset = per_model[name]
            if subset not in cut:
                cut[subset] = (matrices[subset][tr], matrices[subset][te])
            x_tr, x_te = cut[subset]
            est = fit_base_model(
                name, fit_settings, x_tr, y[tr], fold_params.get(fold.fold, params)[name]
            )
            out[name] = predict_base_model(name, est, x_te)
        # INFO: a run's page shows each fold as it ends (the step's only sign of life)
        log.info(
            "OOF %s fold %d/%d: %s fitted on %d rows, %d predicted, %.1f s",
            target,
            fold.fold + 1,
            len(plan.folds),
            "+".join(models),
            len(tr),
            len(te),
            time.perf_counter() - started,
        )
        return out

    preds = {m: np.full(len(labelled), np.nan) for m in models}
    for fold, fold_preds in zip(
        plan.folds, map_parallel(fit_fold, plan.folds, workers), strict=True
    ):
        te = np.asarray(fold.test_idx)
        for name in models:
            preds[name][te] = fold_preds[name]

    oof_rows = fold_of >= 0
    frame = pd.DataFrame(
        {
            "timestamp": labelled["timestamp"].to_numpy(dtype="datetime64[ns]")[oof_rows],
            "symbol": labelled["symbol"].to_numpy()[oof_rows],
            "fold": fold_of[oof_rows],
            "y_true": y[oof_rows],
            **{pred_column(m): preds[m][oof_rows] for m in models},
        }
    )
    frame = frame.sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)
    fold_metrics = _fold_metrics(plan, labelled, y, preds, models, fold_of)
    if fold_params:
        fold_metrics = tuple(
            {**m, "params": fold_params[m["fold"]][m["model"]]} for m in fold_metrics
        )
    log.info("OOF %s: %d rows, %d folds, models %s", target, len(frame), len(plan.folds), models)
    return OOFResult(
        frame=frame,
        fold_plan=plan,
        fold_metrics=fold_metrics,
        models=models,
        params=params,
        features=per_model,
    )


def _fold_metrics(
    plan: FoldPlan,
    labelled: pd.DataFrame,
    y: np.ndarray,
    preds: Mapping[str, np.ndarray],
    models: Sequence[str],
    fold_of: np.ndarray,
) -> tuple[dict, ...]:
    """n_train, n_test, r2, ic, rank_ic per fold and model.

    Folds are sets of whole dates, so the per-date IC series of all OOF rows, cut by the
    fold of each date, gives every fold's mean IC: one IC pass per model, not per fold.
    """
    rows = np.flatnonzero(fold_of >= 0)
    ts = labelled["timestamp"].to_numpy(dtype="datetime64[ns]")[rows]
    folds = fold_of[rows]
    date_fold = pd.Series(folds, index=ts).groupby(level=0).first()
    out = []
    per_model = {}
    for name in models:
        p = preds[name][rows]
        means = {}
        for key, method in (("ic", "pearson"), ("rank_ic", "spearman")):
            series = metrics.ic_by_date(ts, p, y[rows], method)
            means[key] = series.groupby(date_fold.reindex(series.index).to_numpy()).mean()
        per_model[name] = means
    for fold in plan.folds:
        te = np.asarray(fold.test_idx)
        for name in models:
            means = per_model[name]
            out.append(
                {
                    "fold": int(fold.fold),
                    "model": name,
                    "n_train": len(fold.train_idx),
                    "n_test": len(te),
                    "r2": metrics.r2(y[te], preds[name][te]),
                    "ic": float(means["ic"].get(fold.fold, np.nan)),
                    "rank_ic": float(means["rank_ic"].get(fold.fold, np.nan)),
                }
            )
    return tuple(out)


# --------------------------------------------------------------------------- parquet


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Deterministic Parquet bytes of a prediction frame (:mod:`cohortflow.formats`)."""
    return prediction_parquet_bytes(frame)


def write_oof_parquet(frame: pd.DataFrame, path: str | Path) -> str:
    """Write the OOF frame to ``path`` (atomically) with deterministic bytes; return their sha256.

    Columns are written in the fixed order timestamp, symbol, fold, y_true, then the
    ``pred_`` columns in the frame's order; anything else is refused.
    """
    preds = [c for c in frame.columns if c.startswith(PRED_PREFIX)]
    other = [c for c in frame.columns if c not in OOF_KEY_COLUMNS and c not in preds]
    missing = [c for c in OOF_KEY_COLUMNS if c not in frame]
    if missing or other or not preds:
        raise ValueError(
            f"OOF frame columns {list(frame.columns)}: need {list(OOF_KEY_COLUMNS)} and at "
            f"least one {PRED_PREFIX}* column (missing {missing}, unexpected {other})"
        )
    data = parquet_bytes(frame[list(OOF_KEY_COLUMNS) + preds])
    atomic_write_bytes(path, data)
    return sha256_hex(data)


def read_oof_parquet(path: str | Path) -> pd.DataFrame:
    """Read an OOF (or prediction) Parquet file (local path or UPath); timestamps come back
    as datetime64[ns]; a file that is not Parquet fails naming it."""
    return read_parquet(as_root(path))


# --------------------------------------------------------------------------- tuning

# (parameter, kind, low, high, log-scale); parameter names of the scikit-learn wrappers
SEARCH_SPACES: dict[str, tuple[tuple[str, str, float, float, bool], ...]] = {
    "lightgbm": (
        ("learning_rate", "float", 0.01, 0.2, True),
        ("num_leaves", "int", 7, 63, True),
        ("min_child_samples", "int", 10, 200, True),
        ("colsample_bytree", "float", 0.4, 1.0, False),
        ("reg_lambda", "float", 1e-3, 10.0, True),
    ),
    "xgboost": (
        ("learning_rate", "float", 0.01, 0.2, True),
        ("max_depth", "int", 2, 8, False),
        ("min_child_weight", "float", 1.0, 20.0, True),
        ("colsample_bytree", "float", 0.4, 1.0, False),
        ("reg_lambda", "float", 1e-3, 10.0, True),
    ),
}
INNER_SPLITS = 3


def _require_optuna():
    try:
        import optuna
    except ImportError as exc:
        raise TuningUnavailableError(
            "settings.tune is on but optuna is not installed; install the tuning extra: "
            "pip install cohortflow[tune]"
        ) from exc
    return optuna


def _suggest(trial: Any, spec: tuple[str, str, float, float, bool]) -> Any:
    name, kind, low, high, log_scale = spec
    if kind == "int":
        return trial.suggest_int(name, int(low), int(high), log=log_scale)
    return trial.suggest_float(name, float(low), float(high), log=log_scale)


def tune_params(
    train: pd.DataFrame,
    target: str,
    horizon: int,
    features: Sequence[str],
    settings: Settings,
    *,
    model_features: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, dict]:
    """Hyper-parameters per base model, searched with optuna on the training rows only.

    Each trial is scored by its mean squared error over an inner purged k-fold split
    (``INNER_SPLITS`` folds, same horizon and embargo) of ``train``; the held-out test
    period is never seen. Models without a search space (scikit-learn extras) get ``{}``.
    The sampler is seeded from ``settings.seed``, so the search is reproducible. The
    caller saves the result as JSON beside the OOF dataset.
    """
    optuna = _require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    labelled = labelled_rows(train, target, horizon)
    models = base_model_names(settings)
    per_model = resolve_model_features(models, features, model_features)
    inner = make_fold_plan(
        PurgedKFold(INNER_SPLITS, horizon, settings.embargo_for(horizon)),
        labelled["timestamp"].to_numpy(),
        label_end=labelled[label_end_column(horizon)].to_numpy(),
    )
    y = labelled[target].to_numpy(dtype=np.float64)
    out: dict[str, dict] = {}
    for name in models:
        space = SEARCH_SPACES.get(name)
        if not space:
            out[name] = {}
            continue
        x = feature_matrix(labelled, per_model[name])

        def objective(
            trial: Any, name: str = name, space: tuple = space, x: np.ndarray = x
        ) -> float:
            params = {spec[0]: _suggest(trial, spec) for spec in space}
            errors = []
            for fold in inner.folds:
                tr, te = np.asarray(fold.train_idx), np.asarray(fold.test_idx)
                est = fit_base_model(name, settings, x[tr], y[tr], params)
                errors.append(float(np.mean((predict_base_model(name, est, x[te]) - y[te]) ** 2)))
            return float(np.mean(errors))

        sampler = optuna.samplers.TPESampler(seed=settings.seed)
        study = optuna.create_study(direction="minimize", sampler=sampler)
        study.optimize(objective, n_trials=settings.tune_trials)
        # rounded as canonical JSON keeps them: the saved file is exactly what was used
        out[name] = normalize(dict(sorted(study.best_params.items())))
        log.info("tuned %s for %s: %s", name, target, out[name])
    return out
