"""The asset graph: the attempt's data, three stage steps per target, the report."""

from __future__ import annotations

from dagster import AssetsDefinition

from cohortflow.domain import target_name
from cohortflow.settings import Settings
from cohortflow_dagster.assets.data import build_data_assets
from cohortflow_dagster.assets.report import build_report_assets
from cohortflow_dagster.assets.targets import build_target_assets


def build_assets(settings: Settings) -> list[AssetsDefinition]:
    """All assets for the targets of ``settings`` (one set per horizon)."""
    out: list[AssetsDefinition] = [build_data_assets()]
    for horizon in settings.horizons:
        out += build_target_assets(target_name(horizon), int(horizon))
    out += build_report_assets(settings.targets)
    return out
