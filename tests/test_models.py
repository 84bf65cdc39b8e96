"""Model factories: the device setting (no GPU needed: this checks the choices and the
fallback a machine without CUDA takes)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cohortflow import models
from cohortflow.errors import SettingsError
from cohortflow.models import lightgbm_device, lightgbm_regressor, xgboost_regressor
from cohortflow.oof import generate_oof
from cohortflow.settings import Settings
from tests.test_oof import FEATURES, TARGET, H, make_panel, small_settings


@pytest.fixture
def no_cuda_lightgbm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "lightgbm_has_cuda", lambda: False)


def test_cpu_settings_keep_both_models_on_the_cpu() -> None:
    s = Settings(lightgbm_device="gpu")  # ignored unless device is cuda
    assert "device_type" not in lightgbm_regressor(s).get_params()
    assert xgboost_regressor(s).get_params()["device"] == "cpu"


@pytest.mark.parametrize("choice", ["cuda", "gpu", "cpu"])
def test_an_explicit_lightgbm_device_is_used_under_cuda(choice: str) -> None:
    s = Settings(device="cuda", lightgbm_device=choice)
    assert lightgbm_device(s) == choice
    params = lightgbm_regressor(s).get_params()
    assert params.get("device_type", "cpu") == choice
    assert xgboost_regressor(s).get_params()["device"] == "cuda"


def test_auto_follows_what_this_lightgbm_can_do(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(device="cuda")
    monkeypatch.setattr(models, "lightgbm_has_cuda", lambda: True)
    assert lightgbm_device(s) == "cuda"
    monkeypatch.setattr(models, "lightgbm_has_cuda", lambda: False)
    assert lightgbm_device(s) == "cpu"


def test_the_cuda_probe_is_false_on_the_pypi_wheel_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import lightgbm as lgb

    models.lightgbm_has_cuda.cache_clear()
    try:
        lgb.train(
            {"device_type": "cuda", "verbose": -1},
            lgb.Dataset(np.arange(20.0).reshape(10, 2), label=np.arange(10.0)),
            1,
        )
    except lgb.basic.LightGBMError:
        with caplog.at_level(logging.WARNING, logger="cohortflow.models"):
            assert models.lightgbm_has_cuda() is False
        assert "LightGBM stays on the CPU" in caplog.text
    else:  # a LightGBM with CUDA and a device: the probe must say so
        assert models.lightgbm_has_cuda() is True
    models.lightgbm_has_cuda.cache_clear()


def test_device_cuda_without_a_gpu_still_runs_with_the_cpu_numbers(no_cuda_lightgbm) -> None:
    pytest.importorskip("xgboost")
    import xgboost as xgb

    if xgb.build_info().get("USE_CUDA"):
        pytest.skip("this XGBoost has CUDA: its GPU numbers may differ from the CPU's")
    panel = make_panel()
    cpu = generate_oof(panel, TARGET, H, FEATURES, small_settings())
    cuda = generate_oof(panel, TARGET, H, FEATURES, small_settings(device="cuda"))
    for col in [c for c in cpu.frame.columns if c.startswith("pred_")]:
        np.testing.assert_array_equal(cpu.frame[col].to_numpy(), cuda.frame[col].to_numpy())


def test_unknown_lightgbm_device_is_refused() -> None:
    with pytest.raises(SettingsError, match="lightgbm_device"):
        Settings(lightgbm_device="metal")


def test_the_device_does_not_change_the_fingerprint() -> None:
    a = Settings().fingerprint_fields()
    b = Settings(device="cuda", lightgbm_device="gpu").fingerprint_fields()
    assert a == b


# ---------------------------------------------------------------------------- binned fits
def _trees(booster) -> str:
    """A booster's trees (the model text up to its parameters section)."""
    return booster.model_to_string().split("\nparameters:")[0]


def _xy(n: int = 3000, f: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, f))
    x[rng.random((n, f)) < 0.05] = np.nan  # panels have gaps
    y = np.nan_to_num(x[:, 0]) * 0.3 + rng.standard_normal(n)
    return x, y


def test_lightgbm_params_grow_the_same_trees_as_the_regressor() -> None:
    """The native parameters (binned fits) and the scikit-learn wrapper (OOF, stacking) are
    one model: the same trees from the same rows."""
    import lightgbm as lgb

    settings = Settings(n_threads=1)
    x, y = _xy()
    params = models.lightgbm_params(settings, n_estimators=30)
    rounds = params.pop("num_iterations")
    native = lgb.train(params, lgb.Dataset(x, y, params=params), num_boost_round=rounds)
    wrapped = lightgbm_regressor(settings, n_estimators=30).fit(x, y).booster_
    assert _trees(native) == _trees(wrapped)


def test_a_fold_fitted_on_binned_rows_is_the_model_of_those_rows_on_those_bins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``train_lightgbm`` on a subset of one binned dataset grows the trees of a dataset of
    just those rows binned with the same bin edges; binning in chunks changes nothing; the
    fit is counted in row-rounds."""
    import lightgbm as lgb

    from cohortflow import fitlog

    settings = Settings(n_threads=1)
    x, y = _xy()
    params = models.lightgbm_params(settings, n_estimators=20)
    whole = models.lightgbm_binned(lambda idx: x[idx], len(y), y, params)
    monkeypatch.setattr(models, "BIN_CHUNK_ROWS", 700)  # five chunks
    chunked = models.lightgbm_binned(lambda idx: x[idx], len(y), y, params)
    rows = np.flatnonzero(np.arange(len(y)) % 3 != 0)  # a fold: two rows in three
    before = fitlog.snapshot()
    fitted = models.train_lightgbm(params, whole, rows)
    assert (fitlog.snapshot() - before).lightgbm == rows.size * 20
    assert _trees(models.train_lightgbm(params, chunked, rows)) == _trees(fitted)
    # the same rows binned on their own, with the whole set's bin edges (reference=)
    data_params = {k: v for k, v in params.items() if k != "num_iterations"}
    ref = lgb.Dataset(x, y, params=data_params, free_raw_data=False).construct()
    alone = lgb.Dataset(x[rows], y[rows], reference=ref, params=data_params)
    assert _trees(lgb.train(data_params, alone, num_boost_round=20)) == _trees(fitted)
    # a different fold is a different model (the subset is not ignored)
    assert _trees(models.train_lightgbm(params, whole, rows[: rows.size // 2])) != _trees(fitted)
