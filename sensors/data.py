"""The data sensor: a new universe adds a batch partition and runs attempt 0; changed bar
files, settings or code for a known universe run a new attempt. An unchanged folder
starts nothing, whatever the cursor (the decision reads the sealed attempts on disk:
:func:`cohortflow.intake.plan_attempt`, the same as ``cohortflow run``'s)."""

import dataclasses
import json

from dagster import RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from cohortflow.attempts import AttemptInputs
from cohortflow.errors import CohortflowError
from cohortflow.intake import (
    batch_files,
    folder_signature,
    inputs_of,
    plan_attempt,
    record_decision,
    take_in,
)
from cohortflow_dagster.assets.jobs import cohortflow_job
from cohortflow_dagster.partitions import attempt_dim_partitions, attempt_key, batch_partitions
from cohortflow_dagster.resources.cohortflow import (
    CohortflowResource,
    default_sensor_status,
    sensor_interval_s,
)
from cohortflow_dagster.sensors.runs import run_config, run_tags, unfinished_runs


@sensor(
    job=cohortflow_job,
    default_status=default_sensor_status(),
    minimum_interval_seconds=sensor_interval_s(30),
    description="Watches the data folder: registers each new universe as a batch partition "
    "and runs attempt 0; runs a new attempt when a known universe's files, the settings or "
    "the code change. Sealed attempts are never rerun.",
)
def data_sensor(context: SensorEvaluationContext, cohortflow: CohortflowResource):
    cursor = json.loads(context.cursor) if context.cursor else {}
    signature = folder_signature(cohortflow.data_dir)
    settings = cohortflow.settings()
    state = {"folder": signature, "settings": cohortflow.settings_fingerprint()}
    if {k: cursor.get(k) for k in state} == state:
        return SkipReason(f"no change in {cohortflow.data_dir} or the settings")
    try:
        intake = take_in(cohortflow.data_dir, cohortflow.output_root, settings)
    except CohortflowError as exc:
        # remember the folder state so a bad file is reported once, not every tick
        context.update_cursor(json.dumps(state, sort_keys=True))
        return SkipReason(f"cannot use the data folder: {exc}")
    batch = intake.record.batch
    latest = intake.record.latest
    inputs = inputs_of(batch_files(intake.universe), settings)
    if latest is not None and latest.overrides:
        # the latest attempt ran with settings from the Launchpad: those settings, not the
        # YAML's, are what a next attempt is compared with (and runs with)
        own = AttemptInputs.of(latest)
        inputs = dataclasses.replace(
            inputs,
            settings_fingerprint=own.settings_fingerprint,
            settings=own.settings,
            overrides=own.overrides,
        )
    decision = plan_attempt(cohortflow.output_root, intake.record, inputs, settings)
    if decision.attempt is None or (
        not decision.new and latest is not None and decision.attempt == latest.attempt
    ):
        # nothing changed; an incomplete attempt is completed by `cohortflow run` or a
        # re-materialization, never behind the user's back
        context.update_cursor(json.dumps(state, sort_keys=True))
        return SkipReason(f"batch {batch}: {decision.message}")
    busy = unfinished_runs(context.instance, batch, decision.attempt)
    if busy:
        return SkipReason(
            f"batch {batch} attempt {decision.attempt} has a run in progress: {busy[0]}"
        )
    record_decision(cohortflow.output_root, batch, decision)
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=run_tags(batch, decision)["cohortflow/run_key"],
                partition_key=attempt_key(batch, decision.attempt),
                tags=run_tags(batch, decision),
                run_config=run_config(decision),
            )
        ],
        dynamic_partitions_requests=[
            batch_partitions.build_add_request([batch]),
            attempt_dim_partitions.build_add_request([str(decision.attempt)]),
        ],
        cursor=json.dumps(state, sort_keys=True),
    )
