"""Feature selection from several models, in both views -> importances + :class:`Featureset`.

Importances (:func:`compute_importances`), each averaged over the folds of
``PurgedKFold(n_splits, h, embargo)``:

- ``lightgbm``: total split gain of a LightGBM model fitted on the fold's training rows
  (the view's rows are binned once; each fold fits on its subset of those bins);
- ``xgboost``: total gain (``importance_type="total_gain"``) of one XGBoost model fitted on
  the view's rows: a gain is read from the rows a model learned from, so one fit on all of
  them ranks as the mean over the folds' fits did, at a fifth of the fitting;
- ``permutation``: the drop in rank IC of the fold's LightGBM model on its held-out (purged)
  test rows when one column is shuffled (``settings.permutation_repeats`` seeded shuffles);
  only the trees that split on the shuffled column are evaluated again, and the prediction
  is summed from leaf values in LightGBM's order, so the numbers are bit for bit those of
  the whole model on the shuffled rows at about a fifth of the cost;
- ``combined``: the mean rank over the three, as ``importance = 1 - (mean_rank - 1) / (F - 1)``
  (1 = first in every model, 0 = last in every model), so "higher is better" holds for all.

Random probe columns (``probe_0`` ...) are fitted alongside the features: they show what
importance pure noise earns in the same models, on the same rows. They are seeded per-symbol
AR(1) series with persistence spread from 0 to 0.99 (``1 - 10**(-2i/(n-1))``): real features
are often persistent (volatility, moving averages), and a persistent series earns tree gain
from fitting whole periods (the shared market move of overlapping labels) that i.i.d. noise
never earns -- i.i.d. probes would make persistent noise look informative.

Pruning (:func:`prune`), in this order and deterministic:

1. excluded (leaking) features are dropped ("excluded_leak");
2. **probe rule** ("below_probe"): a feature is kept only if its permutation importance is above
   every probe's (and above 0). The comparison is made on held-out permutation importance, not
   on gain: gain rewards any persistent series for fitting whole periods of the training rows
   (on our panels the 0.99-persistence probe is often the top *gain* feature), while held-out
   rows only reward what generalises across the purge gap;
3. **consistency** ("inconsistent"): that importance must also hold fold after fold -- its mean
   over the folds at least ``PERM_MIN_T`` standard errors above 0 -- and ("negligible") carry at
   least ``MIN_PERM_SHARE`` of the total positive permutation importance;
4. **near-duplicates** ("correlated"): walking down the combined ranking, a feature whose
   ``|spearman|`` with an already kept feature exceeds ``settings.corr_threshold`` is dropped
   (the more important one stays);
5. never empty: if nothing survives, the top feature by combined rank is kept.

Kept features are listed in combined order. The permutation frame carries one more column,
``t_stat`` (mean / standard error over folds), which step 3 reads.

The fold models (and the XGBoost model) are fitted with ``settings.quick_estimators`` trees
on at most ``IMPORTANCE_MAX_TRAIN_ROWS`` training rows (seeded subset): they rank features,
they are not the models we evaluate. Folds run side by side (``settings.fold_workers``, the threads
shared; the fits are thread-count invariant), and :func:`compute_importances_many` runs the
folds of several views (the pooled one and the symbol views) as one batch.
:func:`cached_importances` reads a result computed before on the same inputs
(:mod:`cohortflow.memo`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cohortflow import fitlog
from cohortflow.canonical import normalize
from cohortflow.leakage import average_ranks, group_corr, symbol_codes
from cohortflow.memo import ResultCache, columns_fingerprint, memo_key
from cohortflow.models import (
    fit_counted,
    lightgbm_binned,
    lightgbm_params,
    map_parallel,
    parallel_settings,
    train_lightgbm,
    xgboost_regressor,
)
from cohortflow.names import validate_name
from cohortflow.settings import Settings
from cohortflow.splits import PurgedKFold, subsample

log = logging.getLogger(__name__)

MODELS = ("lightgbm", "xgboost", "permutation")
COMBINED = "combined"
VIEWS = ("CROSS_SECTIONAL", "SYMBOL_SPECIFIC")
PROBE_PREFIX = "probe_"

# Importance models are fitted on at most this many training rows per fold, and permutation
# importance is scored on at most this many held-out rows per fold: seeded uniform subsets
# (uniform over dates and symbols; a fixed stride could alias with the number of symbols).
# Gain rankings are stable long before 200k rows, and the rank IC of 20k rows has a sampling
# sd near 0.007 -- plenty to order features -- while a 500-symbol x 2500-bar panel would
# otherwise cost minutes per fold. The evaluated models (OOF, stacking) use every row.
IMPORTANCE_MAX_TRAIN_ROWS = 200_000
PERMUTATION_MAX_ROWS = 20_000
# Spearman correlations for the near-duplicate rule use at most this many rows (seeded subset):
# the sd of rho at 200k rows is ~0.002, far below any sensible threshold margin.
CORR_MAX_ROWS = 200_000
# A kept feature's permutation importance must be positive fold after fold: its mean over the
# folds at least this many standard errors above 0 (noise that won one fold by luck is not).
PERM_MIN_T = 2.0
# ... and carry at least this share of the positive permutation importance: on a panel of a
# million rows, noise can be "consistent" at a 1/1000 of a real signal's importance.
MIN_PERM_SHARE = 0.01


# --------------------------------------------------------------------------------------------
# importances


def _importance_frame(features: Sequence[str], values: np.ndarray) -> pd.DataFrame:
    """feature, importance, rank (1 = most important; ties by name), share of positive total."""
    df = pd.DataFrame({"feature": list(features), "importance": np.asarray(values, dtype=float)})
    df = df.sort_values(["importance", "feature"], ascending=[False, True], kind="mergesort")
    df = df.reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1, dtype=np.int64)
    positive = df["importance"].clip(lower=0.0)
    total = float(positive.sum())
    df["share"] = positive / total if total > 0 else 0.0
    return df[["feature", "importance", "rank", "share"]]


def probe_persistence(n_probes: int) -> list[float]:
    """AR(1) coefficients of the probes: 0, ..., 0.99 (log-spaced in 1 - phi)."""
    if n_probes <= 1:
        return [0.0] * n_probes
    return [1.0 - 10.0 ** (-2.0 * i / (n_probes - 1)) for i in range(n_probes)]


def make_probes(symbols: pd.Series, n_probes: int, seed: int) -> np.ndarray:
    """(rows x n_probes) unit-variance AR(1) noise, one path per symbol along its rows (rows are
    in time order within a symbol, as in the panel); seeded from ``seed`` only."""
    if symbols is None:
        codes = np.zeros(0, dtype=np.int64)
    else:
        _, codes = symbol_codes(symbols)
    n = codes.size
    out = np.empty((n, n_probes))
    if n == 0 or n_probes == 0:
        return out
    n_sym = int(codes.max()) + 1
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n_sym)
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    length = int(counts.max())
    for i, phi in enumerate(probe_persistence(n_probes)):
        shocks = np.random.default_rng([seed, i]).standard_normal((length, n_sym))
        path = np.empty((length, n_sym))
        path[0] = shocks[0]
        scale = np.sqrt(1.0 - phi * phi)
        for t in range(1, length):  # a loop over bars, vectorised over symbols
            path[t] = phi * path[t - 1] + scale * shocks[t]
        out[:, i] = path[pos, codes]
    return out


@dataclass(frozen=True)
class _Trees:
    """A fitted LightGBM model's trees as its text model holds them: each tree's text, its
    leaf values (written with 17 significant digits, so read back exactly) and the columns
    it splits on."""

    header: str
    blocks: tuple[str, ...]
    leaf_values: tuple[np.ndarray, ...]
    features: tuple[frozenset[int], ...]

    @classmethod
    def read(cls, booster: Any) -> _Trees:
        text = booster.model_to_string()
        head, _, rest = text.partition("\nTree=0\n")
        body = rest.split("\nend of trees", 1)[0]
        parts = re.split(r"\nTree=\d+\n", "\nTree=0\n" + body)[1:] if rest else []
        blocks = tuple(b.strip("\n") for b in parts)
        values, features = [], []
        for block in blocks:
            fields = dict(line.partition("=")[::2] for line in block.splitlines())
            values.append(np.array([float(v) for v in fields["leaf_value"].split()]))
            features.append(frozenset(int(v) for v in fields.get("split_feature", "").split()))
        # the header without tree_sizes (it lists the sizes of all trees, not a subset's)
        header = "\n".join(x for x in head.splitlines() if not x.startswith("tree_sizes="))
        return cls(header, blocks, tuple(values), tuple(features))

    def subset(self, trees: Sequence[int]) -> Any:
        """A booster of only ``trees`` (in order): its ``pred_leaf`` gives their leaves."""
        import lightgbm as lgb

        body = "\n\n\n".join(f"Tree={k}\n{self.blocks[t]}" for k, t in enumerate(trees))
        return lgb.Booster(model_str=f"{self.header}\n\n{body}\n\n\nend of trees\n")


def _permutation_drop(
    booster: Any, X: np.ndarray, y: np.ndarray, settings: Settings, fold: int
) -> np.ndarray:
    """Mean drop in rank IC of the LightGBM ``booster`` on (X, y) when each column is shuffled.

    Shuffles are seeded by (seed, fold, column). A shuffled column only changes the trees
    that split on it, so only those are evaluated again (a booster of just those trees,
    ``pred_leaf``); the other trees keep their leaves. The prediction is then summed from the
    leaf values tree by tree in LightGBM's order (``0 + v_0 + v_1 + ...`` in float64), so it
    is bit for bit what ``booster.predict`` gives on the shuffled rows, at about a fifth of
    the work (a tree of depth 4 splits on a handful of the columns).
    """
    m, n_features = X.shape
    repeats = max(int(settings.permutation_repeats), 1)
    threads = settings.n_threads
    y_ranks = average_ranks(y)
    codes = np.zeros(m, dtype=np.int64)

    def score(pred: np.ndarray) -> float:
        corr, _ = group_corr(average_ranks(pred), y_ranks, codes, 1)
        return float(np.nan_to_num(corr[0]))

    trees = _Trees.read(booster)
    n_trees = len(trees.blocks)
    leaves = booster.predict(X, pred_leaf=True, num_threads=threads).reshape(m, n_trees)
    values = np.empty((n_trees, m))
    prefix = np.empty((n_trees, m))  # prefix[t]: the sum of trees 0..t, in LightGBM's order
    acc = np.zeros(m)
    for t in range(n_trees):
        values[t] = trees.leaf_values[t][leaves[:, t]]
        acc += values[t]
        prefix[t] = acc
    fitlog.record("permutation", m, n_trees)
    base = score(acc)

    drops = np.zeros(n_features)  # a column no tree splits on drops nothing: exactly 0
    block = np.tile(X, (repeats, 1))
    for j in range(n_features):
        used = [t for t in range(n_trees) if j in trees.features[t]]
        if not used:
            continue
        rng = np.random.default_rng([settings.seed, fold, j])
        for r in range(repeats):
            block[r * m : (r + 1) * m, j] = X[rng.permutation(m), j]
        new_leaves = trees.subset(used).predict(block, pred_leaf=True, num_threads=threads)
        new_leaves = new_leaves.reshape(repeats * m, len(used))
        fitlog.record("permutation", repeats * m, len(used))
        changed = dict(zip(used, range(len(used)), strict=True))
        # every repeat at once, one row each: each row still sums its trees in order
        first = used[0]
        pred = np.tile(prefix[first - 1], (repeats, 1)) if first > 0 else np.zeros((repeats, m))
        for t in range(first, n_trees):
            k = changed.get(t)
            if k is None:
                pred += values[t]
            else:
                pred += trees.leaf_values[t][new_leaves[:, k]].reshape(repeats, m)
        drops[j] = np.mean([base - score(pred[r]) for r in range(repeats)])
        block[:, j] = np.tile(X[:, j], repeats)  # back to the unshuffled column
    return drops


def _t_stat(per_fold: np.ndarray) -> np.ndarray:
    """mean / standard error over folds (rows), per column; 0 where the folds agree on 0."""
    k = per_fold.shape[0]
    mean = per_fold.mean(axis=0)
    se = per_fold.std(axis=0, ddof=1) / np.sqrt(k) if k > 1 else np.zeros_like(mean)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(se > 0, mean / se, np.sign(mean) * np.inf)
    return np.clip(np.where(np.isnan(t), 0.0, t), -1e9, 1e9)  # finite, for the CSV


def _mean_rank_importance(frames: Mapping[str, pd.DataFrame], names: Sequence[str]) -> np.ndarray:
    """Combined importance: 1 - (mean average-rank over the models - 1) / (F - 1)."""
    f = len(names)
    ranks = np.zeros(f)
    for model in MODELS:
        imp = frames[model].set_index("feature")["importance"].reindex(names).to_numpy()
        ranks += average_ranks(-imp)  # ties share a rank: no feature wins by its name
    mean_rank = ranks / len(MODELS)
    return 1.0 - (mean_rank - 1.0) / (f - 1) if f > 1 else np.ones(f)


@dataclass(frozen=True, eq=False)
class _View:
    """One frame's inputs to the importance folds: no matrix of every row (a fold's models
    read at most IMPORTANCE_MAX_TRAIN_ROWS + PERMUTATION_MAX_ROWS rows, cut from the frame's
    columns when the fold runs; at 500 symbols the whole matrix was 0.7 GB, a fold's 0.1 GB)."""

    names: list[str]
    n_features: int
    rows: np.ndarray  # positions in the frame of the rows with a target
    y: np.ndarray
    columns: list[np.ndarray]  # the frame's feature columns (float64)
    probes: np.ndarray  # (rows with a target) x n_probes
    folds: list[tuple[np.ndarray, np.ndarray]]  # positions in ``rows``
    timestamps: np.ndarray  # of the rows with a target
    label_end: np.ndarray | None

    def matrix(self, idx: np.ndarray) -> np.ndarray:
        """Features and probes of the rows at positions ``idx`` (of the rows with a target)."""
        out = np.empty((idx.size, len(self.names)))
        at = self.rows[idx]
        for j, col in enumerate(self.columns):
            out[:, j] = col[at]
        out[:, self.n_features :] = self.probes[idx]
        return out


def _prepare(
    frame: pd.DataFrame,
    target: str,
    horizon: int,
    features: list[str],
    settings: Settings,
    n_probes: int,
) -> _View:
    if not features:
        raise ValueError("no features to rank")
    probes = [f"{PROBE_PREFIX}{i}" for i in range(n_probes)]
    clash = sorted(set(probes) & set(features))
    if clash:
        raise ValueError(f"features {clash} use the probe names; rename them")
    missing = sorted(set(features) - set(frame.columns))
    if missing:
        raise ValueError(f"features not in the frame: {missing}")
    # rows with a target; columns are taken one by one (no copy of the whole frame)
    rows = np.flatnonzero(np.isfinite(frame[target].to_numpy(dtype=float)))
    if "symbol" in frame.columns:
        symbols = frame["symbol"].iloc[rows]
    else:
        symbols = pd.Series(np.zeros(rows.size, dtype=np.int64))
    label_col = f"label_end_{horizon}"
    label_end = frame[label_col].to_numpy()[rows] if label_col in frame.columns else None
    timestamps = frame["timestamp"].to_numpy()[rows]
    splitter = PurgedKFold(settings.n_splits, horizon, settings.embargo_for(horizon))
    return _View(
        names=features + probes,
        n_features=len(features),
        rows=rows,
        y=frame[target].to_numpy(dtype=float)[rows],
        columns=[frame[f].to_numpy(dtype=np.float64) for f in features],
        probes=make_probes(symbols, n_probes, settings.seed),
        folds=list(splitter.split(timestamps, groups=timestamps, label_end=label_end)),
        timestamps=timestamps,
        label_end=label_end,
    )


def _binned(view: _View, settings: Settings) -> Any:
    """The view's rows with a target, binned once for LightGBM; each fold fits on a subset."""
    n = view.rows.size
    return lightgbm_binned(view.matrix, n, view.y, lightgbm_params(settings))


def _fold_importances(
    view: _View, binned: Any, k: int, settings: Settings, fit_settings: Settings
) -> tuple[np.ndarray, np.ndarray]:
    """(LightGBM gain, permutation drop) of fold ``k`` of ``view``."""
    train_all, test = view.folds[k]
    train = subsample(train_all, IMPORTANCE_MAX_TRAIN_ROWS, (settings.seed, 0, k))
    params = lightgbm_params(fit_settings, n_estimators=settings.quick_estimators)
    booster = train_lightgbm(params, binned, train)
    gain = booster.feature_importance(importance_type="gain")
    held = subsample(test, PERMUTATION_MAX_ROWS, (settings.seed, 1, k))
    perm = _permutation_drop(booster, view.matrix(held), view.y[held], fit_settings, k)
    return gain, perm


def _xgboost_gain(view: _View, settings: Settings, fit_settings: Settings) -> np.ndarray:
    """XGBoost total gain of one model on the view's rows (at most IMPORTANCE_MAX_TRAIN_ROWS):
    a gain is read from the training rows, so one fit on all of them ranks as the mean over
    the folds' fits did, at a fifth of the fits."""
    train = subsample(np.arange(view.rows.size), IMPORTANCE_MAX_TRAIN_ROWS, (settings.seed, 4))
    xgbm = xgboost_regressor(fit_settings, n_estimators=settings.quick_estimators)
    fit_counted(xgbm, view.matrix(train), view.y[train])
    scores = xgbm.get_booster().get_score(importance_type="total_gain")  # keys "f{j}"
    return np.array([scores.get(f"f{j}", 0.0) for j in range(len(view.names))])


def _frames(
    view: _View, per_fold: Sequence[tuple[np.ndarray, np.ndarray]], xgain: np.ndarray
) -> dict[str, pd.DataFrame]:
    names = view.names
    gain = np.zeros(len(names))
    for fold_gain, _ in per_fold:  # summed in fold order, whatever ran first
        gain += fold_gain
    perm_folds = [perm for _, perm in per_fold]
    totals = {
        "lightgbm": gain / len(per_fold),
        "xgboost": np.asarray(xgain, dtype=float),
        "permutation": np.sum(perm_folds, axis=0) / len(per_fold),
    }
    out = {model: _importance_frame(names, totals[model]) for model in MODELS}
    t_stat = dict(zip(names, _t_stat(np.asarray(perm_folds)), strict=True))
    out["permutation"]["t_stat"] = out["permutation"]["feature"].map(t_stat).astype(float)
    out[COMBINED] = _importance_frame(names, _mean_rank_importance(out, names))
    return out


def compute_importances_many(
    frames: Sequence[pd.DataFrame],
    target: str,
    horizon: int,
    features: Sequence[str],
    settings: Settings,
    n_probes: int | None = None,
) -> list[dict[str, pd.DataFrame]]:
    """:func:`compute_importances` of each frame (e.g. the pooled view and every symbol
    view), the folds of all of them fitted as one batch of jobs, ``settings.fold_workers``
    at once with the threads shared: the many small fits of the symbol views keep every
    core busy. Each result is identical to ``compute_importances`` of that frame alone."""
    features = list(dict.fromkeys(features))
    n_probes = settings.n_probes if n_probes is None else int(n_probes)
    views = [_prepare(f, target, horizon, features, settings, n_probes) for f in frames]
    # per view: its XGBoost fit (k = -1; the longest job first) and its folds, which share
    # the view's rows binned once, by whichever fold needs them first
    tasks = [(i, k) for i, view in enumerate(views) for k in range(-1, len(view.folds))]
    fit_settings, workers = parallel_settings(settings, len(tasks))
    binned: dict[int, Any] = {}
    binning = [threading.Lock() for _ in views]

    def binned_view(i: int) -> Any:
        with binning[i]:
            if i not in binned:
                binned[i] = _binned(views[i], fit_settings)
            return binned[i]

    def fit(task: tuple[int, int]) -> Any:
        i, k = task
        started = time.perf_counter()
        if k < 0:
            out: Any = _xgboost_gain(views[i], settings, fit_settings)
            what, rows = "XGBoost", f"{min(views[i].rows.size, IMPORTANCE_MAX_TRAIN_ROWS)} rows"
        else:
            out = _fold_importances(views[i], binned_view(i), k, settings, fit_settings)
            train, test = views[i].folds[k]
            what = f"fold {k + 1}/{len(views[i].folds)}: LightGBM, permutation;"
            rows = f"{train.size} train / {test.size} test rows"
        # INFO: a run's page shows each fit as it ends (the step's only sign of life)
        log.info(
            "importances %s view %d/%d %s %s, %.1f s",
            target, i + 1, len(views), what, rows, time.perf_counter() - started,
        )  # fmt: skip
        return out

    results = dict(zip(tasks, map_parallel(fit, tasks, workers), strict=True))
    binned.clear()  # the bins are not needed past the fits
    out = []
    for i, view in enumerate(views):
        per_fold = [results[(i, k)] for k in range(len(view.folds))]
        imps = _frames(view, per_fold, results[(i, -1)])
        log.info(
            "importances %s: %d features + %d probes, %d rows, %d folds; top %s",
            target, view.n_features, n_probes, view.rows.size, len(view.folds),
            imps[COMBINED]["feature"].head(5).tolist(),
        )  # fmt: skip
        out.append(imps)
    return out


def compute_importances(
    frame: pd.DataFrame,
    target: str,
    horizon: int,
    features: Sequence[str],
    settings: Settings,
    n_probes: int | None = None,
) -> dict[str, pd.DataFrame]:
    """Importances of ``features`` (plus probes) for ``target`` under purged k-fold.

    Rows without a target are dropped. Returns ``{"lightgbm", "xgboost", "permutation",
    "combined"} -> DataFrame(feature, importance, rank, share)`` sorted by importance
    (descending) then feature; probe rows included. Same inputs -> identical frames.
    The folds are fitted side by side (``settings.fold_workers``, threads shared): the
    fits are thread-count invariant, so the numbers are the same.
    """
    return compute_importances_many([frame], target, horizon, features, settings, n_probes)[0]


# --------------------------------------------------------------------------------------------
# importances kept by the fingerprint of their inputs (cohortflow.memo)

#: bump whenever compute_importances' numbers change: older cached results are then missed
IMPORTANCES_VERSION = 1
_FRAME_COLUMNS = ("feature", "importance", "rank", "share", "t_stat")


def importances_key(
    frame: pd.DataFrame,
    target: str,
    horizon: int,
    features: Sequence[str],
    settings: Settings,
    n_probes: int | None = None,
) -> str:
    """The :mod:`cohortflow.memo` key of ``compute_importances`` on these inputs: the
    content of the columns it reads, the target and horizon, the features in order, the
    settings that change results and the device (XGBoost on a GPU gives other numbers).
    Threads are left out: the numbers do not depend on them."""
    features = list(dict.fromkeys(features))
    label_col = f"label_end_{horizon}"
    used = [target, "timestamp", *features]
    used += [c for c in ("symbol", label_col) if c in frame.columns]
    inputs = {
        "columns": columns_fingerprint(frame, used),
        "target": target,
        "horizon": int(horizon),
        "features": features,
        "n_probes": settings.n_probes if n_probes is None else int(n_probes),
        "settings": settings.fingerprint_fields(),
        "device": [settings.device, settings.lightgbm_device if settings.device == "cuda" else ""],
        "caps": [IMPORTANCE_MAX_TRAIN_ROWS, PERMUTATION_MAX_ROWS],
    }
    return memo_key("importances", IMPORTANCES_VERSION, inputs)


def importances_to_bytes(importances: Mapping[str, pd.DataFrame]) -> bytes:
    """JSON of the importance frames; floats as Python writes them (they read back exactly)."""
    doc = {
        model: {c: frame[c].tolist() for c in _FRAME_COLUMNS if c in frame.columns}
        for model, frame in importances.items()
    }
    return json.dumps(doc, allow_nan=True).encode("utf-8")  # models in their order


def importances_from_bytes(data: bytes) -> dict[str, pd.DataFrame]:
    """The frames :func:`importances_to_bytes` wrote, with the same columns and dtypes."""
    out = {}
    for model, cols in json.loads(data.decode("utf-8")).items():
        frame = pd.DataFrame(
            {"feature": list(cols["feature"]), "importance": np.asarray(cols["importance"], float)}
        )
        frame["rank"] = np.asarray(cols["rank"], dtype=np.int64)
        frame["share"] = np.asarray(cols["share"], dtype=float)
        if "t_stat" in cols:
            frame["t_stat"] = np.asarray(cols["t_stat"], dtype=float)
        out[model] = frame
    return out


def cached_importances(
    cache: ResultCache | None,
    frame: pd.DataFrame,
    target: str,
    horizon: int,
    features: Sequence[str],
    settings: Settings,
    n_probes: int | None = None,
) -> dict[str, pd.DataFrame]:
    """:func:`compute_importances`, read from ``cache`` when these inputs were computed before
    (an attempt whose target found no leak in the attempt before it, a rerun), else computed
    and stored. ``cache=None`` computes."""
    if cache is None:
        return compute_importances(frame, target, horizon, features, settings, n_probes)
    key = importances_key(frame, target, horizon, features, settings, n_probes)
    hit = cache.get(key)
    if hit is not None:
        log.info("importances %s: reused (%s)", target, key[:12])
        return importances_from_bytes(hit)
    out = compute_importances(frame, target, horizon, features, settings, n_probes)
    cache.put(key, importances_to_bytes(out))
    return out


# --------------------------------------------------------------------------------------------
# featureset


@dataclass(frozen=True)
class Featureset:
    """The features kept for (target, view, symbol), in order of combined importance.

    ``dropped`` maps each dropped feature to its reason; ``rule`` records the thresholds used.
    """

    target: str
    view: str
    symbol: str | None
    kept: tuple[str, ...]
    dropped: Mapping[str, str] = field(default_factory=dict)
    rule: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {self.view!r}")
        if (self.view == "SYMBOL_SPECIFIC") != (self.symbol is not None):
            raise ValueError(
                f"view {self.view} needs symbol={'a symbol' if self.view == 'SYMBOL_SPECIFIC' else None}"
            )
        if self.symbol is not None:
            validate_name("symbol", self.symbol)
        both = sorted(set(self.kept) & set(self.dropped))
        if both:
            raise ValueError(f"features both kept and dropped: {both}")
        object.__setattr__(self, "kept", tuple(self.kept))
        object.__setattr__(self, "dropped", dict(sorted(self.dropped.items())))
        object.__setattr__(self, "rule", normalize(dict(self.rule)))

    def __hash__(self) -> int:  # dropped/rule are dicts: hash the identity fields only
        return hash((self.target, self.view, self.symbol, self.kept))

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "view": self.view,
            "symbol": self.symbol,
            "features": list(self.kept),
            "dropped": [{"feature": f, "reason": r} for f, r in sorted(self.dropped.items())],
            "rule": dict(self.rule),
            "n_kept": len(self.kept),
            "n_dropped": len(self.dropped),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Featureset:
        return cls(
            target=str(d["target"]),
            view=str(d["view"]),
            symbol=d.get("symbol"),
            kept=tuple(d["features"]),
            dropped={str(x["feature"]): str(x["reason"]) for x in d.get("dropped") or ()},
            rule=dict(d.get("rule") or {}),
        )


def _spearman_matrix(
    frame: pd.DataFrame, rows: np.ndarray, names: Sequence[str], seed: int
) -> tuple[np.ndarray, int]:
    """|Spearman| between ``names`` on ``rows`` (a seeded subset of at most CORR_MAX_ROWS).

    Each column is ranked over its own non-NaN rows; a pair skips rows where either is NaN.
    """
    take = subsample(rows, CORR_MAX_ROWS, (seed, 2))
    ranks = [average_ranks(frame[n].to_numpy(dtype=float)[take]) for n in names]
    m = len(names)
    rho = np.eye(m)
    codes = np.zeros(take.size, dtype=np.int64)
    for i in range(m):
        for j in range(i + 1, m):
            corr, _ = group_corr(ranks[i], ranks[j], codes, 1)
            rho[i, j] = rho[j, i] = np.nan_to_num(corr[0])
    return np.abs(rho), int(take.size)


def prune(
    importances: Mapping[str, pd.DataFrame],
    frame: pd.DataFrame,
    features: Sequence[str],
    target: str,
    view: str,
    symbol: str | None,
    settings: Settings,
    excluded: Iterable[str] = (),
) -> Featureset:
    """Keep the features that beat the probes and are not near-duplicates (module docstring).

    ``frame`` holds the training rows (the correlations are measured on them, rows with a
    target only). Features absent from the importances (e.g. excluded before ranking) are
    dropped with "excluded_leak" if in ``excluded``, else "not_ranked".
    """
    excluded = set(excluded)
    features = list(dict.fromkeys(features))
    combined = importances[COMBINED]
    perm_frame = importances["permutation"].set_index("feature")
    perm = perm_frame["importance"]
    perm_share = perm_frame["share"]
    # a permutation frame read back without t_stat (older CSV) skips the consistency check
    perm_t = (
        perm_frame["t_stat"] if "t_stat" in perm_frame.columns else pd.Series(np.inf, perm.index)
    )
    comb_rank = combined.set_index("feature")["rank"]
    probes = [f for f in combined["feature"] if f.startswith(PROBE_PREFIX) and f not in features]
    best_probe = max(probes, key=lambda p: (perm[p], p)) if probes else None
    perm_bar = max(0.0, float(perm[best_probe])) if best_probe else 0.0

    dropped: dict[str, str] = {}
    for f in features:
        if f in excluded:
            dropped[f] = "excluded_leak"
        elif f not in comb_rank.index:
            dropped[f] = "not_ranked"
    ranked = [f for f in combined["feature"] if f in features and f not in dropped]

    passing = []
    for f in ranked:
        value, t = float(perm[f]), float(perm_t[f])
        if value <= perm_bar:
            dropped[f] = (
                f"below_probe: permutation importance {value:.3g} <= {perm_bar:.3g} "
                f"(best probe {best_probe or 'none'}, or 0); combined rank {int(comb_rank[f])}"
            )
        elif t < PERM_MIN_T:
            dropped[f] = f"inconsistent: permutation t-stat over folds {t:.2f} < {PERM_MIN_T:g}"
        elif float(perm_share[f]) < MIN_PERM_SHARE:
            dropped[f] = (
                f"negligible: permutation share {float(perm_share[f]):.2%} < {MIN_PERM_SHARE:.0%}"
            )
        else:
            passing.append(f)

    fallback = False
    if not passing and ranked:
        passing = [ranked[0]]
        dropped.pop(ranked[0])
        fallback = True

    rows = np.flatnonzero(np.isfinite(frame[target].to_numpy(dtype=float)))
    kept: list[str] = []
    corr_rows = 0
    if len(passing) > 1:
        rho, corr_rows = _spearman_matrix(frame, rows, passing, settings.seed)
        for i, f in enumerate(passing):
            partners = [(rho[i, passing.index(k)], k) for k in kept]
            worst = max(partners, default=(0.0, None))
            if worst[1] is not None and worst[0] > settings.corr_threshold:
                dropped[f] = f"correlated: |rho|={worst[0]:.3f} with {worst[1]} (kept)"
            else:
                kept.append(f)
    else:
        kept = passing

    rule = {
        "models": list(MODELS),
        "combined": "mean rank over models; importance = 1 - (mean_rank - 1) / (F - 1)",
        "probe_rule": (
            "permutation importance > max(0, every probe's), its t-stat over folds >= min_t "
            "and its share >= min_permutation_share"
        ),
        "min_t": PERM_MIN_T,
        "min_permutation_share": MIN_PERM_SHARE,
        "importance_max_train_rows": IMPORTANCE_MAX_TRAIN_ROWS,
        "permutation_max_rows": PERMUTATION_MAX_ROWS,
        "n_probes": len(probes),
        "best_probe": best_probe,
        "best_probe_rank": int(comb_rank[best_probe]) if best_probe else None,
        "probe_permutation_bar": perm_bar,
        "corr_method": "spearman",
        "corr_threshold": settings.corr_threshold,
        "corr_rows": corr_rows,
        "min_kept": 1,
        "fallback_top1": fallback,
    }
    fs = Featureset(target, view, symbol, tuple(kept), dropped, rule)
    log.info(
        "featureset %s %s%s: kept %d %s, dropped %d",
        target,
        view,
        f" {symbol}" if symbol else "",
        len(kept),
        kept[:8],
        len(dropped),
    )
    return fs


def select_features(
    frame: pd.DataFrame,
    target: str,
    horizon: int,
    features: Sequence[str],
    view: str,
    symbol: str | None,
    settings: Settings,
    excluded: Iterable[str] = (),
) -> tuple[dict[str, pd.DataFrame], Featureset]:
    """Importances of the non-excluded ``features`` and the pruned featureset.

    ``frame``: the training rows of the view (all symbols pooled, or one symbol's rows).
    """
    excluded = set(excluded)
    candidates = [f for f in dict.fromkeys(features) if f not in excluded]
    importances = compute_importances(frame, target, horizon, candidates, settings)
    fs = prune(
        importances, frame, list(dict.fromkeys(features)), target, view, symbol, settings, excluded
    )
    return importances, fs


__all__ = [
    "COMBINED",
    "MODELS",
    "Featureset",
    "cached_importances",
    "compute_importances",
    "compute_importances_many",
    "importances_from_bytes",
    "importances_key",
    "importances_to_bytes",
    "prune",
    "select_features",
]
