"""Scaling on one machine: the multiprocess executor runs a whole partition of
``cohortflow_parallel_job`` (steps in their own processes, targets side by side), with the
job rebuilt in each step process from the code location (``cohortflow_dagster.definitions``,
configured by the COHORTFLOW_* environment the step processes inherit), and every canonical
file lands where DESIGN §2 says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
FAST = PROJECT / "config" / "fast.yaml"


def parallel_job():
    """cohortflow_parallel_job of the code location, as each step process rebuilds it."""
    from cohortflow_dagster.definitions import build_definitions

    return build_definitions().resolve_job_def("cohortflow_parallel_job")


def _parallel_job():
    from dagster import build_reconstructable_job

    return build_reconstructable_job(
        "test_scaling", "parallel_job", reconstructor_working_directory=str(PROJECT / "tests")
    )


@pytest.mark.slow
def test_multiprocess_executor_runs_a_partition_of_the_parallel_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster import DagsterEventType, execute_job, instance_for_test

    from cohortflow.intake import take_in
    from cohortflow.layout import Scope
    from cohortflow.settings import load_settings
    from cohortflow.synthetic import generate
    from cohortflow_dagster.partitions import (
        attempt_dim_partitions,
        attempt_key,
        attempt_partitions,
        batch_partitions,
    )

    data, out = tmp_path / "data", tmp_path / "out"
    generate(data, n_symbols=3, n_bars=320, n_noise=2, seed=5, with_leaks=False)
    monkeypatch.setenv("COHORTFLOW_DATA_DIR", str(data))
    monkeypatch.setenv("COHORTFLOW_OUTPUT_ROOT", str(out))
    monkeypatch.setenv("COHORTFLOW_SETTINGS", str(FAST))
    monkeypatch.chdir(PROJECT)
    settings = load_settings(FAST)
    intake = take_in(data, out, settings)  # validates and registers the batch, as the sensor does
    batch, symbols = intake.record.batch, intake.universe.symbols
    key = attempt_key(batch, 0)

    home = tmp_path / "dagster_home"
    home.mkdir()
    with instance_for_test(temp_dir=str(home)) as instance:
        instance.add_dynamic_partitions(batch_partitions.name, [batch])
        instance.add_dynamic_partitions(attempt_dim_partitions.name, ["0"])
        tags = attempt_partitions.get_tags_for_partition_key(str(key))
        # spawn, not the default forkserver: a forkserver started earlier in this pytest
        # session would hand the children another test's environment (settings, targets)
        spawn = {"execution": {"config": {"start_method": {"spawn": {}}}}}
        with execute_job(
            _parallel_job(), instance=instance, tags=tags, run_config=spawn, raise_on_error=True
        ) as result:
            assert result.success
            starts = result.filter_events(lambda e: e.event_type == DagsterEventType.STEP_START)
            pids = {e.pid for e in starts}
            step_keys = {e.step_key for e in starts}

    # every step ran in a process of its own, none in this one (not the in-process executor)
    assert os.getpid() not in pids
    assert len(pids) == len(step_keys) > 2 * len(settings.targets)
    assert {f"{t}__training" for t in settings.targets} <= step_keys

    for target in settings.targets:
        for stage in ("TARGET_RANKING", "FEATURE_SELECTION", "TRAINING"):
            scope = Scope(target, stage, "CROSS_SECTIONAL", batch, 0)
            attempt_dir = scope.attempt_dir(out)
            assert scope.complete_marker(out).is_file(), attempt_dir
            cohorts = sorted(attempt_dir.glob("cohort=*"))
            assert len(cohorts) == 1, attempt_dir
            for name in ("metadata.json", "metrics.json", "snapshot.json"):
                assert (cohorts[0] / name).is_file(), cohorts[0] / name
        for stage in ("TARGET_RANKING", "FEATURE_SELECTION"):  # the symbol view, same tree
            for symbol in symbols:
                scope = Scope(target, stage, "SYMBOL_SPECIFIC", batch, 0, symbol)
                assert scope.complete_marker(out).is_file(), scope.attempt_dir(out)
        assert (
            Scope(target, "TARGET_RANKING", "CROSS_SECTIONAL", batch, 0)
            .exclusions_path(out)
            .is_file()
        )
        selection = Scope(target, "FEATURE_SELECTION", "CROSS_SECTIONAL", batch, 0)
        assert selection.featureset_path(out).is_file()
        for model in ("lightgbm", "xgboost", "permutation", "combined"):
            assert selection.importances_path(out, model).is_file(), model
        training = Scope(target, "TRAINING", "CROSS_SECTIONAL", batch, 0)
        assert training.oof_path(out).is_file()
        assert training.fold_plan_path(out, "oof").is_file()
        stacking = training.stacking_dir(out)
        for name in ("lightgbm.txt", "xgboost.json", "meta_learner.json", "model_card.json"):
            assert (stacking / name).is_file(), stacking / name
        assert (training.attempt_dir(out) / "evaluation" / "evaluation.json").is_file()
    assert (out / "reports" / f"batch_{batch}" / "attempt_0" / "target_ranking.csv").is_file()
