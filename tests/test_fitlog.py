"""Fit accounting: rows x rounds trained of each fit, rows x trees of permutation predictions,
exact under threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cohortflow import fitlog
from cohortflow.fitlog import FitCounts
from cohortflow.models import fit_counted, lightgbm_regressor, xgboost_regressor
from cohortflow.settings import Settings


def _xy(n: int = 300, f: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, f))
    return x, x[:, 0] + 0.1 * rng.standard_normal(n)


def test_a_lightgbm_fit_counts_rows_times_rounds() -> None:
    x, y = _xy()
    before = fitlog.snapshot()
    fit_counted(lightgbm_regressor(Settings(n_threads=1), n_estimators=17), x, y)
    got = fitlog.snapshot() - before
    assert got == FitCounts(lightgbm=300 * 17, calls=1)
    assert got.row_rounds == 5100


def test_an_xgboost_fit_counts_rows_times_rounds() -> None:
    x, y = _xy(250)
    before = fitlog.snapshot()
    fit_counted(xgboost_regressor(Settings(n_threads=1), n_estimators=11), x, y)
    assert fitlog.snapshot() - before == FitCounts(xgboost=250 * 11, calls=1)


def test_an_early_stopped_fit_counts_the_rounds_it_trained_not_the_best() -> None:
    import lightgbm as lgb

    x, y = _xy(400)
    rng = np.random.default_rng(1)
    est = lightgbm_regressor(Settings(n_threads=1), n_estimators=500)
    before = fitlog.snapshot()
    # a pure-noise validation set: the best round comes early and training stops 5 later
    fit_counted(
        est,
        x[:300],
        y[:300],
        eval_X=(x[300:],),
        eval_y=(rng.standard_normal(100),),
        callbacks=[lgb.early_stopping(5, verbose=False)],
    )
    trained = len(est.evals_result_["valid_0"]["l2"])  # one entry per round trained
    assert trained == est.best_iteration_ + 5 < 500
    assert est.booster_.current_iteration() == est.best_iteration_  # LightGBM keeps the best
    assert (fitlog.snapshot() - before).lightgbm == 300 * trained


def test_a_non_boosting_model_is_not_counted() -> None:
    from sklearn.linear_model import Ridge

    x, y = _xy()
    before = fitlog.snapshot()
    fit_counted(Ridge(), x, y)
    assert fitlog.snapshot() - before == FitCounts()


def test_records_from_many_threads_add_up_exactly() -> None:
    before = fitlog.snapshot()

    def work() -> None:
        for _ in range(1000):
            fitlog.record("permutation", 3, 7)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fitlog.snapshot() - before == FitCounts(permutation=8 * 1000 * 21, calls=8000)


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fit kind 'catboost'"):
        fitlog.record("catboost", 1, 1)
