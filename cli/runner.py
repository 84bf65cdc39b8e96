"""Materialize a universe attempt after attempt, as the sensors would, in this process.

Runs go into the Dagster instance under ``DAGSTER_HOME`` (or ``.dagster_home``), so
they show in the UI; the decision to start attempt n+1 is
:func:`cohortflow.intake.decide_next_attempt`, the attempt sensor's own.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from cohortflow.errors import CohortflowError
from cohortflow.intake import Intake, decide_next_attempt, take_in
from cohortflow.settings import load_settings


@dataclass
class AttemptOutcome:
    attempt: int
    run_id: str
    seconds: float
    leaks: dict[str, list[str]]  # target -> "feature (reason)" found in this attempt
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stack_rank_ic: dict[str, float | None] = field(default_factory=dict)  # held-out, per target
    checks: list[CheckOutcome] = field(default_factory=list)


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
class RunResult:
    intake: Intake
    output_root: str
    attempts: list[AttemptOutcome]
    ranking: pd.DataFrame
    evaluation: dict[str, dict[str, Any]]
    dagster_home: str
    attempt_limit: int


class RunFailed(CohortflowError):
    pass


def run_universe(
    data_dir: str,
    output_root: str,
    settings_path: str = "",
    log: Callable[[str], None] = lambda m: None,
    log_level: str = "WARNING",
) -> RunResult:
    from dagster import DagsterInstance, build_reconstructable_job, execute_job

    from assets.partitions import (
        attempt_dim_partitions,
        attempt_key,
        attempt_partitions,
        batch_partitions,
    )
    from cli.main import ensure_dagster_home
    from io_managers.canonical_store import read_evaluation
    from sensors.attempts import exclusions_of

    settings = load_settings(settings_path or None)
    # validate and register first: bad input stops here, before anything is written
    intake = take_in(data_dir, output_root, settings)
    batch = intake.record.batch
    for skipped in intake.universe.skipped:
        log(f"left out {skipped.reason}")
    log(f"universe {', '.join(intake.universe.symbols)} -> batch {batch}")
    # the summary needs the universe's names, not its bars: do not hold them through every
    # attempt (0.6 GB at 500 symbols; each run loads the batch's files itself)
    intake = dataclasses.replace(
        intake, universe=dataclasses.replace(intake.universe, bars=MappingProxyType({}))
    )

    home = ensure_dagster_home()
    warnings.filterwarnings("ignore", message=".*resolve_job_def.*")
    defs = _definitions(data_dir, output_root, settings_path)
    store = defs.resources["cohortflow"].store()
    # execute_job, not job.execute_in_process: the latter keeps every step's output in
    # memory until the run ends (for result.output_for_node), and at 500 symbols the bars,
    # the panel and every target's OOF and stack held 1.5 GB through the whole attempt
    job = build_reconstructable_job(
        "cli.runner",
        "whole_graph_job",
        reconstructable_kwargs={
            "data_dir": data_dir,
            "output_root": output_root,
            "settings_path": settings_path,
        },
        reconstructor_working_directory=str(Path(__file__).resolve().parents[1]),
    )
    outcomes: list[AttemptOutcome] = []
    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(batch_partitions.name, [batch])
        attempt: int | None = 0
        while attempt is not None:
            instance.add_dynamic_partitions(attempt_dim_partitions.name, [str(attempt)])
            log(f"attempt {attempt}: materializing the whole graph")
            t0 = time.perf_counter()
            partition = attempt_partitions.get_tags_for_partition_key(
                str(attempt_key(batch, attempt))
            )
            with execute_job(
                job,
                instance=instance,
                # the step-by-step log is in the UI; the terminal gets warnings and the summary
                run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
                tags={**partition, "cohortflow/reason": "cohortflow run"},
                raise_on_error=False,
            ) as result:
                success, run_id = result.success, result.run_id
                failure = next(
                    (e for e in result.all_events if e.event_type_value == "STEP_FAILURE"), None
                )
                checks = [
                    CheckOutcome(
                        e.asset_key.to_user_string(),
                        e.check_name,
                        e.passed,
                        e.severity.value,
                        e.description or "",
                    )
                    for e in result.get_asset_check_evaluations()
                ]
            seconds = time.perf_counter() - t0
            if not success:
                detail = (
                    failure.event_specific_data.error.message.strip()
                    if failure
                    else "see the run's logs"
                )
                raise RunFailed(f"attempt {attempt} failed (run {run_id}): {detail}")
            found = exclusions_of(store, settings.targets, batch, attempt)
            leaks = {
                t: [f"{e.feature} ({e.reason})" for e in excl.found_here()]
                for t, excl in found.items()
            }
            outcomes.append(
                AttemptOutcome(
                    attempt,
                    run_id,
                    seconds,
                    leaks,
                    _stage_seconds(instance, run_id),
                    {t: _stack_rank_ic(store, t, batch, attempt) for t in settings.targets},
                    sorted(checks, key=lambda c: (c.asset, c.check)),
                )
            )
            n_leaks = sum(len(v) for v in leaks.values())
            log(f"attempt {attempt}: {seconds:.1f} s, {n_leaks} leak finding(s)")
            attempt = decide_next_attempt(found, attempt, settings.attempt_limit)

    last = outcomes[-1].attempt
    ranking = store.read_report(batch, last, "target_ranking")
    evaluation = {t: read_evaluation(store, t, batch, last) for t in settings.targets}
    return RunResult(
        intake, output_root, outcomes, ranking, evaluation, str(home), settings.attempt_limit
    )


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
    from definitions import build_definitions

    return build_definitions(
        data_dir=data_dir, output_root=output_root, settings_path=settings_path
    )


def _stack_rank_ic(store: Any, target: str, batch: str, attempt: int) -> float | None:
    from io_managers.canonical_store import read_evaluation

    doc = read_evaluation(store, target, batch, attempt)
    return doc["metrics_from_loaded_model"]["stack"].get("rank_ic")


def _stage_seconds(instance: Any, run_id: str) -> dict[str, float]:
    """Wall time per step of a run, summed by asset group (stage)."""
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
            out[_stage_of(step)] = out.get(_stage_of(step), 0.0) + rec.timestamp - starts[step]
    return dict(sorted(out.items()))


def _stage_of(step_key: str) -> str:
    name = step_key.split("__")[-1]
    if name in ("universe_bars", "feature_panel"):
        return "data"
    if name == "feature_exclusions":
        return "leakage"
    if name in ("cohort_snapshot_target_ranking", "target_ranking_table"):
        return "target_ranking"
    if name in ("feature_importances", "featureset", "cohort_snapshot_feature_selection"):
        return "feature_selection"
    return "training"


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
    lines.append(f"  attempts      {len(r.attempts)} (limit {r.attempt_limit})")
    for a in r.attempts:
        found = "; ".join(f"{t}: {', '.join(v)}" for t, v in a.leaks.items() if v) or "no leak"
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in a.stage_seconds.items())
        lines.append(f"    attempt {a.attempt}: {a.seconds:.1f} s, {found}")
        if stages:
            lines.append(f"               stages: {stages}")
        ics = ", ".join(f"{t} {_fmt(v)}" for t, v in a.stack_rank_ic.items())
        lines.append(f"               stack rank IC on the held-out period: {ics}")
        failed = [c for c in a.checks if not c.passed]
        lines.append(
            f"               asset checks: {len(a.checks) - len(failed)} of {len(a.checks)} passed"
        )
        lines += [f"                 failed {c.line()}" for c in failed]
    lines.append(f"  targets ranked (attempt {r.attempts[-1].attempt}):")
    cols = [c for c in ("rank", "target", "score") if c in r.ranking.columns]
    extra = [
        c for c in r.ranking.columns if c.endswith(("rank_ic", "icir")) and c.startswith("lightgbm")
    ][:2]
    lines += ["    " + line for line in r.ranking[cols + extra].to_string(index=False).splitlines()]
    lines.append("  stacking, held-out test period (loaded from the saved model):")
    for target, ev in r.evaluation.items():
        m = ev["metrics_from_loaded_model"]
        parts = [
            f"{name} r2={_fmt(v.get('r2'))} rank_ic={_fmt(v.get('rank_ic'))}"
            for name, v in m.items()
        ]
        lines.append(f"    {target}: " + " | ".join(parts))
    root = Path(r.output_root).resolve() if "://" not in r.output_root else r.output_root
    lines += [
        f"  files         {root}/targets/<target>/reproducibility/stage=<STAGE>/...",
        f"  ranking       {root}/reports/batch_{r.intake.record.batch}/attempt_{r.attempts[-1].attempt}/target_ranking.csv",
        f"  cohorts       cohortflow cohorts list --root {r.output_root}",
        f"  Dagster UI    make ui  (DAGSTER_HOME={r.dagster_home}), then open http://127.0.0.1:3000",
        "",
    ]
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):+.4f}"
