"""The attempt sensor: when a run of the latest attempt n succeeds and n found leaks (and
the leak-fix chain may go on), add attempt n+1 and run it without them."""

from dagster import (
    DagsterRunStatus,
    RunRequest,
    RunStatusSensorContext,
    SensorResult,
    SkipReason,
    run_status_sensor,
)

from cohortflow.domain import AttemptReason
from cohortflow.errors import CohortflowError
from cohortflow.intake import plan_after, record_decision
from cohortflow.registry import BatchRegistry
from cohortflow_dagster.assets.jobs import cohortflow_job
from cohortflow_dagster.partitions import attempt_dim_partitions, attempt_key, split_key
from cohortflow_dagster.resources.cohortflow import (
    CohortflowResource,
    default_sensor_status,
    sensor_interval_s,
)
from cohortflow_dagster.sensors.runs import run_tags

PARTITION_TAG = "dagster/partition"


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    request_job=cohortflow_job,
    monitor_all_code_locations=False,
    default_status=default_sensor_status(),
    minimum_interval_seconds=sensor_interval_s(15),
    description="After a successful run of the latest attempt n: if n is complete and found "
    "leaks, and the attempt limit allows, add attempt n+1 and run it without them.",
)
def attempt_sensor(context: RunStatusSensorContext, cohortflow: CohortflowResource):
    key = context.dagster_run.tags.get(PARTITION_TAG)
    if not key or "|" not in key:
        return SkipReason("not a batch × attempt run")
    try:
        batch, attempt = split_key(key)
        record = BatchRegistry(cohortflow.output_root).get(batch)
        decision = plan_after(cohortflow.output_root, record, attempt, cohortflow.settings())
    except CohortflowError as exc:
        return SkipReason(f"{key}: {exc}")
    if decision.attempt is None or decision.record is None:
        return SkipReason(f"batch {batch}: {decision.message}")
    if decision.record.reason is not AttemptReason.LEAKS_FOUND or decision.attempt <= attempt:
        return SkipReason(
            f"batch {batch} attempt {attempt}: {decision.message} (not this sensor's)"
        )
    record_decision(cohortflow.output_root, batch, decision)
    tags = run_tags(batch, decision)
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=tags["cohortflow/run_key"],
                partition_key=attempt_key(batch, decision.attempt),
                tags=tags,
            )
        ],
        dynamic_partitions_requests=[
            attempt_dim_partitions.build_add_request([str(decision.attempt)])
        ],
    )
