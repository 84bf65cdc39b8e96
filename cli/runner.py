"""Materialize a universe attempt after attempt, as the sensors would, in this process.

Runs go into the Dagster instance under ``DAGSTER_HOME`` (or ``.dagster_home``), so they
show in the UI, with the tags the sensors put on theirs. Which attempt runs, and why, is
:func:`cohortflow.intake.plan_attempt`, the data sensor's own decision: the same folder,
settings and code as a sealed attempt run nothing; a change runs a new attempt; an
incomplete attempt is completed (only its unsealed stages run); attempt n+1 follows an
attempt that found leaks, within the attempt limit.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from cohortflow.domain import ROLE, ArtifactKind, Stage, Step, View
from cohortflow.errors import CohortflowError
from cohortflow.intake import (
    Intake,
    batch_files,
    inputs_of,
    leaks_found,
    plan_attempt,
    record_decision,
    take_in,
)
from cohortflow.layout import folder_state, report_path
from cohortflow.registry import AttemptRecord, BatchRegistry
from cohortflow.settings import Settings, load_settings
from cohortflow.store import AttemptKey, Store


@dataclass(frozen=True)
class CheckOutcome:
    """One asset check's evaluation in an attempt's run."""

    asset: str  # "fwd_ret_5/feature_exclusions"
    check: str
    passed: bool
    severity: str  # "ERROR" or "WARN"
    description: str

    def line(self) -> str:
        return f"{self.asset} {self.check} [{self.severity}]: {self.description}"


@dataclass
class AttemptOutcome:
    attempt: int
    reason: str
    run_id: str
    seconds: float
    leaks: dict[str, list[str]]  # target -> "feature (reason)" found in this attempt
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stack_rank_ic: dict[str, float | None] = field(default_factory=dict)  # held-out, per target
    checks: list[CheckOutcome] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)  # the steps this run materialized


@dataclass
class RunResult:
    intake: Intake
    output_root: str
    attempts: list[AttemptOutcome]  # the attempts run now (none when nothing changed)
    latest: int  # the batch's latest attempt after this command
    message: str  # why the loop stopped
    ranking: pd.DataFrame
    evaluation: dict[str, dict[str, Any]]
    dagster_home: str
    attempt_limit: int
    records: tuple[AttemptRecord, ...] = ()


class RunFailed(CohortflowError):
    pass


def run_universe(
    data_dir: str,
    output_root: str,
    settings_path: str = "",
    log: Callable[[str], None] = lambda m: None,
    log_level: str = "WARNING",
    on_step: Callable[[str, str, float, int, int], None] | None = None,
) -> RunResult:
    """Register the folder's universe and run the attempts it needs (see the module
    docstring). ``on_step(step, partition, seconds, done, total)`` is called as each step
    of a run finishes."""
    from dagster import build_reconstructable_job

    from cohortflow_dagster.partitions import attempt_dim_partitions, batch_partitions
    from cohortflow_dagster.resources.home import (
        ensure_dagster_home,
        export_runs_at_once,
        open_instance,
    )

    home = ensure_dagster_home()
    export_runs_at_once(home)
    settings = load_settings(settings_path or None)
    # validate and register first: bad input stops here, before anything is written
    intake = take_in(data_dir, output_root, settings)
    batch = intake.record.batch
    for skipped in intake.universe.skipped:
        log(f"left out {skipped.reason}")
    log(f"universe {', '.join(intake.universe.symbols)} -> batch {batch}")
    inputs = inputs_of(batch_files(intake.universe), settings)
    # the summary needs the universe's names, not its bars: do not hold them through every
    # attempt (0.6 GB at 500 symbols; each run loads the batch's files itself)
    intake = dataclasses.replace(
        intake, universe=dataclasses.replace(intake.universe, bars=MappingProxyType({}))
    )
    warnings.filterwarnings("ignore", message=".*resolve_job_def.*")
    store = Store(output_root)
    # execute_job, not job.execute_in_process: the latter keeps every step's output in
    # memory until the run ends (for result.output_for_node), and at 500 symbols the bars,
    # the panel and every target's OOF and stack held 1.5 GB through the whole attempt
    job = build_reconstructable_job(
        "cohortflow_dagster.cli.runner",
        "whole_graph_job",
        reconstructable_kwargs={
            "data_dir": data_dir,
            "output_root": output_root,
            "settings_path": settings_path,
        },
        reconstructor_working_directory=str(Path.cwd()),
    )
    outcomes: list[AttemptOutcome] = []
    message = ""
    with open_instance(home) as instance:
        instance.add_dynamic_partitions(batch_partitions.name, [batch])
        while True:
            record = BatchRegistry(output_root).get(batch)
            decision = plan_attempt(output_root, record, inputs, settings)
            message = decision.message
            if decision.attempt is None:
                log(message)
                break
            if outcomes and outcomes[-1].attempt == decision.attempt:
                raise RunFailed(
                    f"attempt {decision.attempt} of batch {batch} is still incomplete after its "
                    "run; see the run's logs in the Dagster UI"
                )
            record_decision(output_root, batch, decision)
            attempt = decision.attempt
            instance.add_dynamic_partitions(attempt_dim_partitions.name, [str(attempt)])
            log(f"attempt {attempt} ({decision.record.reason.value}): {message}")
            outcomes.append(
                _run_attempt(instance, job, store, batch, decision, settings, log_level, on_step)
            )
            out = outcomes[-1]
            n_leaks = sum(len(v) for v in out.leaks.values())
            log(f"attempt {attempt}: {out.seconds:.1f} s, {n_leaks} leak finding(s)")
    record = BatchRegistry(output_root).get(batch)
    latest = record.latest.attempt if record.latest else 0
    return RunResult(
        intake,
        output_root,
        outcomes,
        latest,
        message,
        _read_or_empty(store, ArtifactKind.RANKING_TABLE, AttemptKey(batch, latest)),
        {t: _evaluation(store, t, batch, latest) for t in settings.targets},
        str(home),
        settings.attempt_limit,
        record.attempts,
    )


def _run_attempt(
    instance: Any,
    job: Any,
    store: Store,
    batch: str,
    decision: Any,
    settings: Settings,
    log_level: str,
    on_step: Callable[[str, str, float, int, int], None] | None,
) -> AttemptOutcome:
    from dagster import execute_job

    from cohortflow_dagster.partitions import attempt_key, attempt_partitions
    from cohortflow_dagster.sensors.runs import run_tags

    attempt = decision.attempt
    partition = str(attempt_key(batch, attempt))
    label = f"batch {batch} attempt {attempt}"
    selection, steps = assets_to_run(store, batch, attempt, settings)
    tags = {**attempt_partitions.get_tags_for_partition_key(partition), **run_tags(batch, decision)}
    token = f"{time.time_ns()}-{threading.get_ident()}"
    tags["cohortflow/cli"] = token
    box: dict[str, Any] = {}

    def execute() -> None:
        try:
            with execute_job(
                job,
                instance=instance,
                # the step-by-step log is in the UI; the terminal gets progress and the summary
                run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
                tags=tags,
                asset_selection=selection,
                raise_on_error=False,
            ) as result:
                box["success"], box["run_id"] = result.success, result.run_id
                failure = next(
                    (e for e in result.all_events if e.event_type_value == "STEP_FAILURE"), None
                )
                box["failure"] = _failure_text(failure) if failure else None
                box["checks"] = [
                    CheckOutcome(
                        e.asset_key.to_user_string(),
                        e.check_name,
                        e.passed,
                        e.severity.value,
                        e.description or "",
                    )
                    for e in result.get_asset_check_evaluations()
                ]
        except BaseException as exc:  # reported on the main thread
            box["error"] = exc

    t0 = time.perf_counter()
    worker = threading.Thread(target=execute, name="cohortflow-run", daemon=True)
    worker.start()
    _follow_steps(instance, token, worker, len(steps), label, on_step)
    worker.join()
    seconds = time.perf_counter() - t0
    if "error" in box:
        raise box["error"]
    if not box["success"]:
        raise RunFailed(
            f"attempt {attempt} of batch {batch} failed (run {box['run_id']}): "
            f"{box['failure'] or 'see the run logs in the Dagster UI'}"
        )
    run_id = box["run_id"]
    leaks = {}
    for target in settings.targets:
        items = store.read(ArtifactKind.EXCLUSIONS, AttemptKey(batch, attempt, target))
        excl = next(v for s, v in items.items() if s.view == View.CROSS_SECTIONAL)
        leaks[target] = [f"{e.feature} ({e.reason})" for e in excl.found_here()]
    return AttemptOutcome(
        attempt,
        decision.record.reason.value,
        run_id,
        seconds,
        leaks,
        _stage_seconds(instance, run_id),
        {t: _stack_rank_ic(store, t, batch, attempt) for t in settings.targets},
        sorted(box["checks"], key=lambda c: (c.asset, c.check)),
        steps,
    )


def _failure_text(event: Any) -> str:
    """The cause of a step failure in one line: the innermost error's message, not the
    wrapper Dagster puts around it."""
    error = event.event_specific_data.error
    while getattr(error, "cause", None) is not None:
        error = error.cause
    text = (error.message or "").strip().splitlines()
    cause = text[-1] if text else "unknown error"
    return f"step {event.step_key}: {cause}"


def _follow_steps(
    instance: Any,
    token: str,
    worker: threading.Thread,
    total: int,
    partition: str,
    on_step: Callable[[str, str, float, int, int], None] | None,
) -> None:
    """Report each step as it finishes, from the run's events (polled every 0.5 s)."""
    from dagster import DagsterEventType, RunsFilter

    if on_step is None:
        return
    run_id, seen, starts = None, set(), {}
    kinds = {
        DagsterEventType.STEP_START,
        DagsterEventType.STEP_SUCCESS,
        DagsterEventType.STEP_FAILURE,
    }
    while True:
        alive = worker.is_alive()
        if run_id is None:
            runs = instance.get_runs(filters=RunsFilter(tags={"cohortflow/cli": token}), limit=1)
            run_id = runs[0].run_id if runs else None
        if run_id is not None:
            for rec in instance.all_logs(run_id, of_type=kinds):
                step = rec.step_key or ""
                kind = rec.dagster_event.event_type
                if kind == DagsterEventType.STEP_START:
                    starts.setdefault(step, rec.timestamp)
                elif step not in seen:
                    seen.add(step)
                    on_step(
                        step,
                        partition,
                        rec.timestamp - starts.get(step, rec.timestamp),
                        len(seen),
                        total,
                    )
        if not alive:
            return
        time.sleep(0.5)


def assets_to_run(
    store: Store, batch: str, attempt: int, settings: Settings
) -> tuple[list, list[str]]:
    """The asset keys of the steps an attempt still needs (all of them for a new attempt;
    for an incomplete one, the stages whose folders are not all sealed), and the steps."""
    from dagster import AssetKey

    steps: list[str] = [Step.DATA.value]
    keys = [AssetKey(role.name) for role in ROLE.values() if role.step is Step.DATA]
    stale_ranking = False
    for target in settings.targets:
        for step, stage in (
            (Step.TARGET_RANKING, Stage.TARGET_RANKING),
            (Step.FEATURE_SELECTION, Stage.FEATURE_SELECTION),
            (Step.TRAINING, Stage.TRAINING),
        ):
            scopes = store.scopes(target, stage, batch, attempt)
            sealed = all(
                s.attempt_dir(store.root).exists() and folder_state(s.attempt_dir(store.root))[0]
                for s in scopes
            )
            if sealed:
                continue
            stale_ranking |= step is Step.TARGET_RANKING
            steps.append(f"{target}__{step.value}")
            keys += [AssetKey([target, r.name]) for r in ROLE.values() if r.step is step]
    report = report_path(
        store.root, batch, attempt, ArtifactKind.RANKING_TABLE.value.removesuffix("_table")
    )
    if stale_ranking or not report.exists():
        steps.append(ArtifactKind.RANKING_TABLE.value)
        keys.append(AssetKey(ArtifactKind.RANKING_TABLE.value))
    return keys, steps


def whole_graph_job(data_dir: str, output_root: str, settings_path: str) -> Any:
    """``cohortflow_job`` of the code location on these paths: what :func:`run_universe`
    hands to ``execute_job`` (which rebuilds the job from this function by name)."""
    warnings.filterwarnings("ignore", message=".*resolve_job_def.*")
    return _definitions(data_dir, output_root, settings_path).resolve_job_def("cohortflow_job")


def _definitions(data_dir: str, output_root: str, settings_path: str | None) -> Any:
    """``build_definitions`` on these paths, built once per process and settings content:
    ``execute_job`` rebuilds the job by name several times per run (0.1 s each)."""
    text = Path(settings_path).read_bytes() if settings_path else b""
    return _definitions_cached(data_dir, output_root, settings_path, text)


@functools.lru_cache(maxsize=4)
def _definitions_cached(
    data_dir: str, output_root: str, settings_path: str | None, settings_text: bytes
) -> Any:
    from cohortflow_dagster.definitions import build_definitions

    return build_definitions(
        data_dir=data_dir, output_root=output_root, settings_path=settings_path
    )


def _read_or_empty(store: Store, kind: ArtifactKind, key: AttemptKey) -> pd.DataFrame:
    try:
        return store.read(kind, key)
    except CohortflowError:
        return pd.DataFrame()


def _evaluation(store: Store, target: str, batch: str, attempt: int) -> dict[str, Any]:
    try:
        return store.read(ArtifactKind.EVALUATION, AttemptKey(batch, attempt, target))
    except CohortflowError:
        return {}


def _stack_rank_ic(store: Store, target: str, batch: str, attempt: int) -> float | None:
    doc = _evaluation(store, target, batch, attempt)
    return doc.get("metrics_from_loaded_model", {}).get("stack", {}).get("rank_ic")


def _stage_seconds(instance: Any, run_id: str) -> dict[str, float]:
    """Wall time per step of a run, summed by step kind (the stage)."""
    from dagster import DagsterEventType

    starts: dict[str, float] = {}
    out: dict[str, float] = {}
    records = instance.all_logs(
        run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS}
    )
    for rec in records:
        step = rec.step_key or ""
        if rec.dagster_event.event_type == DagsterEventType.STEP_START:
            starts[step] = rec.timestamp
        elif step in starts:
            name = step_stage(step)
            out[name] = out.get(name, 0.0) + rec.timestamp - starts[step]
    return dict(sorted(out.items()))


def step_stage(step_key: str) -> str:
    """The stage of a step key (``fwd_ret_5__feature_selection`` -> feature_selection)."""
    name = step_key.split("__")[-1]
    return name if name in {s.value for s in Step} else Step.REPORT.value


def next_commands(r: RunResult) -> list[str]:
    """The commands a user runs next, with the real batch, attempt and a cohort filled in."""
    batch, attempt = r.intake.record.batch, r.latest
    target = next(iter(r.evaluation), None) or "fwd_ret_5"
    root = r.output_root
    cohort = None
    if not r.ranking.empty and "cohort_id" in r.ranking:
        cohort = str(r.ranking["cohort_id"].iloc[0])
    lines = [
        f"cohortflow cohorts list --root {root} --batch {batch} --attempt {attempt}",
        f"cohortflow stacking-data --root {root} --batch {batch} --attempt {attempt} --target {target}",
        f"cohortflow stack --root {root} --batch {batch} --attempt {attempt} --target {target}",
        f"cohortflow verify --root {root} --batch {batch}",
    ]
    if cohort:
        lines.insert(1, f"cohortflow cohorts show {cohort} --root {root}")
    return lines


def summary_text(r: RunResult) -> str:
    u = r.intake.universe
    lines = [
        "",
        "cohortflow: done",
        f"  universe      {', '.join(u.symbols)} ({len(u.symbols)} symbols)",
        f"  universe_sig  {u.universe_sig}",
        f"  batch         {r.intake.record.batch}",
    ]
    for k in u.skipped:
        lines.append(f"  left out      {k.reason}")
    reasons = ", ".join(f"{a.attempt} {a.reason.value}" for a in r.records)
    lines.append(
        f"  attempts      {len(r.records)} recorded ({reasons}); leak-fix limit {r.attempt_limit}"
    )
    if not r.attempts:
        lines.append(f"  this run      nothing to run: {r.message}")
    for a in r.attempts:
        found = "; ".join(f"{t}: {', '.join(v)}" for t, v in a.leaks.items() if v) or "no leak"
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in a.stage_seconds.items())
        lines.append(f"    attempt {a.attempt} ({a.reason}): {a.seconds:.1f} s, {found}")
        if stages:
            lines.append(f"               stages: {stages}")
        ics = ", ".join(f"{t} {_fmt(v)}" for t, v in a.stack_rank_ic.items())
        lines.append(f"               stack rank IC on the held-out period: {ics}")
        failed = [c for c in a.checks if not c.passed]
        lines.append(
            f"               asset checks: {len(a.checks) - len(failed)} of {len(a.checks)} passed"
        )
        lines += [f"                 {c.severity.lower()} {c.line()}" for c in failed]
    if not r.ranking.empty:
        lines.append(f"  targets ranked (attempt {r.latest}):")
        cols = [c for c in ("rank", "target", "score") if c in r.ranking.columns]
        extra = [
            c
            for c in r.ranking.columns
            if c.endswith(("rank_ic", "icir")) and c.startswith("lightgbm")
        ][:2]
        lines += [
            "    " + line for line in r.ranking[cols + extra].to_string(index=False).splitlines()
        ]
    if any(r.evaluation.values()):
        lines.append(f"  stacking, held-out test period (attempt {r.latest}, the saved model):")
        for target, ev in r.evaluation.items():
            m = ev.get("metrics_from_loaded_model", {})
            parts = [
                f"{name} r2={_fmt(v.get('r2'))} rank_ic={_fmt(v.get('rank_ic'))}"
                for name, v in m.items()
            ]
            lines.append(f"    {target}: " + " | ".join(parts))
    root = Path(r.output_root).resolve() if "://" not in r.output_root else r.output_root
    batch = r.intake.record.batch
    lines += [
        f"  files         {root}/targets/<target>/reproducibility/stage=<STAGE>/...",
        f"  ranking       {report_path(root, batch, r.latest, 'target_ranking')}",
        f"  Dagster UI    make ui  (DAGSTER_HOME={r.dagster_home}), then open http://127.0.0.1:3000",
        "  next          " + "\n                ".join(next_commands(r)),
        "",
    ]
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):+.4f}"


__all__ = [
    "AttemptOutcome",
    "CheckOutcome",
    "RunFailed",
    "RunResult",
    "assets_to_run",
    "leaks_found",
    "next_commands",
    "run_universe",
    "summary_text",
]
