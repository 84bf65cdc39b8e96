"""The code location loads, has the expected graph, and runs in few steps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cohortflow.domain import ASSETS, Step
from tests.conftest import FAST_SETTINGS, PROJECT

PER_TARGET = [role.name for role in ASSETS if role.per_target]
TARGETS = ("fwd_ret_5", "fwd_ret_10")


def _defs():
    from cohortflow_dagster.definitions import build_definitions

    return build_definitions("data", "output", str(FAST_SETTINGS))


def test_definitions_build_one_asset_set_per_target():
    defs = _defs()
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    expected = {"universe_bars", "feature_panel", "target_ranking_table"}
    expected |= {f"{t}/{name}" for t in TARGETS for name in PER_TARGET}
    assert keys == expected
    assert "portfolio" in PER_TARGET and "evaluation" in PER_TARGET
    for job in ("cohortflow_job", "target_ranking_job", "feature_selection_job", "training_job"):
        assert defs.resolve_job_def(job) is not None
    assert {s.name for s in defs.sensors} == {"data_sensor", "attempt_sensor"}


def test_one_step_per_stage_and_target_with_its_checks_inside():
    """Dagster's cost is per step: an attempt is 1 data step, 3 steps a target, 1 report."""
    job = _defs().resolve_job_def("cohortflow_job")
    steps = sorted(node.name for node in job.graph.node_dict.values())
    assert steps == sorted(
        ["data", "target_ranking_table"]
        + [
            f"{t}__{s.value}"
            for t in TARGETS
            for s in (Step.TARGET_RANKING, Step.FEATURE_SELECTION, Step.TRAINING)
        ]
    )
    graph = _defs().resolve_asset_graph()
    checks = graph.asset_check_keys
    assert len(checks) == 25 * len(TARGETS)
    assert {c.name for c in checks if c.asset_key.path[-1] == "feature_exclusions"} == {
        "no_leaks_remain",
        "attempt_sealed",
    }


def test_groups_read_target_by_target():
    graph = _defs().resolve_asset_graph()
    groups = {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert groups["universe_bars"] == groups["feature_panel"] == "data"
    assert groups["target_ranking_table"] == "reports"
    for t in TARGETS:
        assert {groups[f"{t}/{name}"] for name in PER_TARGET} == {t}


def test_every_asset_shares_the_batch_times_attempt_partitions():
    from cohortflow_dagster.partitions import attempt_partitions

    graph = _defs().resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert graph.get(key).partitions_def == attempt_partitions, key


def test_every_asset_carries_the_code_version():
    from cohortflow.version import code_version

    graph = _defs().resolve_asset_graph()
    versions = {graph.get(k).code_version for k in graph.get_all_asset_keys()}
    assert versions == {code_version()}


@pytest.mark.slow
def test_dagster_definitions_validate_and_dg_check_defs_pass(tmp_path: Path):
    env = {
        "PATH": str(Path(sys.executable).parent),
        "DAGSTER_HOME": str(tmp_path),
        "HOME": str(tmp_path),
    }
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    bin_dir = Path(sys.executable).parent
    for cmd, expected in (
        (
            [str(bin_dir / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
            "Validation successful",
        ),
        ([str(bin_dir / "dg"), "check", "defs"], "All definitions loaded successfully"),
        ([str(bin_dir / "dg"), "list", "defs"], "fwd_ret_5/featureset"),
    ):
        proc = subprocess.run(
            cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert expected in proc.stdout + proc.stderr, proc.stdout[-2000:]
