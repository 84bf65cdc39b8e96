"""The asset checks of each artifact, evaluated in the step that writes it (one step per
target and stage: no extra steps). The logic lives in :mod:`cohortflow.validate`."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    PreviewWarning,
)

from cohortflow import validate
from cohortflow.domain import ArtifactKind
from cohortflow.store import AttemptKey, Store
from cohortflow_dagster.metadata import num
from cohortflow_dagster.partitions import attempt_partitions


def check_specs(keys: dict[ArtifactKind, AssetKey]) -> list[AssetCheckSpec]:
    """The check specs of the assets a step writes (partitioned like their assets)."""
    # partitioned asset checks are a preview feature in 1.13; we rely on it on purpose
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)
        return [
            AssetCheckSpec(
                check.name,
                asset=key,
                description=check.description,
                partitions_def=attempt_partitions,
            )
            for kind, key in keys.items()
            for check in validate.checks_of(kind)
        ]


def check_results(
    context: AssetExecutionContext,
    store: Store,
    key: AttemptKey,
    keys: dict[ArtifactKind, AssetKey],
    attempt_limit: int,
) -> Iterator[AssetCheckResult]:
    """The selected checks of a step's assets, once its outputs are written."""
    selected = context.selected_asset_check_keys
    for kind, asset_key in keys.items():
        for check in validate.checks_of(kind):
            if not any(k.asset_key == asset_key and k.name == check.name for k in selected):
                continue
            verdict = validate.run_check(check, store, key, kind, attempt_limit)
            yield AssetCheckResult(
                asset_key=asset_key,
                check_name=check.name,
                passed=verdict.passed,
                severity=AssetCheckSeverity(verdict.severity),
                description=verdict.message,
                metadata={
                    "detail": verdict.message,
                    **{
                        k: num(v) if isinstance(v, float) else v
                        for k, v in verdict.metadata.items()
                    },
                },
            )


__all__ = ["check_results", "check_specs"]
