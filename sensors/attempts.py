"""The attempt sensor: when a run of attempt n succeeds and found leaks, start n+1."""

from dagster import (
    DagsterRunStatus,
    RunRequest,
    RunStatusSensorContext,
    SensorResult,
    SkipReason,
    run_status_sensor,
)

from assets.jobs import cohortflow_job
from assets.partitions import attempt_dim_partitions, attempt_key, split_key
from cohortflow.errors import ArtifactNotFoundError
from cohortflow.intake import decide_next_attempt
from cohortflow.layout import Scope
from resources.cohortflow import CohortflowResource, default_sensor_status

PARTITION_TAG = "dagster/partition"


def exclusions_of(store, targets, batch: str, attempt: int) -> dict:
    out = {}
    for target in targets:
        items = store.read_exclusions(target, batch, attempt)
        out[target] = next(v for s, v in items.items() if s.view == "CROSS_SECTIONAL")
    return out


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    request_job=cohortflow_job,
    default_status=default_sensor_status(),
    minimum_interval_seconds=15,
    description="After a successful run of attempt n: if any target found leaks and the "
    "attempt limit allows, add attempt n+1 and run it without them.",
)
def attempt_sensor(context: RunStatusSensorContext, cohortflow: CohortflowResource):
    key = context.dagster_run.tags.get(PARTITION_TAG)
    if not key or "|" not in key:
        return SkipReason("not a batch × attempt run")
    batch, attempt = split_key(key)
    settings = cohortflow.settings()
    # any job may finish an attempt (the whole-graph job, a UI backfill, the last stage job);
    # only a complete one counts: every target's training stage written
    store = cohortflow.store()
    unfinished = [
        t for t in settings.targets
        if not Scope(t, "TRAINING", "CROSS_SECTIONAL", batch, attempt).complete_marker(store.root).exists()
    ]  # fmt: skip
    if unfinished:
        return SkipReason(
            f"batch {batch} attempt {attempt} is not complete yet: {', '.join(unfinished)}"
        )
    try:
        found = exclusions_of(cohortflow.store(), settings.targets, batch, attempt)
    except ArtifactNotFoundError as exc:
        return SkipReason(f"attempt {attempt} of {batch} is not complete: {exc}")
    nxt = decide_next_attempt(found, attempt, settings.attempt_limit)
    if nxt is None:
        return SkipReason(
            f"batch {batch} attempt {attempt}: no leak remains or the limit is reached"
        )
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"{batch}:{nxt}:after-leaks",
                partition_key=attempt_key(batch, nxt),
                tags={"cohortflow/reason": f"leaks found in attempt {attempt}"},
            )
        ],
        dynamic_partitions_requests=[attempt_dim_partitions.build_add_request([str(nxt)])],
    )
