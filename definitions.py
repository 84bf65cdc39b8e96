"""The cohortflow code location: loads the settings, builds the graph, merges the parts.

``COHORTFLOW_DATA_DIR``, ``COHORTFLOW_OUTPUT_ROOT`` and ``COHORTFLOW_SETTINGS`` (a YAML
file) configure it; the horizons in the settings decide which per-target assets exist.
"""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from assets import build_assets
from assets.checks import build_checks
from assets.jobs import ALL_JOBS
from cohortflow.settings import load_settings
from io_managers.canonical_store import CanonicalStoreIOManager
from resources.cohortflow import (
    CohortflowResource,
    default_data_dir,
    default_output_root,
    default_settings_path,
)
from sensors import attempt_sensor, data_sensor


def build_definitions(
    data_dir: str | None = None, output_root: str | None = None, settings_path: str | None = None
) -> Definitions:
    data_dir = data_dir or default_data_dir()
    output_root = output_root or default_output_root()
    settings_path = settings_path if settings_path is not None else default_settings_path()
    settings = load_settings(settings_path or None)
    return Definitions(
        assets=build_assets(settings),
        asset_checks=build_checks(settings.targets),
        jobs=ALL_JOBS,
        # The implicit asset job (the UI's Materialize button, asset backfills) uses this
        # executor; in-process for the reason given in assets/jobs.py.
        executor=in_process_executor,
        sensors=[data_sensor, attempt_sensor],
        resources={
            "cohortflow": CohortflowResource(
                data_dir=data_dir, output_root=output_root, settings_path=settings_path
            ),
            "io_manager": CanonicalStoreIOManager(root=output_root),
        },
    )


defs = build_definitions()
