"""The asset graph: batch-level data assets, one set of assets per target, the report."""

from __future__ import annotations

from dagster import AssetsDefinition

from assets.batch import feature_panel, universe_bars
from assets.reports import build_report_assets
from assets.targets import build_target_assets
from cohortflow.settings import Settings


def build_assets(settings: Settings) -> list[AssetsDefinition]:
    """All assets for the targets of ``settings`` (one set per horizon)."""
    out: list[AssetsDefinition] = [universe_bars, feature_panel]
    for horizon in settings.horizons:
        out += build_target_assets(f"fwd_ret_{horizon}", int(horizon))
    out += build_report_assets(settings.targets)
    return out
