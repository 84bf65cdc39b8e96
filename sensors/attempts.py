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
    try:
        found = exclusions_of(cohortflow.store(), settings.targets, batch, attempt)
    except ArtifactNotFoundError as exc:
        return SkipReason(f"attempt {attempt} of {batch} is not complete: {exc}")
    nxt = decide_next_attempt(found, attempt, settings.attempt_limit)
    if nxt is None:
        return SkipReason(f"batch {batch} attempt {attempt}: no leak remains or the limit is reached")
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
