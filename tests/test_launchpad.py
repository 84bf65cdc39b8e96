"""Settings from the Launchpad (issue 19.5): the `launchpad` resource's fields are the
settings' own; a run that changes them on a sealed attempt is refused with nothing
written; on the next attempt it lands as `settings_changed`, with its overrides recorded;
the sensors then neither undo nor repeat it, and `cohortflow run` (the YAML) does."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, build_sensor_context, validate_run_config

from cohortflow.errors import SettingsError
from cohortflow.settings import ModelSettings, Settings
from cohortflow_dagster.resources.launchpad import FIXED, LaunchpadSettings, ModelOverrides, apply


def test_every_setting_but_the_horizons_is_a_launchpad_field_with_its_description():
    fields = LaunchpadSettings.model_fields
    assert set(fields) == set(Settings.model_fields) - FIXED
    assert {"horizons"} == FIXED
    for name, info in fields.items():
        assert info.default is None, name
        assert info.description == Settings.model_fields[name].description, name
    assert set(ModelOverrides.model_fields) == set(ModelSettings.model_fields)


def test_changes_are_the_fields_set_and_are_validated_like_yaml():
    lp = LaunchpadSettings(n_splits=4, meta_learner="logistic", models={"n_estimators": 12})
    changes = lp.changes()
    assert changes == {"n_splits": 4, "meta_learner": "logistic", "models": {"n_estimators": 12}}
    base = Settings(models={"learning_rate": 0.1})
    s = apply(base, changes)
    # models merge field by field: the YAML's learning rate stays
    assert (s.n_splits, s.meta_learner, s.models.n_estimators, s.models.learning_rate) == (
        4,
        "logistic",
        12,
        0.1,
    )
    assert apply(base, LaunchpadSettings().changes()) is base
    with pytest.raises(SettingsError, match=r"^Launchpad: n_splits: expected a whole number"):
        apply(base, LaunchpadSettings(n_splits=1).changes())
    with pytest.raises(SettingsError, match=r"^Launchpad: meta_learner: expected ridge or"):
        apply(base, {"meta_learner": "lasso"})


def test_run_config_accepts_settings_and_refuses_the_horizons(tmp_path: Path):
    from cohortflow_dagster.definitions import build_definitions

    defs = build_definitions(str(tmp_path), str(tmp_path / "out"), "")
    job = defs.resolve_job_def("cohortflow_job")
    config = {"resources": {"launchpad": {"config": {"n_splits": 4, "models": {"max_depth": 2}}}}}
    resolved = validate_run_config(job, config)
    assert resolved["resources"]["launchpad"]["config"]["n_splits"] == 4
    # the data folder and output root are another resource's: untouched by the Launchpad
    assert resolved["resources"]["cohortflow"]["config"]["output_root"] == str(tmp_path / "out")
    with pytest.raises(Exception, match="horizons"):
        validate_run_config(job, {"resources": {"launchpad": {"config": {"horizons": [5]}}}})


def _tree(root: Path) -> dict[str, str]:
    """Every file under the root but the locks, by content hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "_locks" not in p.parts
    }


@pytest.mark.slow
def test_a_launchpad_run_lands_in_a_new_attempt_never_in_a_sealed_one(
    tmp_path: Path, small_universe, fast_settings_path: Path, dagster_home: Path
):
    from cohortflow.errors import SealedAttemptError
    from cohortflow.layout import Scope
    from cohortflow.registry import BatchRegistry
    from cohortflow_dagster.cli.runner import run_universe
    from cohortflow_dagster.definitions import build_definitions
    from cohortflow_dagster.partitions import attempt_key

    data, _ = small_universe
    out = tmp_path / "out"
    settings_path = tmp_path / "settings.yaml"
    fast = yaml.safe_load(fast_settings_path.read_text())
    settings_path.write_text(yaml.safe_dump({**fast, "horizons": [5], "attempt_limit": 1}))
    first = run_universe(str(data), str(out), str(settings_path))
    batch = first.intake.record.batch
    assert [a.attempt for a in first.attempts] == [0]
    before = _tree(out)

    defs = build_definitions(str(data), str(out), str(settings_path))
    job = defs.resolve_job_def("cohortflow_job")
    launchpad = {"resources": {"launchpad": {"config": {"n_splits": 4}}}}
    instance = DagsterInstance.get()

    # a sealed attempt: refused in the first step, one error naming what differs
    sealed = job.execute_in_process(
        partition_key=attempt_key(batch, 0),
        run_config=launchpad,
        instance=instance,
        raise_on_error=False,
    )
    assert not sealed.success
    failure = next(e for e in sealed.all_events if e.is_step_failure)
    error = failure.step_failure_data.error
    text = error.message + "".join(c.message for c in [error.cause] if c)
    assert SealedAttemptError.__name__ in text, text
    assert "settings fingerprint" in text and "(n_splits)" in text and "attempt 1" in text, text
    assert _tree(out) == before  # nothing written, the seal untouched

    # the next attempt, from the UI: lands, with its reason and its overrides recorded
    instance.add_dynamic_partitions("attempt", ["1"])
    landed = job.execute_in_process(
        partition_key=attempt_key(batch, 1), run_config=launchpad, instance=instance
    )
    assert landed.success
    record = BatchRegistry(out).get(batch)
    one = record.attempt(1)
    assert (one.reason.value, one.changes, dict(one.overrides)) == (
        "settings_changed",
        ("settings_changed",),
        {"n_splits": 4},
    )
    assert one.settings["n_splits"] == 4 and record.attempt(0).settings["n_splits"] == 3
    plan = Scope("fwd_ret_5", "TRAINING", "CROSS_SECTIONAL", batch, 1).attempt_dir(out)
    folds = json.loads((plan / "oof" / "fold_plan.json").read_text())["folds"]
    assert len(folds) == 4
    attempt_0 = {k: v for k, v in before.items() if "attempt_0" in k}
    assert len(attempt_0) > 50
    assert {k: v for k, v in _tree(out).items() if k in attempt_0} == attempt_0  # as it was

    # the sensors leave it be: the data sensor's first tick (no cursor) compares the folder
    # with attempt 1's own settings, not the YAML's
    sensor = defs.resolve_sensor_def("data_sensor")
    tick = sensor.evaluate_tick(
        build_sensor_context(
            instance=instance,
            instance_ref=instance.get_ref(),
            definitions=defs,
            resources={"cohortflow": defs.resources["cohortflow"]},
        )
    )
    assert tick.run_requests == [], tick.skip_message

    # `cohortflow run` is the YAML's: its settings differ from attempt 1's, a new attempt
    again = run_universe(str(data), str(out), str(settings_path))
    assert [(a.attempt, a.reason) for a in again.attempts] == [(2, "settings_changed")]
    assert BatchRegistry(out).get(batch).attempt(2).overrides == {}
