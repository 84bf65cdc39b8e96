"""Base-model factories with deterministic settings: every module that fits a tree model
gets it here, so seeds, threads and device are set in one place.

Native scikit-learn wrappers are used (``LGBMRegressor``, ``XGBRegressor``); boosters are
saved in their own formats (LightGBM text, XGBoost JSON) by the stacking module.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cohortflow import fitlog
from cohortflow.settings import Settings

# LightGBM/OpenMP threads spin-wait between parallel regions by default; on a 2-core
# machine shared with XGBoost's own pool that stalls fits several-fold. Passive waiting
# costs nothing measurable when the cores are free.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BASE_MODELS = ("lightgbm", "xgboost")

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


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
        force_col_wise=True,
        verbose=-1,
    )
    device = lightgbm_device(settings)
    if device != "cpu":
        params["device_type"] = device
    return lgb.LGBMRegressor(**params)


def lightgbm_params(
    settings: Settings, n_estimators: int | None = None, seed_offset: int = 0
) -> dict[str, Any]:
    """LightGBM's native parameters (``lgb.train``) of :func:`lightgbm_regressor`: the same
    trees (``tests/test_models.py``). ``num_iterations`` is the number of rounds."""
    m = settings.models
    params: dict[str, Any] = dict(
        objective="regression",
        num_iterations=n_estimators or m.n_estimators,
        learning_rate=m.learning_rate,
        num_leaves=m.num_leaves,
        max_depth=m.max_depth,
        min_data_in_leaf=m.min_child_samples,
        min_sum_hessian_in_leaf=1e-3,
        bagging_fraction=m.subsample,
        bagging_freq=1,
        feature_fraction=m.colsample,
        lambda_l2=m.reg_lambda,
        seed=settings.seed + seed_offset,
        num_threads=settings.n_threads,
        deterministic=True,
        force_col_wise=True,
        verbose=-1,
    )
    device = lightgbm_device(settings)
    if device != "cpu":
        params["device_type"] = device
    return params


#: rows of the float64 block a binned dataset is built from at a time
BIN_CHUNK_ROWS = 100_000


def lightgbm_binned(
    matrix: Callable[[Any], Any], n_rows: int, label: Any, params: dict[str, Any]
) -> Any:
    """One LightGBM ``Dataset`` of ``n_rows`` rows, binned once: its folds are
    ``dataset.subset(rows)`` (the bins, no second pass over the floats). ``matrix(idx)``
    gives the float rows at positions ``idx``; they are read ``BIN_CHUNK_ROWS`` at a time,
    so no float matrix of every row is held, and dropped once binned."""
    import lightgbm as lgb
    import numpy as np

    chunks = [
        matrix(np.arange(a, min(a + BIN_CHUNK_ROWS, n_rows)))
        for a in range(0, n_rows, BIN_CHUNK_ROWS)
    ]
    data = chunks[0] if len(chunks) == 1 else chunks
    params = {k: v for k, v in params.items() if k != "num_iterations"}  # a fit's, not data's
    return lgb.Dataset(data, label=label, params=params, free_raw_data=True).construct()


_subset_lock = threading.Lock()


def train_lightgbm(params: dict[str, Any], binned: Any, rows: Any) -> Any:
    """A LightGBM booster fitted on the rows ``rows`` (sorted positions) of the binned
    dataset ``binned`` (:func:`lightgbm_binned`), reported to :mod:`cohortflow.fitlog`."""
    import lightgbm as lgb

    params = dict(params)
    rounds = int(params.pop("num_iterations"))
    with _subset_lock:  # one subset at a time is taken from the shared dataset
        part = binned.subset(rows, params=params).construct()
    booster = lgb.train(params, part, num_boost_round=rounds)
    fitlog.record("lightgbm", len(rows), booster.current_iteration())
    return booster


def lightgbm_device(settings: Settings) -> str:
    """LightGBM's ``device_type`` for these settings.

    ``device: cpu`` keeps it on the CPU. Under ``device: cuda``, ``lightgbm_device`` picks:
    ``cuda`` (a LightGBM built with ``-DUSE_CUDA=1``), ``gpu`` (the OpenCL learner the PyPI
    wheel has: single-precision histograms, so slightly different trees), ``cpu``, or
    ``auto``: CUDA when this LightGBM can train on it, else the CPU with one warning (the
    PyPI wheel has no CUDA learner; XGBoost still trains on the GPU).
    """
    if settings.device != "cuda":
        return "cpu"
    if settings.lightgbm_device != "auto":
        return settings.lightgbm_device
    return "cuda" if lightgbm_has_cuda() else "cpu"


@functools.cache
def lightgbm_has_cuda() -> bool:
    """Whether this LightGBM trains with ``device_type="cuda"`` here (a one-round probe)."""
    import lightgbm as lgb
    import numpy as np

    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    try:
        lgb.train(
            {"device_type": "cuda", "verbose": -1, "num_leaves": 2, "min_data_in_leaf": 1},
            lgb.Dataset(x, label=x[:, 0]),
            num_boost_round=1,
        )
    except lgb.basic.LightGBMError as exc:
        reason = str(exc).strip().splitlines()[0]
        logger.warning(
            "device: cuda, but LightGBM cannot train on CUDA here (%s); LightGBM stays on "
            "the CPU, XGBoost uses the GPU. Set lightgbm_device: gpu for LightGBM's OpenCL "
            "learner, or install a LightGBM built with -DUSE_CUDA=1.",
            reason,
        )
        return False
    return True


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


def trained_rounds(est: Any) -> int | None:
    """Boosting rounds a fitted LightGBM or XGBoost model trained (after early stopping, the
    rounds it ran, not the best iteration); ``None`` for anything else."""
    if hasattr(est, "get_booster"):  # XGBoost
        return int(est.get_booster().num_boosted_rounds())
    booster = getattr(est, "_Booster", None)
    if booster is not None and hasattr(booster, "current_iteration"):  # LightGBM
        # after early stopping LightGBM keeps only the best rounds; its evaluation history
        # has one entry per round it trained
        history = [
            len(v) for d in (getattr(est, "evals_result_", None) or {}).values() for v in d.values()
        ]
        return max([int(booster.current_iteration()), *history])
    return None


def fit_counted(est: Any, x: Any, y: Any, **fit_kw: Any) -> Any:
    """``est.fit(x, y, **fit_kw)``, reporting its row-rounds to :mod:`cohortflow.fitlog`."""
    est.fit(x, y, **fit_kw)
    rounds = trained_rounds(est)
    if rounds is not None:
        kind = "xgboost" if hasattr(est, "get_booster") else "lightgbm"
        fitlog.record(kind, len(y), rounds)
    return est


def parallel_settings(settings: Settings, n_jobs: int) -> tuple[Settings, int]:
    """(settings for each job, workers): up to ``settings.fold_workers`` jobs at once, the
    ``n_threads`` shared among them (at least 1 a job).

    Small fits gain little from a second thread (LightGBM's binning and its per-tree
    OpenMP barriers are largely serial: a 41,000-row fit took 1.3 s on one thread and 0.9 s
    on two), so two fits side by side on one thread each do more in the same time."""
    workers = max(1, min(settings.fold_workers, n_jobs))
    return settings.replace(n_threads=max(1, settings.n_threads // workers)), workers


def map_parallel(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``[fn(x) for x in items]``, ``workers`` at once (threads: LightGBM and XGBoost release
    the GIL while they fit and predict), results in the order of ``items``.

    The fits are seeded and thread-count invariant (LightGBM ``deterministic=True``,
    XGBoost ``hist``), so the results are the same with any number of workers.

    BLAS (OpenBLAS) runs single-threaded meanwhile: its idle threads spin after each call
    (the ridge of target ranking), and beside LightGBM's and XGBoost's threads on two
    cores that spinning cost up to half the wall time of a ranking; the ridge's small
    matrix products lose nothing by it."""
    from threadpoolctl import ThreadpoolController

    with ThreadpoolController().limit(limits=1, user_api="blas"):
        if workers <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cohortflow-fold") as pool:
            return list(pool.map(fn, items))


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
