"""The data sensor: a new universe adds a batch partition and requests attempt 0;
changed files of a known universe re-request its latest attempt."""

import json

from dagster import RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from assets.jobs import cohortflow_job
from assets.partitions import attempt_dim_partitions, attempt_key, batch_partitions
from cohortflow.canonical import sha256_hex
from cohortflow.errors import CohortflowError
from cohortflow.intake import attempts_on_disk, folder_signature, take_in
from resources.cohortflow import CohortflowResource, default_sensor_status


@sensor(
    job=cohortflow_job,
    default_status=default_sensor_status(),
    minimum_interval_seconds=30,
    description="Watches the data folder: registers each new universe as a batch partition "
    "and runs attempt 0; re-runs the latest attempt when a known universe's files change.",
)
def data_sensor(context: SensorEvaluationContext, cohortflow: CohortflowResource):
    cursor = json.loads(context.cursor) if context.cursor else {}
    signature = folder_signature(cohortflow.data_dir)
    if cursor.get("folder") == signature:
        return SkipReason(f"no change in {cohortflow.data_dir}")
    settings = cohortflow.settings()
    try:
        intake = take_in(cohortflow.data_dir, cohortflow.output_root, settings)
    except CohortflowError as exc:
        # remember the folder state so a bad file is reported once, not every tick
        context.update_cursor(json.dumps({**cursor, "folder": signature}, sort_keys=True))
        return SkipReason(f"cannot use the data folder: {exc}")
    batch = intake.record.batch
    # a short fingerprint of the files' contents: run keys and cursors stay small at 500 symbols
    data_fp = sha256_hex(",".join(f"{f.symbol}:{f.sha256}" for f in intake.record.files).encode())[
        :16
    ]
    new_cursor = json.dumps({"folder": signature, "batch": batch, "data": data_fp}, sort_keys=True)
    known = context.instance.has_dynamic_partition(batch_partitions.name, batch)
    attempts = attempts_on_disk(cohortflow.output_root, batch, settings.targets)
    if known and cursor.get("batch") == batch and cursor.get("data") == data_fp:
        context.update_cursor(new_cursor)
        return SkipReason(f"batch {batch}: files touched but their content is unchanged")
    attempt = max(attempts) if (known and attempts) else 0
    reason = "changed files" if known else "new universe"
    requests = [
        batch_partitions.build_add_request([batch]),
        attempt_dim_partitions.build_add_request([str(attempt)]),
    ]
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"{batch}:{attempt}:{data_fp}",
                partition_key=attempt_key(batch, attempt),
                tags={
                    "cohortflow/reason": reason,
                    "cohortflow/symbols": ",".join(intake.record.symbols),
                },
            )
        ],
        dynamic_partitions_requests=requests,
        cursor=new_cursor,
    )
