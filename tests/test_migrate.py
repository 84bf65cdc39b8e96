"""cohortflow.migrate: older layouts copied into the canonical tree, verified, idempotent."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from cohortflow.errors import StoreError
from cohortflow.index import CohortIndex
from cohortflow.layout import LAYOUT_CURRENT, walk_cohorts
from cohortflow.migrate import FAILED, MIGRATED, SKIPPED, migrate

FIXTURES = Path(__file__).parent / "fixtures" / "layouts"
S1 = "958ecb3c3bb6bc0e145bae3e55b747209c281f5559871c4161c2f5ba91b4f5e8"
S2 = "eca4da0337f40e785bdf2dccdd79b2e7243735784567059d14ab21144992fdf5"
B1, B2 = S1[:12], S2[:12]
R5 = "targets/fwd_ret_5/reproducibility"
R20 = "targets/fwd_ret_20/reproducibility"

# old path -> (new path, status) for every cohort of each fixture tree
CUR = f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL/batch_{B1}"
EXPECTED: dict[str, dict[str, tuple[str | None, str]]] = {
    "current": {
        p: (None if "attempt_11" in p else p, SKIPPED if "attempt_11" in p else MIGRATED)
        for p in (
            "targets/fwd_ret_10/reproducibility/stage=TRAINING/CROSS_SECTIONAL/batch_eca4da0337f4/attempt_0/cohort=cs_2025Q3_eca4da0337f4_min_cs3_max2000_v1_935ea4f3",
            f"{CUR}/attempt_11/cohort=cs_2025Q3_958ecb3c3bb6_min_cs3_max2000_v1_024a77f7",
            f"{CUR}/attempt_10/cohort=cs_2025Q3_958ecb3c3bb6_min_cs3_max2000_v1_024a77f7",
            f"{CUR}/attempt_10/cohort=cs_2025Q3_958ecb3c3bb6_min_cs3_max2000_v1_8fb9715e",
            f"{CUR}/attempt_2/cohort=cs_2025Q3_958ecb3c3bb6_min_cs3_max2000_v1_024a77f7",
            f"{CUR}/attempt_0/cohort=cs_2025Q3_958ecb3c3bb6_min_cs3_max2000_v1_fda9af22",
            f"{R5}/stage=FEATURE_SELECTION/SYMBOL_SPECIFIC/symbol=AAPL/batch_{B1}/attempt_0/cohort=sy_2025Q3_958ecb3c3bb6_min_cs1_max2000_v1_d311ed09",
        )
    },
    "batch_without_attempt": {
        f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL/batch_{B1}/cohort=cs_2024Q4_958ecb3c3bb6_min_cs3_max2000_v1_39be6630": (
            f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL/batch_{B1}/attempt_0/cohort=cs_2024Q4_958ecb3c3bb6_min_cs3_max2000_v1_39be6630",
            MIGRATED,
        ),
        f"{R5}/stage=TARGET_RANKING/SYMBOL_SPECIFIC/symbol=MSFT/batch_{B1}/cohort=sy_2024Q4_958ecb3c3bb6_min_cs1_max2000_v1_6a7ef230": (
            f"{R5}/stage=TARGET_RANKING/SYMBOL_SPECIFIC/symbol=MSFT/batch_{B1}/attempt_0/cohort=sy_2024Q4_958ecb3c3bb6_min_cs1_max2000_v1_6a7ef230",
            MIGRATED,
        ),
    },
    "legacy_universe": {
        f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL/universe={S1}/cohort=cs_2024Q1_958ecb3c3bb6_min_cs3_max2000_v1_dddb5c7d": (
            f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL/batch_{B1}/attempt_0/cohort=cs_2024Q1_958ecb3c3bb6_min_cs3_max2000_v1_dddb5c7d",
            MIGRATED,
        ),
        f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL/universe={S2}/attempt_0/cohort=cs_2024Q1_eca4da0337f4_min_cs3_max2000_v1_9af07a3f": (
            f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL/batch_{B2}/attempt_0/cohort=cs_2024Q1_eca4da0337f4_min_cs3_max2000_v1_9af07a3f",
            MIGRATED,
        ),
    },
    "flat": {
        f"{R20}/stage=FEATURE_SELECTION/CROSS_SECTIONAL/cohort=cs_2023Q2_958ecb3c3bb6_min_cs3_max2000_v1_448a93f9": (
            None,
            SKIPPED,
        ),
        f"{R20}/stage=FEATURE_SELECTION/CROSS_SECTIONAL/cohort=cs_2023Q2_eca4da0337f4_min_cs3_max2000_v1_046f51e0": (
            f"{R20}/stage=FEATURE_SELECTION/CROSS_SECTIONAL/batch_{B2}/attempt_0/cohort=cs_2023Q2_eca4da0337f4_min_cs3_max2000_v1_046f51e0",
            MIGRATED,
        ),
    },
    "symbol_older": {
        f"{R5}/stage=TARGET_RANKING/SYMBOL_SPECIFIC/symbol=AAPL/attempt_0/cohort=sy_2024Q3_958ecb3c3bb6_min_cs1_max2000_v1_23659814": (
            f"{R5}/stage=TARGET_RANKING/SYMBOL_SPECIFIC/symbol=AAPL/batch_{B1}/attempt_0/cohort=sy_2024Q3_958ecb3c3bb6_min_cs1_max2000_v1_23659814",
            MIGRATED,
        ),
        f"{R5}/stage=TARGET_RANKING/SYMBOL_SPECIFIC/symbol=NVDA/cohort=sy_2024Q3_958ecb3c3bb6_min_cs1_max2000_v1_6682bb50": (
            f"{R5}/stage=TARGET_RANKING/SYMBOL_SPECIFIC/symbol=NVDA/batch_{B1}/attempt_0/cohort=sy_2024Q3_958ecb3c3bb6_min_cs1_max2000_v1_6682bb50",
            MIGRATED,
        ),
    },
}

# per-attempt artifacts that sat next to an old cohort and must land in its attempt_0
ARTIFACTS = {
    "batch_without_attempt": {
        f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL/batch_{B1}/feature_importances/xgboost_importances.csv": f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL/batch_{B1}/attempt_0/feature_importances/xgboost_importances.csv",
    },
    "legacy_universe": {
        f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL/universe={S1}/featureset_artifacts/featureset_post_prune.json": f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL/batch_{B1}/attempt_0/featureset_artifacts/featureset_post_prune.json",
        f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL/universe={S2}/attempt_0/feature_importances/lightgbm_importances.csv": f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL/batch_{B2}/attempt_0/feature_importances/lightgbm_importances.csv",
    },
    "flat": {
        f"{R20}/stage=FEATURE_SELECTION/CROSS_SECTIONAL/feature_exclusions/fwd_ret_20_exclusions.yaml": f"{R20}/stage=FEATURE_SELECTION/CROSS_SECTIONAL/batch_{B2}/attempt_0/feature_exclusions/fwd_ret_20_exclusions.yaml",
    },
    "symbol_older": {
        f"{R5}/stage=TARGET_RANKING/SYMBOL_SPECIFIC/symbol=AAPL/attempt_0/feature_importances/lightgbm_importances.csv": f"{R5}/stage=TARGET_RANKING/SYMBOL_SPECIFIC/symbol=AAPL/batch_{B1}/attempt_0/feature_importances/lightgbm_importances.csv",
        f"{R5}/stage=TARGET_RANKING/SYMBOL_SPECIFIC/symbol=NVDA/feature_exclusions/fwd_ret_5_exclusions.yaml": f"{R5}/stage=TARGET_RANKING/SYMBOL_SPECIFIC/symbol=NVDA/batch_{B1}/attempt_0/feature_exclusions/fwd_ret_5_exclusions.yaml",
    },
    "current": {
        p: p
        for p in (
            "targets/fwd_ret_10/reproducibility/stage=TRAINING/CROSS_SECTIONAL/batch_eca4da0337f4/attempt_0/oof/oof_predictions.parquet",
            "targets/fwd_ret_10/reproducibility/stage=TRAINING/CROSS_SECTIONAL/batch_eca4da0337f4/attempt_0/oof/fold_plan.json",
            "targets/fwd_ret_10/reproducibility/stage=TRAINING/CROSS_SECTIONAL/batch_eca4da0337f4/attempt_0/stacking/meta_learner.json",
            f"{CUR}/attempt_0/featureset_artifacts/featureset_post_prune.json",
            f"{CUR}/attempt_0/feature_exclusions/fwd_ret_5_exclusions.yaml",
        )
    },
}


def _tree(root: Path) -> dict[str, str]:
    """relpath -> sha256 of every file, plus every folder (value 'dir')."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in filenames:
            full = os.path.join(dirpath, name)
            found[os.path.relpath(full, root)] = hashlib.sha256(Path(full).read_bytes()).hexdigest()
    return found


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_tree_is_migrated(tmp_path: Path, name: str) -> None:
    old = shutil.copytree(FIXTURES / name, tmp_path / "old")
    new = tmp_path / "new"
    before = _tree(old)
    report = migrate(old, new)

    got = {item.old: (item.new, item.status) for item in report.items}
    assert got == EXPECTED[name]
    statuses = [s for _, s in EXPECTED[name].values()]
    assert (report.migrated, report.skipped, report.failed) == (
        statuses.count(MIGRATED),
        statuses.count(SKIPPED),
        0,
    )
    assert _tree(old) == before  # the old tree is byte-identical

    for item in report.items:
        if item.status != MIGRATED:
            continue
        src, dst = old / item.old, new / item.new
        files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
        assert files and files == sorted(p.relative_to(dst) for p in dst.rglob("*") if p.is_file())
        assert all(_sha(src / f) == _sha(dst / f) for f in files)
        assert (dst.parent / "_COMPLETE").is_file()
    for src_rel, dst_rel in ARTIFACTS.get(name, {}).items():
        assert _sha(new / dst_rel) == _sha(old / src_rel), dst_rel

    migrated = list(walk_cohorts(new))
    assert {r.layout for r in migrated} == {LAYOUT_CURRENT}
    assert sorted(r.path for r in migrated) == sorted(
        n for n, s in EXPECTED[name].values() if s == MIGRATED
    )
    assert CohortIndex(new).list() == migrated


def test_skips_say_why(tmp_path: Path) -> None:
    report = migrate(shutil.copytree(FIXTURES / "flat", tmp_path / "old"), tmp_path / "new")
    (skipped,) = [i for i in report.items if i.status == SKIPPED]
    assert "universe unknown" in skipped.reason
    report = migrate(shutil.copytree(FIXTURES / "current", tmp_path / "old2"), tmp_path / "new2")
    (skipped,) = [i for i in report.items if i.status == SKIPPED]
    assert "attempt_11" in skipped.old and "incomplete" in skipped.reason


def test_rerun_is_idempotent(tmp_path: Path) -> None:
    old = shutil.copytree(FIXTURES / "symbol_older", tmp_path / "old")
    new = tmp_path / "new"
    first = migrate(old, new)
    after_first = _tree(new)
    second = migrate(old, new)
    assert (first.migrated, first.skipped, first.failed) == (2, 0, 0)
    assert (second.migrated, second.skipped, second.failed) == (0, 2, 0)
    assert {i.reason for i in second.items} == {"already migrated (identical)"}
    assert _tree(new) == after_first


def test_existing_different_file_is_never_overwritten(tmp_path: Path) -> None:
    old = shutil.copytree(FIXTURES / "symbol_older", tmp_path / "old")
    new = tmp_path / "new"
    _, (aapl_new, _) = sorted(EXPECTED["symbol_older"].items())[0]
    squatter = new / aapl_new / "metadata.json"
    squatter.parent.mkdir(parents=True)
    squatter.write_text('{"somebody": "else"}\n')
    report = migrate(old, new)
    by_status = {i.new: (i.status, i.reason) for i in report.items}
    status, reason = by_status[aapl_new]
    assert status == FAILED and "different content" in reason
    assert squatter.read_text() == '{"somebody": "else"}\n'
    assert not (new / aapl_new).parent.joinpath("_COMPLETE").exists()
    assert (report.migrated, report.failed) == (1, 1)
    # the squatter's folder has no marker: somebody else's (external), left as it is; the
    # migrated NVDA attempt is sealed by cohortflow
    assert [(r.symbol, r.origin) for r in walk_cohorts(new)] == [
        ("AAPL", "external"),
        ("NVDA", "cohortflow"),
    ]


def test_all_layouts_in_one_tree(tmp_path: Path) -> None:
    old = tmp_path / "old"
    for name in EXPECTED:
        shutil.copytree(FIXTURES / name, old, dirs_exist_ok=True)
    report = migrate(old, tmp_path / "new")
    # The legacy universe=S1 cohort brings a different featureset_post_prune.json into the
    # same target/stage/batch/attempt_0 as the current tree's: the two are never mixed, and
    # that attempt is left without a marker (its three cohorts fail).
    failed = sorted(i.old.rsplit("=", 1)[-1] for i in report.items if i.status == FAILED)
    assert failed == [
        "cs_2024Q1_958ecb3c3bb6_min_cs3_max2000_v1_dddb5c7d",
        "cs_2024Q4_958ecb3c3bb6_min_cs3_max2000_v1_39be6630",
        "cs_2025Q3_958ecb3c3bb6_min_cs3_max2000_v1_fda9af22",
    ]
    assert any("different content" in i.reason for i in report.items if i.status == FAILED)
    assert (report.migrated, report.skipped, report.failed) == (10, 2, 3)
    assert len(report.items) == 15


def test_same_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="two different roots"):
        migrate(tmp_path, tmp_path)


def test_markers_match_what_the_store_writes(tmp_path: Path) -> None:
    from cohortflow.snapshots import manifest_records, manifest_sha256

    old = shutil.copytree(FIXTURES / "legacy_universe", tmp_path / "old")
    new = tmp_path / "new"
    migrate(old, new)
    attempt = new / f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL/batch_{B1}/attempt_0"
    from cohortflow.canonical import sha256_hex
    from cohortflow.store import seal_document

    marker = json.loads((attempt / "_COMPLETE").read_text())
    cid = "cs_2024Q1_958ecb3c3bb6_min_cs3_max2000_v1_dddb5c7d"
    metadata = json.loads((attempt / f"cohort={cid}" / "metadata.json").read_text())
    from cohortflow.snapshots import metadata_digest

    assert marker == {
        **seal_document(
            manifest_records(attempt), {cid: {"metadata.json": metadata_digest(metadata)}}
        ),
        "migrated_from": [f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL/universe={S1}"],
    }
    assert marker["artifacts_manifest_sha256"] == manifest_sha256(manifest_records(attempt))
    assert marker["artifacts"][0]["relpath"].startswith("featureset_artifacts/")  # came along
    assert sha256_hex((attempt / f"cohort={cid}" / "metadata.json").read_bytes())
    # a current attempt copied alone keeps its own marker, byte for byte
    old2 = shutil.copytree(FIXTURES / "current", tmp_path / "old2")
    migrate(old2, tmp_path / "new2")
    rel = f"{CUR}/attempt_0/_COMPLETE"
    assert (tmp_path / "new2" / rel).read_bytes() == (old2 / rel).read_bytes()


def test_a_complete_attempt_in_the_new_root_is_not_extended(tmp_path: Path) -> None:
    old = shutil.copytree(FIXTURES / "batch_without_attempt", tmp_path / "old")
    new = tmp_path / "new"
    attempt = new / f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL/batch_{B1}/attempt_0"
    attempt.mkdir(parents=True)
    (attempt / "_COMPLETE").write_text("{}\n")
    before = _tree(new)
    report = migrate(old, new)
    cs = [i for i in report.items if "CROSS_SECTIONAL" in i.old]
    assert [i.status for i in cs] == [FAILED]
    assert "already complete" in cs[0].reason
    after = _tree(new)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not any(
        k.startswith(f"{R5}/stage=TARGET_RANKING/CROSS_SECTIONAL") and k not in before
        for k in after
    )
    assert (report.migrated, report.failed) == (1, 1)  # the symbol-specific cohort still moves
