"""What the sensors and ``cohortflow run`` put on a run, and the runs still going."""

from __future__ import annotations

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from cohortflow.attempts import Decision
from cohortflow.canonical import fingerprint
from cohortflow_dagster.partitions import attempt_key, attempt_partitions

UNFINISHED = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def run_tags(batch: str, decision: Decision) -> dict[str, str]:
    """The same tags on every run of an attempt, whoever starts it: why the attempt exists,
    and a run key made of the batch, the attempt and its inputs."""
    record = decision.record
    inputs = fingerprint(
        [record.bars_fingerprint, record.settings_fingerprint, record.code_version]
    )[:12]
    return {
        "cohortflow/reason": record.reason.value,
        "cohortflow/run_key": f"{batch}:{decision.attempt}:{inputs}",
        "cohortflow/symbols": ",".join(sorted({f.symbol for f in record.files}))[:200],
    }


def unfinished_runs(instance: DagsterInstance, batch: str, attempt: int) -> list[str]:
    """Ids of the runs of this partition that are queued or going."""
    tags = attempt_partitions.get_tags_for_partition_key(str(attempt_key(batch, attempt)))
    runs = instance.get_runs(filters=RunsFilter(tags=tags, statuses=UNFINISHED), limit=5)
    return [r.run_id for r in runs]
