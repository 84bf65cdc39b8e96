"""Benchmark: OOF generation overhead and the speed-up of reusing OOF columns for stacking.

    python bench/bench_oof.py [--quick] [--repeats N]

Measured in one run, on the same synthetic panel, the same purged folds and the same model
settings:

1. ``oof_overhead`` = wall time of :func:`cohortflow.oof.generate_oof` / wall time of a bare
   loop that calls ``lightgbm.LGBMRegressor`` and ``xgboost.XGBRegressor`` fit/predict
   directly on the same fold indices of the same float32 matrix (goal <= 1.05). The two are
   run alternately (bare first on even repeats, OOF first on odd ones) after one untimed
   warm-up each, and the medians are compared. ``oof_overhead_cpu`` (context) is the same
   ratio in CPU seconds of the process: on a shared VM a side's wall time moves by ±10 %
   with its neighbours, its CPU time much less, so it says whether the work differs.
2. ``stack_speedup`` = time to make the meta-learner's inputs the way scikit-learn's
   ``StackingRegressor`` does (``cross_val_predict`` of every base model over the folds,
   then the meta-learner) / time of ``fit_stacking``'s meta-learner stage, which reuses the
   OOF columns (:func:`cohortflow.stacking.fit_meta_learner`) (goal >= 10). Both sides fit
   the same meta-learner (walk-forward penalty choice included); the base models' refit on
   the whole training window is common to both designs and left out of both.

3. ``fold_parallel_speedup`` (context, no goal): ``generate_oof`` one fold at a time with
   ``n_threads`` threads a fit / the same with ``settings.fold_workers`` folds fitted at
   once and the threads split between them (the same cores; identical predictions).

Prints a table and, last, ``oof_overhead=... oof_overhead_cpu=... stack_speedup=... fold_parallel_speedup=...
rows=...``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# as cohortflow.models does, before any OpenMP runtime loads: both sides run under it
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import lightgbm as lgb  # noqa: E402
import xgboost as xgb  # noqa: E402
from common import alternate  # noqa: E402  (bench/common.py)
from sklearn.model_selection import cross_val_predict  # noqa: E402

from cohortflow.models import make_base_model  # noqa: E402
from cohortflow.oof import (  # noqa: E402
    default_fold_plan,
    feature_matrix,
    generate_oof,
    labelled_rows,
)
from cohortflow.settings import ModelSettings, Settings  # noqa: E402
from cohortflow.stacking import fit_meta_learner  # noqa: E402

HORIZON = 5
TARGET = f"fwd_ret_{HORIZON}"


def synthetic_panel(n_dates: int, n_symbols: int, n_features: int, seed: int = 0) -> pd.DataFrame:
    """Panel per docs/ARCHITECTURE.md: a few informative features, the rest noise."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2015-01-01", periods=n_dates)
    ts = np.repeat(dates.to_numpy(), n_symbols)
    sym = np.tile(np.array([f"S{k:03d}" for k in range(n_symbols)]), n_dates)
    x = rng.standard_normal((len(ts), n_features))
    y = 0.01 * (
        0.3 * x[:, 0]
        - 0.2 * x[:, 1]
        + 0.1 * np.tanh(x[:, 2] * x[:, 3])
        + rng.standard_normal(len(ts))
    )
    frame = pd.DataFrame({"timestamp": ts, "symbol": sym})
    features = [f"x{i:02d}" for i in range(n_features)]
    frame[features] = x
    frame[TARGET] = y
    # label end: HORIZON bars later for the same symbol; none at the end of the history
    later = pd.Series(dates).shift(-HORIZON).to_numpy()
    frame[f"label_end_{HORIZON}"] = np.repeat(later, n_symbols)
    frame.loc[frame[f"label_end_{HORIZON}"].isna(), TARGET] = np.nan
    return frame


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small panel, finishes in < 1 minute")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per side")
    args = parser.parse_args(argv)
    if args.quick:
        n_dates, n_symbols, n_features, n_estimators, repeats = 160, 50, 10, 60, 4
    else:
        # a side's time moves 5-10 % sample to sample on 2 shared cores, CPU seconds too: with 9
        # repeats a side the ratio of medians ranged 0.998-1.134 over a day, with 25 it
        # gave 1.001 (docs/scaling.md §7); ~13 minutes
        n_dates, n_symbols, n_features, n_estimators, repeats = 750, 100, 20, 200, 25
    repeats = args.repeats or repeats

    settings = Settings(
        horizons=(HORIZON,),
        n_splits=5,
        n_threads=2,
        fold_workers=1,  # one fold at a time, as the bare loop does; (3) measures more
        models=ModelSettings(n_estimators=n_estimators),
    )
    panel = synthetic_panel(n_dates, n_symbols, n_features)
    features = [c for c in panel.columns if c.startswith("x")]
    train = labelled_rows(panel, TARGET, HORIZON)
    plan = default_fold_plan(train, HORIZON, settings)
    x = feature_matrix(train, features)
    y = train[TARGET].to_numpy(dtype=np.float64)
    folds = [(np.asarray(f.train_idx), np.asarray(f.test_idx)) for f in plan.folds]
    direct = [
        (lgb.LGBMRegressor, make_base_model("lightgbm", settings).get_params()),
        (xgb.XGBRegressor, make_base_model("xgboost", settings).get_params()),
    ]

    def bare_loop() -> None:
        for tr, te in folds:
            for cls, params in direct:
                model = cls(**params)
                model.fit(x[tr], y[tr])
                model.predict(x[te])

    def oof_run() -> None:
        generate_oof(train, TARGET, HORIZON, features, settings, plan=plan)

    # warm-up first (thread pools, first-call costs), then bare first on even repeats
    cpu: dict[str, list[float]] = {}
    wall = alternate({"bare": bare_loop, "oof": oof_run}, repeats, warmup=True, cpu=cpu)
    bare_t, oof_t, bare_cpu, oof_cpu = wall["bare"], wall["oof"], cpu["bare"], cpu["oof"]
    oof_overhead = statistics.median(oof_t) / statistics.median(bare_t)
    oof_overhead_cpu = statistics.median(oof_cpu) / statistics.median(bare_cpu)

    # (2) StackingRegressor-style: refit every base model per fold to make the meta inputs
    oof = generate_oof(train, TARGET, HORIZON, features, settings, plan=plan)
    label_end = train[f"label_end_{HORIZON}"].to_numpy()

    def sklearn_style() -> pd.DataFrame:
        frame = train[["timestamp", "symbol"]].copy()
        frame["y_true"] = y
        for name in oof.models:
            est = make_base_model(name, settings)
            frame[f"pred_{name}"] = cross_val_predict(est, x, y, cv=folds)
        fit_meta_learner(frame, oof.models, HORIZON, settings, label_end=label_end)
        return frame

    def reuse_oof() -> None:
        fit_meta_learner(oof.frame, oof.models, HORIZON, settings, label_end=label_end)

    refit_frame = sklearn_style()
    same = max(
        float(np.max(np.abs(refit_frame[c].to_numpy() - oof.frame[c].to_numpy())))
        for c in oof.pred_columns
    )
    sk_t = [timed(sklearn_style) for _ in range(max(1, repeats // 2))]
    meta_t = [timed(reuse_oof) for _ in range(max(3, repeats))]
    stack_speedup = statistics.median(sk_t) / statistics.median(meta_t)

    # (3) context: the same OOF with fold_workers folds fitted at once, sharing the same
    # n_threads (the default; the comparisons above fit one fold at a time, as the bare loop
    # does); identical predictions
    workers = max(2, settings.n_threads)
    side_by_side = settings.replace(fold_workers=workers)
    parallel_frame = generate_oof(train, TARGET, HORIZON, features, side_by_side, plan=plan).frame
    pd.testing.assert_frame_equal(parallel_frame, oof.frame, check_exact=True)
    seq_t, par_t = [], []
    for r in range(max(2, repeats // 3)):
        runs = [(seq_t, settings), (par_t, side_by_side)]
        for out, s in runs if r % 2 == 0 else runs[::-1]:
            out.append(
                timed(lambda s=s: generate_oof(train, TARGET, HORIZON, features, s, plan=plan))
            )
    fold_parallel_speedup = statistics.median(seq_t) / statistics.median(par_t)

    rows = len(train)
    print(
        f"panel: {rows} labelled rows ({n_dates} dates x {n_symbols} symbols), {n_features} features, "
        f"{len(folds)} purged folds (h={HORIZON}, embargo={plan.embargo}), {n_estimators} trees, "
        f"{settings.n_threads} threads, {repeats} repeats"
    )
    print(f"{'measure':<58}{'median s':>10}{'min s':>9}{'max s':>9}")
    table = [
        ("bare loop: LGBMRegressor + XGBRegressor fit/predict", bare_t),
        ("generate_oof (same folds, same settings)", oof_t),
        ("bare loop, CPU seconds", bare_cpu),
        ("generate_oof, CPU seconds", oof_cpu),
        ("sklearn StackingRegressor-style: cross_val_predict + meta", sk_t),
        ("fit_stacking meta stage: reuse OOF columns", meta_t),
        (f"generate_oof, 1 fold at a time x {settings.n_threads} threads", seq_t),
        (
            f"generate_oof, {workers} folds at once x "
            f"{max(1, settings.n_threads // workers)} thread(s)",
            par_t,
        ),
    ]
    for label, values in table:
        print(
            f"{label:<58}{statistics.median(values):>10.3f}{min(values):>9.3f}{max(values):>9.3f}"
        )
    print(
        f"OOF from cross_val_predict vs generate_oof: max |diff| = {same:.3g} (same folds, same models)"
    )
    print("goals: oof_overhead <= 1.05, stack_speedup >= 10")
    print(
        f"oof_overhead={oof_overhead:.3f} oof_overhead_cpu={oof_overhead_cpu:.3f} "
        f"stack_speedup={stack_speedup:.1f} "
        f"fold_parallel_speedup={fold_parallel_speedup:.3f} rows={rows}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
