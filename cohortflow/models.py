"""Base-model factories with deterministic settings: every module that fits a tree model
gets it here, so seeds, threads and device are set in one place.

Native scikit-learn wrappers are used (``LGBMRegressor``, ``XGBRegressor``); boosters are
saved in their own formats (LightGBM text, XGBoost JSON) by the stacking module.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from cohortflow.settings import Settings

# LightGBM/OpenMP threads spin-wait between parallel regions by default; on a 2-core
# machine shared with XGBoost's own pool that stalls fits several-fold. Passive waiting
# costs nothing measurable when the cores are free.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BASE_MODELS = ("lightgbm", "xgboost")


def lightgbm_regressor(settings: Settings, n_estimators: int | None = None, seed_offset: int = 0):
    import lightgbm as lgb

    m = settings.models
    params: dict[str, Any] = dict(
        n_estimators=n_estimators or m.n_estimators,
        learning_rate=m.learning_rate,
        num_leaves=m.num_leaves,
        max_depth=m.max_depth,
        min_child_samples=m.min_child_samples,
        subsample=m.subsample,
        subsample_freq=1,
        colsample_bytree=m.colsample,
        reg_lambda=m.reg_lambda,
        random_state=settings.seed + seed_offset,
        n_jobs=settings.n_threads,
        deterministic=True,
        force_row_wise=True,
        verbose=-1,
    )
    if settings.device == "cuda":
        params["device_type"] = "cuda"
    return lgb.LGBMRegressor(**params)


def xgboost_regressor(settings: Settings, n_estimators: int | None = None, seed_offset: int = 0):
    import xgboost as xgb

    m = settings.models
    return xgb.XGBRegressor(
        n_estimators=n_estimators or m.n_estimators,
        learning_rate=m.learning_rate,
        max_depth=m.max_depth,
        min_child_weight=float(m.min_child_samples) / 10.0,
        subsample=m.subsample,
        colsample_bytree=m.colsample,
        reg_lambda=m.reg_lambda,
        tree_method="hist",
        device=settings.device,
        random_state=settings.seed + seed_offset,
        n_jobs=settings.n_threads,
        verbosity=0,
    )


def sklearn_regressor(dotted: str, settings: Settings):
    """A scikit-learn regressor named by import path, e.g. ``sklearn.linear_model.Ridge``."""
    module, _, name = dotted.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    est = cls()
    if "random_state" in est.get_params():
        est.set_params(random_state=settings.seed)
    return est


def base_model_names(settings: Settings) -> tuple[str, ...]:
    """Names of the base models (path parts of pred_{model} columns and model files)."""
    extra = tuple(d.rpartition(".")[2].lower() for d in settings.models.extra_sklearn)
    return BASE_MODELS + extra


def make_base_model(name: str, settings: Settings, n_estimators: int | None = None):
    if name == "lightgbm":
        return lightgbm_regressor(settings, n_estimators)
    if name == "xgboost":
        return xgboost_regressor(settings, n_estimators)
    for dotted in settings.models.extra_sklearn:
        if dotted.rpartition(".")[2].lower() == name:
            return sklearn_regressor(dotted, settings)
    raise KeyError(f"unknown base model {name!r}; known: {base_model_names(settings)}")
