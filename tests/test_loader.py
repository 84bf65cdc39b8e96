"""load_stacking_data: reads the OOF dataset of one batch/attempt/target from the canonical
tree, and says exactly what it looked for and what exists when something is missing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohortflow.canonical import sha256_file
from cohortflow.errors import ArtifactNotFoundError, InvalidNameError, StoreError
from cohortflow.fsio import atomic_write_bytes, atomic_write_text, write_json
from cohortflow.layout import Scope
from cohortflow.loader import OOFColumnsError, export_stacking_data, load_stacking_data
from cohortflow.oof import parquet_bytes, write_oof_parquet
from cohortflow.store import Store

BATCH = "ab12cd34ef56"
OTHER_BATCH = "0123456789ab"
TARGET = "fwd_ret_20"
FOLD_PLAN = {
    "horizon": 20,
    "embargo": 20,
    "folds": [
        {
            "fold": 0,
            "train": [["2024-01-05T00:00:00", "2024-01-05T00:00:00"]],
            "test": [["2024-01-01T00:00:00", "2024-01-02T00:00:00"]],
        }
    ],
}


def oof_frame(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime(["2024-01-01", "2024-01-01", "2024-01-02"] * (n // 3)),
            "symbol": ["AAA", "BBB", "AAA"] * (n // 3),
            "fold": np.zeros(n, dtype=np.int32),
            "y_true": np.linspace(-0.01, 0.01, n),
            "pred_lightgbm": np.linspace(-0.002, 0.002, n),
            "pred_xgboost": np.linspace(0.001, -0.001, n),
        }
    )


def scope(attempt: int, target: str = TARGET, batch: str = BATCH) -> Scope:
    return Scope(target, "TRAINING", "CROSS_SECTIONAL", batch, attempt)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Batch BATCH of TARGET with attempts 0 (complete, with its cohort) and 1."""
    for attempt in (0, 1):
        s = scope(attempt)
        write_oof_parquet(oof_frame(), s.oof_path(tmp_path))
        write_json(s.fold_plan_path(tmp_path, "oof"), FOLD_PLAN)
    cohort = scope(0).cohort_dir(tmp_path, "cs_2024Q1_ab12cd34ef56_min_cs1_max2000_v1_0a1b2c3d")
    write_json(cohort / "metadata.json", {"target": TARGET, "stage": "TRAINING", "rows": 6})
    # attempt 0 is sealed as the store seals a folder; attempt 1 is still being written
    for attempt in (0, 1):
        atomic_write_text(scope(attempt).progress_marker(tmp_path), "")
    Store(tmp_path).seal_folder(scope(0), {})
    return tmp_path


def exact(message: str) -> str:
    """A pattern matching exactly ``message`` (pytest.raises uses re.search)."""
    return f"^{re.escape(message)}$"


def test_loads_the_frame_and_its_provenance(root):
    data = load_stacking_data(root, BATCH, 0, TARGET)
    path = scope(0).oof_path(root)
    pd.testing.assert_frame_equal(data.frame, oof_frame(), check_dtype=False)
    md = data.metadata
    assert md["path"] == str(path)
    assert md["sha256"] == sha256_file(path)
    assert (md["batch"], md["attempt"], md["target"], md["rows"]) == (BATCH, 0, TARGET, 6)
    assert md["pred_columns"] == ["pred_lightgbm", "pred_xgboost"]
    assert md["models"] == ["lightgbm", "xgboost"]
    assert md["fold_plan"] == FOLD_PLAN
    assert md["complete"] is True
    assert md["cohort_id"] == "cs_2024Q1_ab12cd34ef56_min_cs1_max2000_v1_0a1b2c3d"
    assert md["cohort_metadata"] == {"target": TARGET, "stage": "TRAINING", "rows": 6}


def test_an_attempt_without_marker_or_cohort_still_loads_and_says_so(root):
    md = load_stacking_data(root, f"batch_{BATCH}", 1, TARGET).metadata
    assert (md["attempt"], md["complete"], md["cohort_id"], md["cohort_metadata"]) == (
        1,
        False,
        None,
        None,
    )


def test_missing_attempt_names_the_path_and_the_attempts_that_exist(root):
    expected = scope(2).oof_path(root)
    message = (
        f"OOF dataset not found for batch {BATCH} attempt 2 target {TARGET}; "
        f"expected {expected}; attempts of this batch: [0, 1]"
    )
    with pytest.raises(ArtifactNotFoundError, match=exact(message)):
        load_stacking_data(root, BATCH, 2, TARGET)


def test_attempts_are_listed_by_number_and_an_attempt_without_oof_is_reported(root):
    for attempt in (2, 10):
        scope(attempt).attempt_dir(root).mkdir(parents=True)
    expected = scope(10).oof_path(root)
    message = (
        f"OOF dataset not found for batch {BATCH} attempt 10 target {TARGET}; "
        f"expected {expected}; attempts of this batch: [0, 1, 2, 10]"
    )
    with pytest.raises(FileNotFoundError, match=exact(message)):
        load_stacking_data(root, BATCH, 10, TARGET)


def test_missing_batch_lists_the_batches_of_the_target(root):
    expected = scope(0, batch=OTHER_BATCH).oof_path(root)
    message = (
        f"OOF dataset not found for batch {OTHER_BATCH} attempt 0 target {TARGET}; "
        f"expected {expected}; batches of target {TARGET}: ['{BATCH}']"
    )
    with pytest.raises(ArtifactNotFoundError, match=exact(message)):
        load_stacking_data(root, OTHER_BATCH, 0, TARGET)


def test_a_target_without_training_batches_lists_the_batches_of_other_targets(root):
    # fwd_ret_5 exists (it reached ranking) but has no TRAINING output yet
    Scope("fwd_ret_5", "TARGET_RANKING", "CROSS_SECTIONAL", BATCH, 0).attempt_dir(root).mkdir(
        parents=True
    )
    expected = scope(0, target="fwd_ret_5").oof_path(root)
    message = (
        f"OOF dataset not found for batch {BATCH} attempt 0 target fwd_ret_5; "
        f"expected {expected}; target fwd_ret_5 has no TRAINING batches; "
        f"batches by target: {{'{TARGET}': ['{BATCH}']}}"
    )
    with pytest.raises(ArtifactNotFoundError, match=exact(message)):
        load_stacking_data(root, BATCH, 0, "fwd_ret_5")


def test_missing_target_lists_the_targets_under_the_root(root):
    expected = scope(0, target="fwd_ret_60").oof_path(root)
    message = (
        f"OOF dataset not found for batch {BATCH} attempt 0 target fwd_ret_60; "
        f"expected {expected}; targets under {root / 'targets'}: ['{TARGET}']"
    )
    with pytest.raises(ArtifactNotFoundError, match=exact(message)):
        load_stacking_data(root, BATCH, 0, "fwd_ret_60")


def test_an_empty_root_says_there_are_no_targets(tmp_path):
    expected = scope(0).oof_path(tmp_path)
    message = (
        f"OOF dataset not found for batch {BATCH} attempt 0 target {TARGET}; "
        f"expected {expected}; targets under {tmp_path / 'targets'}: []"
    )
    with pytest.raises(ArtifactNotFoundError, match=exact(message)):
        load_stacking_data(tmp_path, BATCH, 0, TARGET)


def _write_raw(root: Path, frame: pd.DataFrame) -> Path:
    path = scope(0).oof_path(root)
    atomic_write_bytes(path, parquet_bytes(frame))
    return path


def test_missing_y_true_is_named_with_the_file(root):
    path = _write_raw(root, oof_frame().drop(columns="y_true"))
    message = (
        f"{path}: OOF dataset lacks column(s) ['y_true']; it needs y_true and at least one "
        "pred_{model} column; it has ['timestamp', 'symbol', 'fold', 'pred_lightgbm', 'pred_xgboost']"
    )
    with pytest.raises(OOFColumnsError, match=exact(message)):
        load_stacking_data(root, BATCH, 0, TARGET)


def test_missing_prediction_columns_are_named_with_the_file(root):
    path = _write_raw(root, oof_frame().drop(columns=["pred_lightgbm", "pred_xgboost"]))
    message = (
        f"{path}: OOF dataset lacks column(s) ['pred_*']; it needs y_true and at least one "
        "pred_{model} column; it has ['timestamp', 'symbol', 'fold', 'y_true']"
    )
    with pytest.raises(ValueError, match=exact(message)):
        load_stacking_data(root, BATCH, 0, TARGET)


@pytest.mark.parametrize(
    ("batch", "target", "pattern"),
    [
        ("../../etc", TARGET, r"invalid batch '\.\./\.\./etc'"),
        ("AB12CD34EF56", TARGET, "invalid batch 'AB12CD34EF56'"),
        (BATCH, "../fwd_ret_20", r"invalid target name '\.\./fwd_ret_20'"),
        (BATCH, "", "invalid target name ''"),
    ],
)
def test_unsafe_names_are_refused_before_touching_the_tree(tmp_path, batch, target, pattern):
    with pytest.raises(InvalidNameError, match=pattern):
        load_stacking_data(tmp_path, batch, 0, target)
    assert list(tmp_path.iterdir()) == []


def test_a_negative_attempt_is_refused(root):
    with pytest.raises(InvalidNameError, match="attempt must be a non-negative integer, got -1"):
        load_stacking_data(root, BATCH, -1, TARGET)


def test_the_loader_prefix_is_the_oof_prefix():
    from cohortflow import loader, oof

    assert loader.PRED_PREFIX == oof.PRED_PREFIX


def test_export_copies_the_dataset_into_a_new_run_folder_each_time(root, tmp_path):
    data = load_stacking_data(root, BATCH, 0, TARGET)
    exports = tmp_path / "exports"
    first = export_stacking_data(data, exports)
    second = export_stacking_data(data, exports)
    assert first != second and first.parent == second.parent == exports
    # run ids: YYYYMMDD_HHMMSS_ffffff_ + 6 hex from secrets
    assert re.fullmatch(r"\d{8}_\d{6}_\d{6}_[0-9a-f]{6}", first.name)
    for folder in (first, second):
        assert sorted(p.name for p in folder.iterdir()) == [
            "fold_plan.json",
            "metadata.json",
            "oof_predictions.parquet",
        ]
        assert sha256_file(folder / "oof_predictions.parquet") == data.metadata["sha256"]
    exported = json.loads((first / "metadata.json").read_text())
    assert exported["path"] == str(scope(0).oof_path(root)) and "fold_plan" not in exported
    assert json.loads((first / "fold_plan.json").read_text()) == FOLD_PLAN


def test_export_to_a_named_folder_never_reuses_it(root, tmp_path):
    data = load_stacking_data(root, BATCH, 0, TARGET)
    folder = export_stacking_data(data, tmp_path / "exports", "xgb_tuned_v1")
    assert folder == tmp_path / "exports" / "xgb_tuned_v1"
    with pytest.raises(StoreError, match="already exists; refusing to reuse it"):
        export_stacking_data(data, tmp_path / "exports", "xgb_tuned_v1")
    with pytest.raises(InvalidNameError):
        export_stacking_data(data, tmp_path / "exports", "../escape")


def test_export_refuses_a_dataset_that_changed_after_loading(root, tmp_path):
    data = load_stacking_data(root, BATCH, 0, TARGET)
    write_oof_parquet(oof_frame(9), scope(0).oof_path(root))
    with pytest.raises(StoreError, match="changed since it was loaded"):
        export_stacking_data(data, tmp_path / "exports")
    assert not (tmp_path / "exports").exists()
