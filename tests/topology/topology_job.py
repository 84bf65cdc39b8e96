"""The whole graph with Dagster's Celery executor: the job the topology test runs.

Celery workers rebuild it from this module by name (``build_reconstructable_job``, with
this folder as the working directory), as a deployment's workers load the code location.
A deployment would put the same job in assets/jobs.py (docs/scaling.md §3); it lives
here because ``dagster-celery`` is an optional extra (``topology``) the code location
must not need.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CELERY_JOB = "cohortflow_celery_job"


@functools.lru_cache(maxsize=4)
def _definitions(data_dir: str, output_root: str, settings_path: str) -> Any:
    from dagster import AssetSelection, Definitions, define_asset_job
    from dagster_celery import celery_executor

    from cohortflow_dagster.definitions import build_definitions

    celery_job = define_asset_job(
        CELERY_JOB,
        AssetSelection.all(),
        description="The whole graph, each step a Celery task on the workers.",
        executor_def=celery_executor,
    )
    defs = build_definitions(data_dir, output_root, settings_path)
    return Definitions.merge(defs, Definitions(jobs=[celery_job]))


def celery_graph_job(data_dir: str, output_root: str, settings_path: str) -> Any:
    """The celery job on these paths (a worker calls this once per process and step)."""
    warnings.filterwarnings("ignore", message=".*resolve_job_def.*")
    return _definitions(data_dir, output_root, settings_path).resolve_job_def(CELERY_JOB)


def in_process_graph_job(data_dir: str, output_root: str, settings_path: str) -> Any:
    """``cohortflow_job`` (the in-process executor), as ``cohortflow run`` runs it."""
    warnings.filterwarnings("ignore", message=".*resolve_job_def.*")
    return _definitions(data_dir, output_root, settings_path).resolve_job_def("cohortflow_job")


@dataclass(frozen=True)
class PartitionRun:
    """One run of one batch × attempt: which steps ran in which process."""

    batch: str
    attempt: int
    run_id: str
    success: bool
    seconds: float  # wall time of the run (s)
    step_pids: dict[str, int]  # step key -> id of the process that ran it
    workers: dict[str, str]  # step key -> Celery worker (empty for other executors)
    failure: str


def register_attempt(data_dir: str, output_root: str, settings_path: str) -> tuple[str, Any]:
    """Take the folder's universe in and record the attempt to run (``cohortflow run``'s
    first steps: the registry is written under the output root, S3 included)."""
    from cohortflow.intake import batch_files, inputs_of, plan_attempt, record_decision, take_in
    from cohortflow.registry import BatchRegistry
    from cohortflow.settings import load_settings

    settings = load_settings(settings_path)
    intake = take_in(data_dir, output_root, settings)
    batch = intake.record.batch
    inputs = inputs_of(batch_files(intake.universe), settings)
    decision = plan_attempt(output_root, BatchRegistry(output_root).get(batch), inputs, settings)
    if decision.attempt is None:
        raise RuntimeError(f"nothing to run for batch {batch}: {decision.message}")
    record_decision(output_root, batch, decision)
    return batch, decision


def run_attempt(
    job_fn: str,
    data_dir: str,
    output_root: str,
    settings_path: str,
    batch: str,
    decision: Any,
    instance: Any,
    run_config: dict | None = None,
) -> PartitionRun:
    """Run one partition of ``job_fn`` (a function of this module) in ``instance``, with
    the tags the sensors put on an attempt's run; this process is the run worker."""
    from dagster import DagsterEventType, build_reconstructable_job, execute_job

    from cohortflow_dagster.partitions import (
        attempt_dim_partitions,
        attempt_key,
        attempt_partitions,
        batch_partitions,
    )
    from cohortflow_dagster.sensors.runs import run_tags

    attempt = int(decision.attempt)
    instance.add_dynamic_partitions(batch_partitions.name, [batch])
    instance.add_dynamic_partitions(attempt_dim_partitions.name, [str(attempt)])
    partition = str(attempt_key(batch, attempt))
    tags = {**attempt_partitions.get_tags_for_partition_key(partition), **run_tags(batch, decision)}
    job = build_reconstructable_job(
        "topology_job",
        job_fn,
        reconstructable_kwargs={
            "data_dir": data_dir,
            "output_root": output_root,
            "settings_path": settings_path,
        },
        reconstructor_working_directory=str(HERE),
    )
    config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}, **(run_config or {})}
    t0 = time.perf_counter()
    with execute_job(job, instance=instance, tags=tags, run_config=config) as result:
        seconds = time.perf_counter() - t0
        events = result.all_events
        pids = {
            e.step_key: e.pid
            for e in events
            if e.event_type == DagsterEventType.STEP_START and e.step_key
        }
        workers = {}
        for e in events:
            data = getattr(e.event_specific_data, "metadata", None) or {}
            if e.event_type == DagsterEventType.ENGINE_EVENT and "Celery worker" in data:
                workers[e.step_key] = data["Celery worker"].value
        failure = next(
            (
                f"{e.step_key}: {e.event_specific_data.error.to_string()}"
                for e in events
                if e.event_type == DagsterEventType.STEP_FAILURE
            ),
            "",
        )
        return PartitionRun(
            batch, attempt, result.run_id, result.success, seconds, pids, workers, failure
        )
