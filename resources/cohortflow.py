"""The one resource every asset takes: data folder, output root, settings."""

from __future__ import annotations

import os

from dagster import ConfigurableResource, DefaultSensorStatus
from pydantic import PrivateAttr

from cohortflow.canonical import fingerprint
from cohortflow.settings import Settings, load_settings
from cohortflow.store import Store

DEFAULT_DATA_DIR = "data/bars"
DEFAULT_OUTPUT_ROOT = "output"


def default_data_dir() -> str:
    return os.environ.get("COHORTFLOW_DATA_DIR", DEFAULT_DATA_DIR)


def default_output_root() -> str:
    return os.environ.get("COHORTFLOW_OUTPUT_ROOT", DEFAULT_OUTPUT_ROOT)


def default_sensor_status() -> DefaultSensorStatus:
    """Sensors run as soon as the daemon does (``make ui``); ``COHORTFLOW_SENSORS=stopped``
    leaves them off, e.g. for tests that drive runs themselves."""
    if os.environ.get("COHORTFLOW_SENSORS", "running").lower() == "stopped":
        return DefaultSensorStatus.STOPPED
    return DefaultSensorStatus.RUNNING


def sensor_interval_s(default: int) -> int:
    """Seconds between sensor ticks; ``COHORTFLOW_SENSOR_INTERVAL_S`` overrides (tests)."""
    try:
        return max(1, int(os.environ.get("COHORTFLOW_SENSOR_INTERVAL_S", default)))
    except ValueError:
        return default


def default_settings_path() -> str:
    return os.environ.get("COHORTFLOW_SETTINGS", "")


class CohortflowResource(ConfigurableResource):
    """``data_dir``: one bar file per symbol; ``output_root``: a local folder or any UPath
    URL (``s3://…``, ``memory://…``); ``settings_path``: a YAML file, empty for defaults."""

    data_dir: str = DEFAULT_DATA_DIR
    output_root: str = DEFAULT_OUTPUT_ROOT
    settings_path: str = ""
    _settings: Settings | None = PrivateAttr(default=None)

    def store(self) -> Store:
        return Store(self.output_root)

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.settings_path or None)
        return self._settings

    def settings_fingerprint(self) -> str:
        return fingerprint(self.settings().fingerprint_fields())
