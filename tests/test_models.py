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
