"""Asset checks, one partition at a time. The logic lives in ``cohortflow.validate``."""

import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    PreviewWarning,
    asset_check,
    multi_asset_check,
)

from assets.partitions import attempt_partitions, split_key
from cohortflow import validate
from resources.cohortflow import CohortflowResource

STAGE_OF_SNAPSHOT = {
    "cohort_snapshot_target_ranking": "TARGET_RANKING",
    "cohort_snapshot_feature_selection": "FEATURE_SELECTION",
    "cohort_snapshot_training": "TRAINING",
}


def _result(
    verdict: validate.Verdict, severity: AssetCheckSeverity, **key: Any
) -> AssetCheckResult:
    return AssetCheckResult(
        **key,
        passed=verdict.passed,
        severity=severity,
        description=verdict.message,
        metadata={"detail": verdict.message, **verdict.metadata},
    )


def _check(
    target: str,
    asset_name: str,
    name: str,
    description: str,
    fn: Callable[..., validate.Verdict],
    severity: AssetCheckSeverity = AssetCheckSeverity.ERROR,
) -> AssetChecksDefinition:
    @asset_check(
        asset=AssetKey([target, asset_name]),
        name=name,
        description=description,
        partitions_def=attempt_partitions,
    )
    def _run(
        context: AssetCheckExecutionContext, cohortflow: CohortflowResource
    ) -> AssetCheckResult:
        batch, attempt = split_key(context.partition_key)
        return _result(fn(cohortflow.store(), target, batch, attempt), severity)

    return _run


#: The three checks of a cohort snapshot: (name, description, logic, severity).
SNAPSHOT_CHECKS = (
    (
        "snapshot_schema",
        "snapshot.json's scoring_schema_version equals metrics.json's schema.scoring; "
        "the artifacts manifest is set.",
        validate.cohort_consistency,
        AssetCheckSeverity.ERROR,
    ),
    (
        "manifest_integrity",
        "The attempt's files still match artifacts_manifest_sha256.",
        validate.manifest_integrity,
        AssetCheckSeverity.ERROR,
    ),
    (
        "comparable_with_previous",
        "diff_prev.json's verdict: comparable with the previous snapshot.",
        validate.comparability,
        AssetCheckSeverity.WARN,
    ),
)


def _snapshot_checks(target: str, asset_name: str, stage: str) -> AssetChecksDefinition:
    """The snapshot's three checks in one step (one step costs ~50 ms of Dagster's own
    bookkeeping; three per snapshot, nine per target, added up). Each is still its own
    check in the UI and can run alone."""
    key = AssetKey([target, asset_name])
    specs = [
        AssetCheckSpec(name, asset=key, description=text, partitions_def=attempt_partitions)
        for name, text, _, _ in SNAPSHOT_CHECKS
    ]

    @multi_asset_check(
        name=re.sub(r"\W", "_", f"{target}__{asset_name}_checks"), specs=specs, can_subset=True
    )
    def _run(
        context: AssetCheckExecutionContext, cohortflow: CohortflowResource
    ) -> Iterator[AssetCheckResult]:
        batch, attempt = split_key(context.partition_key)
        store = cohortflow.store()
        selected = context.selected_asset_check_keys
        for name, _, fn, severity in SNAPSHOT_CHECKS:
            if AssetCheckKey(key, name) in selected:
                verdict = fn(store, target, stage, batch, attempt)
                yield _result(verdict, severity, asset_key=key, check_name=name)

    return _run


def build_checks(targets: Sequence[str]) -> list[AssetChecksDefinition]:
    # partitioned asset checks are a preview feature in 1.13; we rely on it on purpose
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)
        return _build_checks(targets)


def _build_checks(targets: Sequence[str]) -> list[AssetChecksDefinition]:
    checks = []
    for t in targets:
        checks += [
            _check(
                t,
                "feature_exclusions",
                "no_leaks_remain",
                "Fails while features found leaking in this attempt are still in use; "
                "the attempt sensor then starts attempt n+1 without them.",
                validate.leaks_remaining,
            ),
            _check(
                t,
                "feature_importances",
                "importances_schema",
                "Every importance CSV has feature, importance, rank, share; ranks 1..n.",
                validate.importances_schema,
            ),
            _check(
                t,
                "featureset",
                "featureset_schema",
                "Featuresets are well formed, keep at least one feature and no random probe.",
                validate.featureset_schema,
            ),
            _check(
                t,
                "oof_dataset",
                "oof_schema",
                "OOF parquet has timestamp, symbol, fold, y_true, pred_{model}; one row each.",
                validate.oof_schema,
            ),
            _check(
                t,
                "stacking_model",
                "native_formats",
                "The stacking folder holds its model card and meta-learner, and no pickle.",
                validate.stacking_files,
            ),
        ]
        checks += [
            _snapshot_checks(t, asset_name, stage)
            for asset_name, stage in STAGE_OF_SNAPSHOT.items()
        ]
    return checks
