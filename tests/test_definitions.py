"""The code location loads, has the expected graph, and the core stays Dagster-free."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST_SETTINGS, PROJECT

PER_TARGET = [
    "feature_exclusions",
    "cohort_snapshot_target_ranking",
    "feature_importances",
    "featureset",
    "cohort_snapshot_feature_selection",
    "oof_dataset",
    "stacking_model",
    "evaluation",
    "cohort_snapshot_training",
]


def test_definitions_build_one_asset_set_per_target():
    from cohortflow_dagster.definitions import build_definitions

    defs = build_definitions("data", "output", str(FAST_SETTINGS))
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    expected = {"universe_bars", "feature_panel", "target_ranking_table"}
    expected |= {f"{t}/{name}" for t in ("fwd_ret_5", "fwd_ret_10") for name in PER_TARGET}
    assert keys == expected
    for job in ("cohortflow_job", "target_ranking_job", "feature_selection_job", "training_job"):
        assert defs.resolve_job_def(job) is not None
    assert {s.name for s in defs.sensors} == {"data_sensor", "attempt_sensor"}


def test_every_asset_shares_the_batch_times_attempt_partitions():
    from cohortflow_dagster.partitions import attempt_partitions
    from cohortflow_dagster.definitions import build_definitions

    graph = build_definitions("data", "output", str(FAST_SETTINGS)).resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert graph.get(key).partitions_def == attempt_partitions, key


def test_core_package_never_imports_dagster():
    offenders = []
    for path in sorted((PROJECT / "cohortflow").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}"
                for n in names
                if n.split(".")[0]
                in ("dagster", "assets", "resources", "io_managers", "sensors", "cli")
            ]
    assert offenders == []


def test_no_pickle_in_the_code():
    hits = []
    for folder in ("cohortflow", "assets", "io_managers", "resources", "sensors", "cli"):
        for path in (PROJECT / folder).rglob("*.py"):
            for line in path.read_text().splitlines():
                if re.match(r"\s*(import|from)\s+(pickle|cloudpickle|joblib|dill)\b", line):
                    hits.append(f"{path}: {line.strip()}")
    assert hits == []


@pytest.mark.slow
def test_dagster_definitions_validate_passes(tmp_path: Path):
    env = {
        "PATH": str(Path(sys.executable).parent),
        "DAGSTER_HOME": str(tmp_path),
        "HOME": str(tmp_path),
    }
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr
