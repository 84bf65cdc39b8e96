"""The cohortflow code location: loads the settings, builds the graph, merges the parts.

``COHORTFLOW_DATA_DIR``, ``COHORTFLOW_OUTPUT_ROOT`` and ``COHORTFLOW_SETTINGS`` (a YAML
file) configure it; the horizons in the settings decide which per-target assets exist.
"""

from __future__ import annotations

import os

# OpenMP threads of LightGBM/XGBoost spin-waiting against each other (several fits, several
# runs on few cores) stall; set before either library starts its thread pool
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dagster import Definitions, colored_console_logger, in_process_executor  # noqa: E402

from cohortflow.settings import load_settings  # noqa: E402
from cohortflow_dagster.assets import build_assets  # noqa: E402
from cohortflow_dagster.assets.jobs import ALL_JOBS  # noqa: E402
from cohortflow_dagster.io_managers.canonical_store import CanonicalStoreIOManager  # noqa: E402
from cohortflow_dagster.resources.cohortflow import (  # noqa: E402
    CohortflowResource,
    default_data_dir,
    default_output_root,
    default_settings_path,
)
from cohortflow_dagster.resources.home import export_runs_at_once  # noqa: E402
from cohortflow_dagster.sensors import attempt_sensor, data_sensor  # noqa: E402

# fit threads follow the runs this Dagster home lets run at once (n_threads: 0, auto)
export_runs_at_once()


def build_definitions(
    data_dir: str | None = None, output_root: str | None = None, settings_path: str | None = None
) -> Definitions:
    data_dir = data_dir or default_data_dir()
    output_root = output_root or default_output_root()
    settings_path = settings_path if settings_path is not None else default_settings_path()
    settings = load_settings(settings_path or None)
    return Definitions(
        assets=build_assets(settings),
        jobs=ALL_JOBS,
        # The implicit asset job (the UI's Materialize button, asset backfills) uses this
        # executor; in-process for the reason given in assets/jobs.py.
        executor=in_process_executor,
        sensors=[data_sensor, attempt_sensor],
        # a run's own terminal (`make ui`, `dagster dev`) shows INFO and up, not every event
        loggers={"console": colored_console_logger.configured({"log_level": "INFO"})},
        resources={
            "cohortflow": CohortflowResource(
                data_dir=data_dir, output_root=output_root, settings_path=settings_path
            ),
            "io_manager": CanonicalStoreIOManager(root=output_root),
        },
    )


defs = build_definitions()
