"""Stacking: a meta-learner on the OOF columns beats its base models on a held-out period,
separated from training by horizon + embargo; saved natively, byte for byte reproducible."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import cohortflow.stacking as stacking_module
from cohortflow.formats import parse_parquet
from cohortflow.oof import generate_oof
from cohortflow.settings import ModelSettings, Settings
from cohortflow.splits import split_train_test as holdout
from cohortflow.stacking import EQUAL_WEIGHT, fit_stacking, stack_from_files, stacking_files

H = 2
TARGET = f"fwd_ret_{H}"
FEATURES = ["f1", "f2", "n1", "n2"]
# each base model sees one of the two planted signals: only a combination sees both
SPLIT_SIGNALS = {"lightgbm": ["f1", "n1"], "xgboost": ["f2", "n2"]}
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pck", ".sav")


def make_panel(n_dates: int = 260, n_symbols: int = 8, seed: int = 1) -> pd.DataFrame:
    """y = 0.5 f1 + 0.5 f2 + noise (x 1%); symbols start on different dates; two have holes."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=n_dates)
    parts = []
    for k in range(n_symbols):
        d = dates[4 * k :]
        if k == 1:
            d = d.delete(range(100, 106))
        if k == 2:  # a hole just before the hold-out boundary: dates 199..203
            d = d.delete(range(191, 196))
        x = rng.standard_normal((len(d), 4))
        frame = pd.DataFrame({"timestamp": d, "symbol": f"S{k:02d}"})
        frame[FEATURES] = x
        frame[TARGET] = 0.01 * (0.5 * x[:, 0] + 0.5 * x[:, 1] + 0.7 * rng.standard_normal(len(d)))
        frame[f"label_end_{H}"] = frame["timestamp"].shift(-H)
        frame.loc[frame.index[-H:], TARGET] = np.nan
        parts.append(frame)
    panel = pd.concat(parts).sort_values(["timestamp", "symbol"], kind="stable")
    return panel.reset_index(drop=True)


def small_settings(**changes) -> Settings:
    models = ModelSettings(n_estimators=30, num_leaves=7, max_depth=3, min_child_samples=10)
    base = Settings(horizons=(H,), n_splits=4, embargo=3, n_threads=1, min_rows=10, models=models)
    return base.replace(**changes)


def split_train_test(panel, target, horizon, settings):
    h = holdout(panel, target, horizon, settings.test_fraction, settings.embargo_for(horizon))
    return h.train, h.test, h.info


def save_stacking(result, folder) -> list:
    """The stack's files written into ``folder`` (as the store writes them), sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, data in stacking_files(result).items():
        (folder / name).write_bytes(data)
        out.append(folder / name)
    return sorted(out)


def load_stacking(folder):
    return stack_from_files(lambda name: (folder / name).read_bytes())


def read_test_predictions(folder) -> pd.DataFrame:
    path = folder / "test_predictions.parquet"
    return parse_parquet(path, path.read_bytes())


def build(settings: Settings, model_features=SPLIT_SIGNALS, panel: pd.DataFrame | None = None):
    panel = make_panel() if panel is None else panel
    train, test, info = split_train_test(panel, TARGET, H, settings)
    oof = generate_oof(train, TARGET, H, FEATURES, settings, model_features=model_features)
    result = fit_stacking(
        oof,
        train,
        test,
        TARGET,
        H,
        FEATURES,
        settings,
        model_features=model_features,
        split_info=info,
    )
    return panel, train, test, info, oof, result


@pytest.fixture(scope="module")
def built():
    return build(small_settings())


def test_the_stack_beats_each_base_model_on_the_held_out_period(built):
    *_, result = built
    m = result.test_metrics
    assert m["stack"]["n_rows"] == m["lightgbm"]["n_rows"] == len(result.test_predictions)
    for base in ("lightgbm", "xgboost", EQUAL_WEIGHT):
        assert m["stack"]["r2"] > m[base]["r2"] + 0.02, (base, m[base]["r2"], m["stack"]["r2"])
    for base in ("lightgbm", "xgboost"):
        assert m["stack"]["rank_ic"] > m[base]["rank_ic"] + 0.05
    # both signals carry weight, and the weights are the meta coefficients' shares
    coef = result.meta["coef"]
    assert coef["lightgbm"] > 0 and coef["xgboost"] > 0
    total = coef["lightgbm"] + coef["xgboost"]
    assert result.weights == pytest.approx({k: v / total for k, v in coef.items()})
    assert set(m["stack"]) == {"r2", "ic", "rank_ic", "icir", "auc_sign", "n_rows"}
    assert result.meta["kind"] == "ridge"
    assert result.meta["feature_order"] == ["pred_lightgbm", "pred_xgboost"]


def test_the_test_period_is_separated_from_training_by_horizon_plus_embargo(built):
    panel, train, test, info, *_ = built
    embargo = small_settings().embargo_for(H)
    assert embargo == 3
    grid = np.unique(panel["timestamp"].to_numpy())
    last_train = np.searchsorted(grid, train["timestamp"].max().to_datetime64())
    last_label_end = np.searchsorted(grid, train[f"label_end_{H}"].max().to_datetime64())
    first_test = np.searchsorted(grid, test["timestamp"].min().to_datetime64())
    # bars strictly between: the last training bar and the first test bar ...
    assert first_test - last_train - 1 >= H + embargo
    # ... and every training label window ends more than `embargo` bars before the test
    assert first_test - last_label_end - 1 >= embargo
    assert (info["gap_bars"], info["label_gap_bars"]) == (
        first_test - last_train - 1,
        first_test - last_label_end - 1,
    )
    # the test period is the last 20% of the labelled dates, all of them
    labelled_dates = np.unique(panel.loc[panel[TARGET].notna(), "timestamp"])
    assert test["timestamp"].nunique() == round(0.2 * len(labelled_dates))
    assert test["timestamp"].max() == labelled_dates.max()
    # S02 lacks dates 199..203, so its label windows just before the hole reach past them:
    # they are purged by label end, and S02 stops training earlier than the others
    le = f"label_end_{H}"
    s02 = panel[(panel["symbol"] == "S02") & panel[TARGET].notna()].reset_index(drop=True)
    last_s02 = train.loc[train["symbol"] == "S02", "timestamp"].max()
    assert last_s02 < train["timestamp"].max()
    next_row = s02.loc[s02["timestamp"] > last_s02].iloc[0]
    assert np.searchsorted(grid, next_row[le].to_datetime64()) >= first_test - embargo
    assert info["test_first"] == test["timestamp"].min().isoformat()
    assert info["train_rows"] == len(train)
    assert test[TARGET].notna().all() and train[TARGET].notna().all()


def test_meta_validation_is_walk_forward_over_oof_dates_with_a_gap(built):
    *_, oof, result = built
    v = result.meta_validation
    grid = np.unique(oof.frame["timestamp"].to_numpy())
    assert v["scheme"] == "walk_forward" and v["gap_bars"] >= H and len(v["folds"]) == 4
    for fold in v["folds"]:
        last = np.searchsorted(grid, np.datetime64(fold["train_last"]))
        first = np.searchsorted(grid, np.datetime64(fold["test_first"]))
        assert first - last - 1 >= H
        assert set(fold["scores"]) == set(v["candidates"])
    best = max(v["mean_scores"].values())
    assert v["mean_scores"][f"{v['chosen_alpha']:g}"] == best
    assert result.meta["alpha"] == v["chosen_alpha"]


def test_the_meta_learner_reuses_the_oof_columns_and_refits_each_base_model_once(
    monkeypatch, built
):
    _, train, test, info, oof, result = built
    calls: list[tuple[str, int]] = []
    real = stacking_module.fit_base_model

    def counting(name, settings, x, y, params=None):
        calls.append((name, len(y)))
        return real(name, settings, x, y, params)

    monkeypatch.setattr(stacking_module, "fit_base_model", counting)
    again = fit_stacking(
        oof,
        train,
        test,
        TARGET,
        H,
        FEATURES,
        small_settings(),
        model_features=SPLIT_SIGNALS,
        split_info=info,
    )
    # one fit per base model, on the whole training window, for the test period only
    assert calls == [("lightgbm", len(train)), ("xgboost", len(train))]
    assert again.meta == result.meta


def test_saved_stack_is_native_reproducible_and_predicts_the_same(tmp_path, built):
    panel, *_, result = built
    # a second, independent fit from the raw panel, saved to another folder
    *_, result_again = build(small_settings(), panel=panel)
    paths_a = save_stacking(result, tmp_path / "a")
    paths_b = save_stacking(result_again, tmp_path / "b")
    names = [p.name for p in paths_a]
    assert names == [
        "evaluation.json",
        "lightgbm.txt",
        "meta_learner.json",
        "model_card.json",
        "test_predictions.parquet",
        "xgboost.json",
    ]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == names  # nothing else
    for a, b in zip(paths_a, paths_b, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name

    for path in paths_a:  # no pickle anywhere: not by name, not by magic bytes
        head = path.read_bytes()[:2]
        assert path.suffix not in PICKLE_SUFFIXES and head[:1] != b"\x80", path.name
    assert (tmp_path / "a" / "lightgbm.txt").read_text().startswith("tree\n")
    assert json.loads((tmp_path / "a" / "xgboost.json").read_text())["learner"]
    assert (tmp_path / "a" / "test_predictions.parquet").read_bytes()[:4] == b"PAR1"

    loaded = load_stacking(tmp_path / "a")
    _, _, test, *_ = built
    np.testing.assert_array_equal(
        loaded.predict(test), result.test_predictions["pred_stack"].to_numpy()
    )
    base = loaded.predict_base(test)
    for name in ("lightgbm", "xgboost"):
        np.testing.assert_array_equal(base[f"pred_{name}"], result.test_predictions[f"pred_{name}"])
    back = read_test_predictions(tmp_path / "a")
    pd.testing.assert_frame_equal(back, result.test_predictions, check_dtype=False)

    meta = json.loads((tmp_path / "a" / "meta_learner.json").read_text())
    assert meta["feature_order"] == ["pred_lightgbm", "pred_xgboost"] and meta["kind"] == "ridge"
    card = json.loads((tmp_path / "a" / "model_card.json").read_text())
    assert card["model_features"] == SPLIT_SIGNALS and card["features"] == FEATURES
    assert card["training_window"]["last"] < card["test_window"]["first"]
    assert len(card["folds"]["folds"]) == 4 and card["weights"] == pytest.approx(result.weights)


def test_logistic_meta_learner_predicts_the_probability_of_a_rise(built):
    panel, *_ = built
    *_, result = build(small_settings(meta_learner="logistic", nonneg_weights=True), panel=panel)
    p = result.test_predictions["pred_stack"].to_numpy()
    assert ((p > 0) & (p < 1)).all()
    stack = result.test_metrics["stack"]
    assert stack["r2"] is None and stack["auc_sign"] > 0.75
    assert result.meta["kind"] == "logistic" and result.meta["link"] == "logistic"
    assert min(result.meta["coef"].values()) >= 0.0


def test_nonneg_weights_keep_a_noise_model_at_zero(built):
    panel, *_ = built
    noise_only = {"lightgbm": ["f1", "f2"], "xgboost": ["n1", "n2"]}
    *_, free = build(small_settings(nonneg_weights=False), model_features=noise_only, panel=panel)
    *_, bounded = build(small_settings(nonneg_weights=True), model_features=noise_only, panel=panel)
    # unconstrained, ridge gives the noise model a negative weight (k-fold OOF predictions of
    # a noise model anti-correlate with the fold's mean return); nonneg clips it to 0
    assert free.meta["nonneg"] is False and free.meta["coef"]["xgboost"] < 0
    assert bounded.meta["nonneg"] is True
    assert bounded.meta["coef"]["xgboost"] == 0.0 and bounded.meta["coef"]["lightgbm"] > 0
    assert bounded.weights == {"lightgbm": 1.0, "xgboost": 0.0}


def test_linear_extras_are_saved_as_coefficients_and_nonlinear_ones_refused(tmp_path, built):
    panel, *_ = built
    linear = small_settings(
        models=ModelSettings(
            n_estimators=10, num_leaves=4, extra_sklearn=("sklearn.linear_model.Ridge",)
        )
    )
    _, _, test, _, _, result = build(linear, model_features=None, panel=panel)
    paths = save_stacking(result, tmp_path / "lin")
    assert "ridge.json" in [p.name for p in paths]
    doc = json.loads((tmp_path / "lin" / "ridge.json").read_text())
    assert doc["kind"] == "linear" and doc["features"] == FEATURES and len(doc["coef"]) == 4
    loaded = load_stacking(tmp_path / "lin")
    np.testing.assert_array_equal(
        loaded.predict(test), result.test_predictions["pred_stack"].to_numpy()
    )

    tree = small_settings(
        models=ModelSettings(
            n_estimators=5, num_leaves=4, extra_sklearn=("sklearn.tree.DecisionTreeRegressor",)
        )
    )
    *_, result = build(tree, model_features=None, panel=panel)
    with pytest.raises(
        ValueError, match="cannot save base model 'decisiontreeregressor'.*without pickle"
    ):
        save_stacking(result, tmp_path / "tree")


def test_a_test_period_overlapping_training_labels_is_refused(built):
    _, train, test, info, oof, _ = built
    with pytest.raises(ValueError, match="the hold-out would leak"):
        fit_stacking(
            oof,
            train,
            train.tail(50),
            TARGET,
            H,
            FEATURES,
            small_settings(),
            model_features=SPLIT_SIGNALS,
        )


def test_missing_stacking_files_are_named(tmp_path):
    from cohortflow.domain import ArtifactKind
    from cohortflow.store import AttemptKey, Store

    with pytest.raises(FileNotFoundError, match=r"stacking model not found; expected .*stacking"):
        Store(tmp_path).read(ArtifactKind.STACKING, AttemptKey("ab" * 6, 0, TARGET))


def test_save_and_load_through_the_store_on_a_upath(built):
    from cohortflow.domain import ArtifactKind
    from cohortflow.store import AttemptKey, Store, read_test_predictions

    _, _, test, _, _, result = built
    store = Store("memory://cohortflow-test/stacking-root")
    key = AttemptKey("cd" * 6, 0, TARGET)
    written = store.write(ArtifactKind.STACKING, key, result)
    assert sorted(w.relpath.rsplit("/", 1)[1] for w in written)[:2] == [
        "evaluation.json",
        "lightgbm.txt",
    ]
    loaded = store.read(ArtifactKind.STACKING, key)
    np.testing.assert_array_equal(
        loaded.predict(test), result.test_predictions["pred_stack"].to_numpy()
    )
    pd.testing.assert_frame_equal(
        read_test_predictions(store, key), result.test_predictions, check_dtype=False
    )


def test_feature_subsets_default_to_the_oof_datasets_and_must_match_it(built):
    _, train, test, info, oof, result = built
    again = fit_stacking(oof, train, test, TARGET, H, FEATURES, small_settings(), split_info=info)
    assert again.meta == result.meta and again.features == result.features
    with pytest.raises(ValueError, match="differ from those of the OOF dataset"):
        fit_stacking(
            oof,
            train,
            test,
            TARGET,
            H,
            FEATURES,
            small_settings(),
            model_features={"lightgbm": FEATURES, "xgboost": FEATURES},
        )
