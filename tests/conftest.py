"""Shared fixtures: small synthetic universes and quick settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cohortflow_dagster.resources.home import new_home_yaml

PROJECT = Path(__file__).resolve().parent.parent
FAST_SETTINGS = PROJECT / "config" / "fast.yaml"

# OpenMP threads of LightGBM/XGBoost spin-waiting against each other stall 2-core runs
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture
def fast_settings_path() -> Path:
    return FAST_SETTINGS


@pytest.fixture
def small_universe(tmp_path: Path):
    """4 synthetic symbols × 400 bars with planted signals and leaks (parquet files)."""
    from cohortflow.synthetic import generate

    data = tmp_path / "data"
    truth = generate(data, fmt="parquet", n_symbols=4, n_bars=400, n_noise=4, seed=3)
    return data, truth


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    # the dagster.yaml `cohortflow` writes into a new home
    (home / "dagster.yaml").write_text(new_home_yaml())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home
