"""OOF predictions: purged and embargoed on one shared fold plan, one row per out-of-fold bar,
deterministic Parquet bytes, optional tuning behind the optuna extra."""

from __future__ import annotations

import hashlib
import sys
import types

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cohortflow.models import make_base_model
from cohortflow.oof import (
    SEARCH_SPACES,
    TuningUnavailableError,
    generate_oof,
    labelled_rows,
    read_oof_parquet,
    tune_params,
    write_oof_parquet,
)
from cohortflow.settings import ModelSettings, Settings
from cohortflow.splits import Fold, FoldPlan, WalkForward, make_fold_plan

H = 2
TARGET = f"fwd_ret_{H}"
FEATURES = ["f1", "f2", "n1"]


def make_panel(n_dates: int = 90, seed: int = 0) -> pd.DataFrame:
    """A panel with unequal histories: late starts, an early end, and a hole in one symbol.

    ``label_end_{H}`` is the bar H bars later for that symbol, so across the hole the label
    window spans more than H bars of the global date grid.
    """
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2021-01-04", periods=n_dates)
    spans = {
        "AAA": (0, n_dates),
        "BBB": (7, n_dates),
        "CCC": (0, n_dates - 12),
        "DDD": (3, n_dates),
    }
    parts = []
    for sym, (a, b) in spans.items():
        d = dates[a:b]
        if sym == "DDD":  # a hole of 5 bars in the middle of its history
            d = d.delete(range(40, 45))
        x = rng.standard_normal((len(d), 3))
        frame = pd.DataFrame(
            {"timestamp": d, "symbol": sym, "f1": x[:, 0], "f2": x[:, 1], "n1": x[:, 2]}
        )
        frame[TARGET] = 0.01 * (0.6 * x[:, 0] + 0.4 * x[:, 1] + 0.5 * rng.standard_normal(len(d)))
        frame[f"label_end_{H}"] = frame["timestamp"].shift(-H)
        frame.loc[frame.index[-H:], TARGET] = np.nan
        parts.append(frame)
    panel = pd.concat(parts).sort_values(["timestamp", "symbol"], kind="stable")
    return panel.reset_index(drop=True)


def small_settings(**changes) -> Settings:
    models = ModelSettings(n_estimators=8, num_leaves=4, max_depth=2, min_child_samples=5)
    base = Settings(horizons=(H,), n_splits=4, embargo=3, n_threads=1, min_rows=10, models=models)
    return base.replace(**changes)


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return make_panel()


@pytest.fixture(scope="module")
def result(panel):
    return generate_oof(panel, TARGET, H, FEATURES, small_settings())


def leak_violations(plan: FoldPlan, labelled: pd.DataFrame, embargo: int) -> list[str]:
    """Every (fold, test row, train row) that breaks purging or the embargo.

    For an OOF row r (date t_r, label end e_r) tested in a fold, and a training row j of that
    fold: j != r; if t_j <= t_r, j's label window must end before t_r; if t_j > t_r, t_j must
    lie after e_r and more than ``embargo`` bars of the date grid after t_r.
    """
    grid = np.unique(labelled["timestamp"].to_numpy())
    t = np.searchsorted(grid, labelled["timestamp"].to_numpy())
    # label ends past the grid (none here) would sort to len(grid): still "after"
    e = np.searchsorted(grid, labelled[f"label_end_{H}"].to_numpy())
    bad = []
    for fold in plan.folds:
        tr, te = np.asarray(fold.train_idx), np.asarray(fold.test_idx)
        if np.intersect1d(tr, te).size:
            bad.append(f"fold {fold.fold}: a row is both trained on and tested")
        tj, ej = t[tr][None, :], e[tr][None, :]  # train rows along columns
        tr_, er = t[te][:, None], e[te][:, None]  # test rows along rows
        before = (tj <= tr_) & (ej >= tr_)  # j's label window reaches r (or j is r)
        after = (tj > tr_) & ((tj <= er) | (tj - tr_ <= embargo))  # in r's window or embargo
        for kind, mask in (("label window", before), ("label window/embargo", after)):
            if mask.any():
                r, j = np.argwhere(mask)[0]
                bad.append(f"fold {fold.fold}: test row {te[r]} vs train row {tr[j]} ({kind})")
    return bad


def test_every_oof_row_was_predicted_by_a_model_not_trained_on_its_window(panel, result):
    labelled = labelled_rows(panel, TARGET, H)
    plan = result.fold_plan
    assert plan.horizon == H and plan.embargo == 3
    assert len(plan.folds) == 4
    assert leak_violations(plan, labelled, embargo=3) == []

    # the fold column names the model that predicted each row: refit fold 2's models on that
    # fold's training rows and get exactly the stored predictions back
    fold = plan.folds[2]
    x = labelled[FEATURES].to_numpy(dtype=np.float32)
    y = labelled[TARGET].to_numpy()
    rows = result.frame["fold"].to_numpy() == 2
    for name in ("lightgbm", "xgboost"):
        est = make_base_model(name, small_settings()).fit(x[fold.train_idx], y[fold.train_idx])
        expected = est.predict(x[fold.test_idx])
        np.testing.assert_array_equal(result.frame.loc[rows, f"pred_{name}"].to_numpy(), expected)


def test_the_leak_checker_catches_an_unpurged_plan(panel, result):
    """The checker above is not vacuous: plain k-fold on dates (no purge, no embargo) fails it."""
    labelled = labelled_rows(panel, TARGET, H)
    purged = result.fold_plan
    everything = np.arange(len(labelled))
    naive = FoldPlan(
        H,
        0,
        tuple(Fold(f.fold, np.setdiff1d(everything, f.test_idx), f.test_idx) for f in purged.folds),
        purged.timestamps,
    )
    assert leak_violations(naive, labelled, embargo=3)


def test_oof_frame_holds_each_out_of_fold_row_once_with_its_fold(panel, result):
    frame = result.frame
    labelled = labelled_rows(panel, TARGET, H)
    assert list(frame.columns) == [
        "timestamp",
        "symbol",
        "fold",
        "y_true",
        "pred_lightgbm",
        "pred_xgboost",
    ]
    assert result.models == ("lightgbm", "xgboost")
    assert frame["fold"].dtype == np.int32
    assert not frame.duplicated(["timestamp", "symbol"]).any()
    assert frame[["timestamp", "symbol"]].equals(
        frame[["timestamp", "symbol"]].sort_values(["timestamp", "symbol"]).reset_index(drop=True)
    )
    # purged k-fold tests every labelled row exactly once; unlabelled rows are absent
    assert len(frame) == len(labelled) == int(panel[TARGET].notna().sum())
    np.testing.assert_array_equal(frame["fold"].to_numpy(), result.fold_plan.test_fold())
    np.testing.assert_array_equal(frame["y_true"].to_numpy(), labelled[TARGET].to_numpy())
    assert np.isfinite(frame[["pred_lightgbm", "pred_xgboost"]].to_numpy()).all()
    # one fold-metrics record per fold and model, with the fold's row counts
    assert [(m["fold"], m["model"]) for m in result.fold_metrics] == [
        (k, m) for k in range(4) for m in ("lightgbm", "xgboost")
    ]
    for m in result.fold_metrics:
        fold = result.fold_plan.folds[m["fold"]]
        assert (m["n_train"], m["n_test"]) == (len(fold.train_idx), len(fold.test_idx))
        assert set(m) == {"fold", "model", "n_train", "n_test", "r2", "ic", "rank_ic"}


def test_folds_fitted_side_by_side_give_the_same_predictions(panel, monkeypatch):
    import threading

    import cohortflow.oof as oof

    seen: list[tuple[str, int]] = []  # (thread, n_threads of the fit)
    real = oof.fit_base_model

    def fit(name, settings, *args, **kwargs):
        seen.append((threading.current_thread().name, settings.n_threads))
        return real(name, settings, *args, **kwargs)

    monkeypatch.setattr(oof, "fit_base_model", fit)
    one = generate_oof(panel, TARGET, H, FEATURES, small_settings(fold_workers=1, n_threads=4))
    assert {t for t, _ in seen} == {threading.current_thread().name}
    assert {n for _, n in seen} == {4}
    seen.clear()
    three = generate_oof(panel, TARGET, H, FEATURES, small_settings(fold_workers=3, n_threads=4))
    assert len({t for t, _ in seen if t.startswith("cohortflow-fold")}) >= 2  # side by side
    assert {n for _, n in seen} == {1}  # 4 threads shared by 3 workers: 1 each
    pd.testing.assert_frame_equal(three.frame, one.frame, check_exact=True)
    assert three.fold_metrics == one.fold_metrics
    assert (
        small_settings(fold_workers=3).fingerprint_fields()
        == small_settings(fold_workers=1).fingerprint_fields()
    )


def test_fold_workers_below_one_are_refused():
    from cohortflow.errors import SettingsError

    with pytest.raises(SettingsError, match="fold_workers"):
        small_settings(fold_workers=0)


def test_a_walk_forward_plan_keeps_only_rows_that_were_out_of_fold(panel):
    labelled = labelled_rows(panel, TARGET, H)
    plan = make_fold_plan(
        WalkForward(3, H, gap=3), labelled["timestamp"], labelled[f"label_end_{H}"]
    )
    result = generate_oof(panel, TARGET, H, FEATURES, small_settings(), plan=plan)
    tested = np.concatenate([f.test_idx for f in plan.folds])
    assert len(result.frame) == len(tested) < len(labelled)
    assert result.frame["timestamp"].min() == labelled["timestamp"].iloc[tested.min()]
    assert sorted(result.frame["fold"].unique()) == [0, 1, 2]


def test_extra_sklearn_models_add_their_column(panel):
    settings = small_settings(
        models=ModelSettings(
            n_estimators=5, num_leaves=4, extra_sklearn=("sklearn.linear_model.Ridge",)
        )
    )
    result = generate_oof(panel, TARGET, H, FEATURES, settings)
    assert list(result.frame.columns)[4:] == ["pred_lightgbm", "pred_xgboost", "pred_ridge"]
    # planted signal: ridge finds the positive loadings on f1 and f2 out of fold
    assert np.corrcoef(result.frame["pred_ridge"], result.frame["y_true"])[0, 1] > 0.5


def test_per_model_feature_subsets_are_validated(panel):
    with pytest.raises(
        ValueError, match=r"model 'xgboost': feature subset \['zz'\] not within features"
    ):
        generate_oof(
            panel, TARGET, H, FEATURES, small_settings(), model_features={"xgboost": ["zz"]}
        )
    with pytest.raises(ValueError, match=r"model_features names unknown model\(s\) \['catboost'\]"):
        generate_oof(
            panel, TARGET, H, FEATURES, small_settings(), model_features={"catboost": ["f1"]}
        )


def test_a_plan_built_on_other_rows_is_refused(panel, result):
    with pytest.raises(ValueError, match="fold plan covers .* rows but the training frame has"):
        generate_oof(panel.iloc[40:], TARGET, H, FEATURES, small_settings(), plan=result.fold_plan)


def test_oof_parquet_bytes_are_deterministic_and_round_trip(tmp_path, panel, result):
    again = generate_oof(panel, TARGET, H, FEATURES, small_settings())
    pd.testing.assert_frame_equal(again.frame, result.frame)

    first, second = (
        tmp_path / "a" / "oof_predictions.parquet",
        tmp_path / "b" / "oof_predictions.parquet",
    )
    digest_a = write_oof_parquet(result.frame, first)
    digest_b = write_oof_parquet(again.frame, second)
    assert first.read_bytes() == second.read_bytes()
    assert digest_a == digest_b == hashlib.sha256(first.read_bytes()).hexdigest()

    schema = pq.read_schema(first)
    assert schema.names == [
        "timestamp",
        "symbol",
        "fold",
        "y_true",
        "pred_lightgbm",
        "pred_xgboost",
    ]
    assert b"pandas" not in (schema.metadata or {})
    back = read_oof_parquet(first)
    assert back["timestamp"].dtype == np.dtype("datetime64[ns]")
    pd.testing.assert_frame_equal(back, result.frame, check_dtype=False)
    assert back["fold"].dtype == np.int32
    assert list(tmp_path.joinpath("a").iterdir()) == [first]  # no temporary file left


def test_write_refuses_a_frame_without_the_oof_columns(tmp_path, result):
    with pytest.raises(ValueError, match=r"missing \['fold'\], unexpected \['extra'\]"):
        write_oof_parquet(
            result.frame.drop(columns="fold").assign(extra=1.0), tmp_path / "x.parquet"
        )
    assert not (tmp_path / "x.parquet").exists()


def test_tuning_without_optuna_says_how_to_install_it(monkeypatch, panel):
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` fail
    with pytest.raises(TuningUnavailableError, match=r"pip install cohortflow\[tune\]"):
        tune_params(panel, TARGET, H, FEATURES, small_settings(tune=True))
    with pytest.raises(ImportError, match=r"pip install cohortflow\[tune\]"):
        generate_oof(panel, TARGET, H, FEATURES, small_settings(tune=True))


def _fake_optuna() -> types.ModuleType:
    """A stand-in for optuna: every trial suggests the low end of every range."""

    class Study:
        def __init__(self) -> None:
            self.best_params: dict = {}

        def optimize(self, objective, n_trials):
            trial = types.SimpleNamespace(
                suggest_int=lambda name, low, high, log=False: self.best_params.setdefault(
                    name, low
                ),
                suggest_float=lambda name, low, high, log=False: self.best_params.setdefault(
                    name, low
                ),
            )
            for _ in range(n_trials):
                objective(trial)

    def create_study(direction, sampler):
        assert direction == "minimize" and sampler == ("tpe", 7)  # seeded from settings.seed
        return Study()

    fake = types.ModuleType("optuna")
    fake.logging = types.SimpleNamespace(set_verbosity=lambda level: None, WARNING=30)
    fake.samplers = types.SimpleNamespace(TPESampler=lambda seed: ("tpe", seed))
    fake.create_study = create_study
    return fake


def test_tuning_searches_the_training_rows_with_an_inner_purged_split(monkeypatch, panel):
    monkeypatch.setitem(sys.modules, "optuna", _fake_optuna())
    train = panel[panel["timestamp"] < panel["timestamp"].unique()[60]]
    fits: list[int] = []
    import cohortflow.oof as oof_module

    real_fit = oof_module.fit_base_model

    def counting_fit(name, settings, x, y, params=None):
        fits.append(len(y))
        return real_fit(name, settings, x, y, params)

    monkeypatch.setattr(oof_module, "fit_base_model", counting_fit)
    params = tune_params(train, TARGET, H, FEATURES, small_settings(tune=True, tune_trials=2))
    assert params == {
        name: {
            spec[0]: (int(spec[2]) if spec[1] == "int" else spec[2])
            for spec in sorted(SEARCH_SPACES[name])
        }
        for name in ("lightgbm", "xgboost")
    }
    # 2 models x 2 trials x 3 inner folds, each on a strict subset of the training rows
    n_train = int(train[TARGET].notna().sum())
    assert len(fits) == 12 and max(fits) < n_train
