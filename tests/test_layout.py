"""cohortflow.layout: exact paths, ids, and every older layout of DESIGN §2."""

from __future__ import annotations

import hashlib
import json
import random
import re
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from upath import UPath

from cohortflow import layout
from cohortflow.errors import ArtifactNotFoundError, InvalidNameError, StoreError
from cohortflow.fsio import atomic_write_text, write_json
from cohortflow.index import find_cohort  # noqa: E402
from cohortflow.layout import (
    COMPLETE_MARKER,
    LAYOUT_BATCH_NO_ATTEMPT,
    LAYOUT_CURRENT,
    LAYOUT_FLAT,
    LAYOUT_LEGACY_UNIVERSE,
    LAYOUT_SYMBOL_OLDER,
    Scope,
    batch_of,
    cohort_id,
    latest_complete_attempt,
    new_run_id,
    parse_cohort_path,
    sorted_attempts,
    unique_run_dir,
    universe_signature,
    validate_batch,
    walk_cohorts,
)

FIXTURES = Path(__file__).parent / "fixtures" / "layouts"
B = "ab12cd34ef56"

# The two universes of the fixture trees (tests/fixtures/layouts/README.md).
S1 = "958ecb3c3bb6bc0e145bae3e55b747209c281f5559871c4161c2f5ba91b4f5e8"  # AAPL,MSFT,NVDA
S2 = "eca4da0337f40e785bdf2dccdd79b2e7243735784567059d14ab21144992fdf5"  # AAPL,AMZN,GOOG,MSFT
B1, B2 = S1[:12], S2[:12]
CUR_A0 = "cs_2025Q3_958ecb3c3bb6_min_cs3_max2000_v1_fda9af22"
CUR_X = "cs_2025Q3_958ecb3c3bb6_min_cs3_max2000_v1_024a77f7"  # in attempts 2, 10, 11 (no marker)
CUR_A10 = "cs_2025Q3_958ecb3c3bb6_min_cs3_max2000_v1_8fb9715e"
CUR_SY = "sy_2025Q3_958ecb3c3bb6_min_cs1_max2000_v1_d311ed09"
CUR_TR = "cs_2025Q3_eca4da0337f4_min_cs3_max2000_v1_935ea4f3"
BNA_CS = "cs_2024Q4_958ecb3c3bb6_min_cs3_max2000_v1_39be6630"
BNA_SY = "sy_2024Q4_958ecb3c3bb6_min_cs1_max2000_v1_6a7ef230"
LEG_NOATT = "cs_2024Q1_958ecb3c3bb6_min_cs3_max2000_v1_dddb5c7d"
LEG_ATT = "cs_2024Q1_eca4da0337f4_min_cs3_max2000_v1_9af07a3f"
FLAT_SIG = "cs_2023Q2_eca4da0337f4_min_cs3_max2000_v1_046f51e0"
FLAT_NOSIG = "cs_2023Q2_958ecb3c3bb6_min_cs3_max2000_v1_448a93f9"
OLD_ATT = "sy_2024Q3_958ecb3c3bb6_min_cs1_max2000_v1_23659814"
OLD_NOATT = "sy_2024Q3_958ecb3c3bb6_min_cs1_max2000_v1_6682bb50"

TR, FS, TRN = "TARGET_RANKING", "FEATURE_SELECTION", "TRAINING"
CS, SS = "CROSS_SECTIONAL", "SYMBOL_SPECIFIC"

# --------------------------------------------------------------------------- exact paths

CS_SCOPE = Scope("fwd_ret_5", FS, CS, B, 0)
SS_SCOPE = Scope("fwd_ret_5", FS, SS, B, 0, symbol="AAPL")
CS_BASE = (
    f"targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/CROSS_SECTIONAL/batch_{B}/attempt_0"
)
SS_BASE = f"targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/SYMBOL_SPECIFIC/symbol=AAPL/batch_{B}/attempt_0"


def _artifact_paths(scope: Scope, root: Path) -> dict[str, Path]:
    return {
        "view_dir": scope.view_dir(root),
        "attempt_dir": scope.attempt_dir(root),
        "cohort": scope.cohort_dir(root, "cs_2025Q3_ab12cd34ef56_min_cs3_max2000_v1_3d940389"),
        "importances": scope.importances_path(root, "lightgbm"),
        "featureset": scope.featureset_path(root),
        "exclusions": scope.exclusions_path(root),
        "oof": scope.oof_path(root),
        "fold_plan": scope.fold_plan_path(root, "oof"),
        "stacking": scope.stacking_dir(root),
        "marker": scope.complete_marker(root),
    }


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        (
            CS_SCOPE,
            {
                "view_dir": "targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/CROSS_SECTIONAL",
                "attempt_dir": CS_BASE,
                "cohort": f"{CS_BASE}/cohort=cs_2025Q3_ab12cd34ef56_min_cs3_max2000_v1_3d940389",
                "importances": "targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/CROSS_SECTIONAL/batch_ab12cd34ef56/attempt_0/feature_importances/lightgbm_importances.csv",
                "featureset": "targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/CROSS_SECTIONAL/batch_ab12cd34ef56/attempt_0/featureset_artifacts/featureset_post_prune.json",
                "exclusions": "targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/CROSS_SECTIONAL/batch_ab12cd34ef56/attempt_0/feature_exclusions/fwd_ret_5_exclusions.yaml",
                "oof": "targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/CROSS_SECTIONAL/batch_ab12cd34ef56/attempt_0/oof/oof_predictions.parquet",
                "fold_plan": "targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/CROSS_SECTIONAL/batch_ab12cd34ef56/attempt_0/oof/fold_plan.json",
                "stacking": "targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/CROSS_SECTIONAL/batch_ab12cd34ef56/attempt_0/stacking",
                "marker": "targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/CROSS_SECTIONAL/batch_ab12cd34ef56/attempt_0/_COMPLETE",
            },
        ),
        (
            SS_SCOPE,
            {
                "view_dir": "targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/SYMBOL_SPECIFIC",
                "attempt_dir": SS_BASE,
                "cohort": f"{SS_BASE}/cohort=cs_2025Q3_ab12cd34ef56_min_cs3_max2000_v1_3d940389",
                "importances": "targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/SYMBOL_SPECIFIC/symbol=AAPL/batch_ab12cd34ef56/attempt_0/feature_importances/lightgbm_importances.csv",
                "featureset": "targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/SYMBOL_SPECIFIC/symbol=AAPL/batch_ab12cd34ef56/attempt_0/featureset_artifacts/featureset_post_prune.json",
                "exclusions": "targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/SYMBOL_SPECIFIC/symbol=AAPL/batch_ab12cd34ef56/attempt_0/feature_exclusions/fwd_ret_5_exclusions.yaml",
                "oof": "targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/SYMBOL_SPECIFIC/symbol=AAPL/batch_ab12cd34ef56/attempt_0/oof/oof_predictions.parquet",
                "fold_plan": "targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/SYMBOL_SPECIFIC/symbol=AAPL/batch_ab12cd34ef56/attempt_0/oof/fold_plan.json",
                "stacking": "targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/SYMBOL_SPECIFIC/symbol=AAPL/batch_ab12cd34ef56/attempt_0/stacking",
                "marker": "targets/fwd_ret_5/reproducibility/stage=FEATURE_SELECTION/SYMBOL_SPECIFIC/symbol=AAPL/batch_ab12cd34ef56/attempt_0/_COMPLETE",
            },
        ),
    ],
    ids=["cross_sectional", "symbol_specific"],
)
def test_exact_artifact_paths(tmp_path: Path, scope: Scope, expected: dict[str, str]) -> None:
    got = _artifact_paths(scope, tmp_path)
    assert {k: p.relative_to(tmp_path).as_posix() for k, p in got.items()} == expected
    assert all(isinstance(p, Path) for p in got.values())


def test_later_attempt_and_training_paths(tmp_path: Path) -> None:
    scope = Scope("fwd_ret_20", TRN, CS, B, 10)
    assert scope.oof_path(tmp_path) == tmp_path / (
        "targets/fwd_ret_20/reproducibility/stage=TRAINING/CROSS_SECTIONAL/"
        "batch_ab12cd34ef56/attempt_10/oof/oof_predictions.parquet"
    )
    assert scope.attempt_relpath() == (
        "targets/fwd_ret_20/reproducibility/stage=TRAINING/CROSS_SECTIONAL/batch_ab12cd34ef56/attempt_10"
    )


def test_lock_path_is_outside_the_tree_and_per_attempt(tmp_path: Path) -> None:
    lock = CS_SCOPE.lock_path(tmp_path)
    digest = hashlib.sha256(CS_BASE.encode()).hexdigest()[:16]
    assert lock == tmp_path / "_locks" / f"{digest}.lock"
    assert Scope("fwd_ret_5", FS, CS, B, 1).lock_path(tmp_path) != lock
    assert SS_SCOPE.lock_path(tmp_path) != lock


def test_symbol_is_upper_cased_in_scope(tmp_path: Path) -> None:
    scope = Scope("fwd_ret_5", FS, SS, B, 0, symbol="aapl")
    assert scope.symbol == "AAPL"
    assert scope.attempt_dir(tmp_path) == tmp_path / SS_BASE


def test_upath_roots_keep_their_type() -> None:
    root = UPath("memory://store/out")
    path = SS_SCOPE.importances_path(root, "xgboost")
    assert isinstance(path, UPath) and path.protocol == "memory"
    assert path.relative_to(root).as_posix() == (
        f"{SS_BASE}/feature_importances/xgboost_importances.csv"
    )


# --------------------------------------------------------------------------- names refused


@pytest.mark.parametrize("bad", ["..", "a/b", "", "../x", "a\\b", ".hidden", "x" * 65])
def test_scope_refuses_bad_target_and_symbol(bad: str) -> None:
    with pytest.raises(InvalidNameError, match="invalid target name"):
        Scope(bad, TR, CS, B, 0)
    with pytest.raises(InvalidNameError, match="invalid symbol name"):
        Scope("fwd_ret_5", TR, SS, B, 0, symbol=bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stage": "RANKING"}, "invalid stage"),
        ({"view": "POOLED"}, "invalid view"),
        ({"batch": "AB12CD34EF56"}, "invalid batch"),
        ({"batch": "ab12cd34ef5"}, "invalid batch"),
        ({"batch": f"batch_{B}"}, "invalid batch"),
        ({"attempt": -1}, "attempt must be"),
        ({"attempt": True}, "attempt must be"),
        ({"attempt": 1.5}, "attempt must be"),
        ({"view": SS}, "needs a symbol"),
        ({"symbol": "AAPL"}, "has no symbol"),
    ],
)
def test_scope_validation(kwargs: dict, message: str) -> None:
    args = {"target": "fwd_ret_5", "stage": TR, "view": CS, "batch": B, "attempt": 0, **kwargs}
    with pytest.raises(InvalidNameError, match=message):
        Scope(**args)


@pytest.mark.parametrize("bad", ["..", "a/b", ""])
def test_model_folder_and_cohort_names_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidNameError):
        CS_SCOPE.importances_path(tmp_path, bad)
    with pytest.raises(InvalidNameError):
        CS_SCOPE.fold_plan_path(tmp_path, bad)
    with pytest.raises(InvalidNameError):
        CS_SCOPE.cohort_dir(tmp_path, bad)


# --------------------------------------------------------------------------- ids


def test_universe_signature_is_order_case_and_duplicate_insensitive() -> None:
    expected = hashlib.sha256(b"AAPL,MSFT,NVDA").hexdigest()
    assert universe_signature(["NVDA", "aapl", "MSFT", "AAPL"]) == expected == S1
    assert universe_signature(("msft", "nvda", "aapl")) == expected
    assert universe_signature(["AAPL", "MSFT"]) != expected


@pytest.mark.parametrize("bad", [[], ["AAPL,MSFT"], ["A/B"], "AAPL"])
def test_universe_signature_refuses(bad: object) -> None:
    with pytest.raises((InvalidNameError, TypeError)):
        universe_signature(bad)  # type: ignore[arg-type]


def test_batch_of_and_validate_batch() -> None:
    assert batch_of(S1) == "958ecb3c3bb6"
    assert validate_batch("958ecb3c3bb6") == "958ecb3c3bb6"
    for bad in ("958ECB3C3BB6", "958ecb3c3bb", "958ecb3c3bb6a", "zz8ecb3c3bb6"):
        with pytest.raises(InvalidNameError):
            validate_batch(bad)
    for bad in ("xyz" * 20, "958ecb", S1.upper()):
        with pytest.raises(InvalidNameError):
            batch_of(bad)


IDENTITY = {"data": "f" * 64, "target": "fwd_ret_5", "stage": TR, "settings": {"seed": 7}}


def test_cohort_id_format_and_hash8() -> None:
    cid = cohort_id(CS, pd.Timestamp("2025-08-29 16:00"), S1, 3, 2000, 1, IDENTITY)
    # hash8 is the sha256 of the compact canonical JSON of the identity
    hash8 = hashlib.sha256(
        json.dumps(IDENTITY, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()[:8]
    assert cid == f"cs_2025Q3_958ecb3c3bb6_min_cs3_max2000_v1_{hash8}"
    sy = cohort_id(SS, datetime(2025, 8, 29), S1, 1, 500, 2, IDENTITY)
    assert sy == f"sy_2025Q3_958ecb3c3bb6_min_cs1_max500_v2_{hash8}"


def test_cohort_id_is_stable_and_identity_sensitive() -> None:
    ts = pd.Timestamp("2025-08-29")
    first = cohort_id(CS, ts, S1, 3, 2000, 1, IDENTITY)
    assert cohort_id(CS, ts, S1, 3, 2000, 1, dict(reversed(list(IDENTITY.items())))) == first
    changed = cohort_id(CS, ts, S1, 3, 2000, 1, {**IDENTITY, "settings": {"seed": 8}})
    assert changed != first and changed[:-8] == first[:-8]


@pytest.mark.parametrize(
    ("last_bar", "quarter"),
    [
        (pd.Timestamp("2025-01-01 00:00"), "2025Q1"),
        (pd.Timestamp("2025-03-31 23:59:59"), "2025Q1"),
        (pd.Timestamp("2025-04-01"), "2025Q2"),
        (datetime(2025, 9, 30, 12), "2025Q3"),
        (pd.Timestamp("2025-10-01", tz="UTC"), "2025Q4"),
        (datetime(1999, 12, 31), "1999Q4"),
    ],
)
def test_cohort_id_quarter_from_last_bar(last_bar: datetime, quarter: str) -> None:
    assert cohort_id(CS, last_bar, S1, 3, 2000, 1, IDENTITY).split("_")[1] == quarter


def test_cohort_id_refuses_bad_input() -> None:
    with pytest.raises(InvalidNameError):
        cohort_id("POOLED", datetime(2025, 1, 1), S1, 3, 2000, 1, IDENTITY)
    with pytest.raises(InvalidNameError):
        cohort_id(CS, datetime(2025, 1, 1), S1, -1, 2000, 1, IDENTITY)
    with pytest.raises(ValueError):
        cohort_id(CS, pd.NaT, S1, 3, 2000, 1, IDENTITY)


RUN_ID = re.compile(r"\d{8}_\d{6}_\d{6}_[0-9a-f]{6}")


def test_run_ids_are_unique_and_well_formed() -> None:
    ids = [new_run_id() for _ in range(10_000)]
    assert len(set(ids)) == 10_000
    assert all(RUN_ID.fullmatch(i) for i in ids)
    assert new_run_id(datetime(2025, 1, 2, 3, 4, 5, 6789)).startswith("20250102_030405_006789_")


def test_run_ids_never_come_from_random(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("run ids must not use the random module")

    now = datetime(2025, 1, 1)
    random.seed(0)
    first = new_run_id(now)
    random.seed(0)
    second = new_run_id(now)
    assert first != second  # same seed, same time: a seeded generator would repeat
    for name in ("random", "getrandbits", "choice", "choices", "randint", "randbytes", "sample"):
        monkeypatch.setattr(random, name, refuse)
    assert RUN_ID.fullmatch(new_run_id())


def test_unique_run_dir_creates_and_refuses_reuse(tmp_path: Path) -> None:
    made = unique_run_dir(tmp_path / "runs", "run_a")
    assert made == tmp_path / "runs" / "run_a" and made.is_dir()
    atomic_write_text(made / "keep.txt", "old")
    with pytest.raises(StoreError, match="already exists"):
        unique_run_dir(tmp_path / "runs", "run_a")
    assert (made / "keep.txt").read_text() == "old"
    fresh = unique_run_dir(tmp_path / "runs")
    assert RUN_ID.fullmatch(fresh.name) and fresh.is_dir()
    for bad in ("..", "a/b", ""):
        with pytest.raises(InvalidNameError):
            unique_run_dir(tmp_path / "runs", bad)


# --------------------------------------------------------------------------- fixture trees

# (layout, target, stage, view, symbol, batch, attempt, cohort id) in walk order
EXPECTED = {
    "current": [
        (LAYOUT_CURRENT, "fwd_ret_10", TRN, CS, None, B2, 0, CUR_TR),
        (LAYOUT_CURRENT, "fwd_ret_5", TR, CS, None, B1, 10, CUR_X),
        (LAYOUT_CURRENT, "fwd_ret_5", TR, CS, None, B1, 10, CUR_A10),
        (LAYOUT_CURRENT, "fwd_ret_5", TR, CS, None, B1, 2, CUR_X),
        (LAYOUT_CURRENT, "fwd_ret_5", TR, CS, None, B1, 0, CUR_A0),
        (LAYOUT_CURRENT, "fwd_ret_5", FS, SS, "AAPL", B1, 0, CUR_SY),
    ],
    "batch_without_attempt": [
        (LAYOUT_BATCH_NO_ATTEMPT, "fwd_ret_5", TR, CS, None, B1, 0, BNA_CS),
        (LAYOUT_BATCH_NO_ATTEMPT, "fwd_ret_5", TR, SS, "MSFT", B1, 0, BNA_SY),
    ],
    "legacy_universe": [
        (LAYOUT_LEGACY_UNIVERSE, "fwd_ret_5", TR, CS, None, B1, 0, LEG_NOATT),
        (LAYOUT_LEGACY_UNIVERSE, "fwd_ret_5", TR, CS, None, B2, 0, LEG_ATT),
    ],
    "flat": [
        (LAYOUT_FLAT, "fwd_ret_20", FS, CS, None, None, 0, FLAT_NOSIG),
        (LAYOUT_FLAT, "fwd_ret_20", FS, CS, None, None, 0, FLAT_SIG),
    ],
    "symbol_older": [
        (LAYOUT_SYMBOL_OLDER, "fwd_ret_5", TR, SS, "AAPL", None, 0, OLD_ATT),
        (LAYOUT_SYMBOL_OLDER, "fwd_ret_5", TR, SS, "NVDA", None, 0, OLD_NOATT),
    ],
}


def _summary(records: list[layout.CohortRecord]) -> list[tuple]:
    return [
        (r.layout, r.target, r.stage, r.view, r.symbol, r.batch, r.attempt, r.cohort_id)
        for r in records
    ]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_trees_are_read_in_every_layout(name: str) -> None:
    records = list(walk_cohorts(FIXTURES / name))
    assert _summary(records) == EXPECTED[name]
    for record in records:
        assert record.dir(FIXTURES / name).is_dir()
        assert (record.dir(FIXTURES / name) / "metadata.json").is_file()
        assert parse_cohort_path(FIXTURES / name, FIXTURES / name / record.path) == record
        assert parse_cohort_path(FIXTURES / name, record.path) == record  # relative string


def test_fixture_paths_have_the_documented_shape() -> None:
    rel = {r.cohort_id: r.path for n in EXPECTED for r in walk_cohorts(FIXTURES / n)}
    assert rel[LEG_NOATT] == (
        f"targets/fwd_ret_5/reproducibility/stage=TARGET_RANKING/CROSS_SECTIONAL/universe={S1}/"
        f"cohort={LEG_NOATT}"
    )
    assert rel[LEG_ATT] == (
        f"targets/fwd_ret_5/reproducibility/stage=TARGET_RANKING/CROSS_SECTIONAL/universe={S2}/"
        f"attempt_0/cohort={LEG_ATT}"
    )
    assert rel[OLD_ATT] == (
        "targets/fwd_ret_5/reproducibility/stage=TARGET_RANKING/SYMBOL_SPECIFIC/symbol=AAPL/"
        f"attempt_0/cohort={OLD_ATT}"
    )
    assert rel[OLD_NOATT] == (
        "targets/fwd_ret_5/reproducibility/stage=TARGET_RANKING/SYMBOL_SPECIFIC/symbol=NVDA/"
        f"cohort={OLD_NOATT}"
    )
    assert rel[FLAT_SIG] == (
        f"targets/fwd_ret_20/reproducibility/stage=FEATURE_SELECTION/CROSS_SECTIONAL/cohort={FLAT_SIG}"
    )
    assert rel[BNA_SY] == (
        "targets/fwd_ret_5/reproducibility/stage=TARGET_RANKING/SYMBOL_SPECIFIC/symbol=MSFT/"
        f"batch_{B1}/cohort={BNA_SY}"
    )


def test_universe_sig_comes_from_folder_or_metadata() -> None:
    by_id = {r.cohort_id: r for n in EXPECTED for r in walk_cohorts(FIXTURES / n)}
    assert by_id[LEG_NOATT].universe_sig == S1  # from universe=, metadata has none
    assert by_id[LEG_ATT].universe_sig == S2
    assert by_id[CUR_TR].universe_sig == S2  # current layout: from metadata.json
    assert by_id[FLAT_SIG].universe_sig == S2 and by_id[FLAT_SIG].batch is None
    assert by_id[FLAT_NOSIG].universe_sig is None
    assert by_id[OLD_NOATT].universe_sig == S1 and by_id[OLD_NOATT].batch is None


def test_attempts_sort_numerically(tmp_path: Path) -> None:
    batch_dir = (
        FIXTURES
        / "current"
        / (f"targets/fwd_ret_5/reproducibility/stage=TARGET_RANKING/CROSS_SECTIONAL/batch_{B1}")
    )
    assert sorted_attempts(batch_dir) == [0, 2, 10, 11]
    for name in ("attempt_10", "attempt_2", "attempt_9", "attempt_1", "attempt_x", "attempt_01"):
        (tmp_path / name).mkdir()
    (tmp_path / "attempt_3").write_text("a file, not an attempt")
    assert sorted_attempts(tmp_path) == [1, 2, 9, 10]
    assert sorted_attempts(tmp_path / "missing") == []
    x_attempts = [r.attempt for r in walk_cohorts(FIXTURES / "current") if r.cohort_id == CUR_X]
    assert x_attempts == [10, 2]  # newest first, and 10 after 2 numerically


def test_incomplete_attempts_are_skipped() -> None:
    root = FIXTURES / "current"
    default = [r for r in walk_cohorts(root) if r.attempt == 11]
    assert default == []
    everything = list(walk_cohorts(root, include_incomplete=True))
    (eleven,) = [r for r in everything if r.attempt == 11]
    assert eleven.cohort_id == CUR_X and eleven.complete is False
    assert parse_cohort_path(root, eleven.path).complete is False
    assert find_cohort(root, CUR_X).attempt == 10


@pytest.mark.parametrize(
    ("name", "cid", "layout_name", "attempt"),
    [
        ("current", CUR_X, LAYOUT_CURRENT, 10),
        ("current", CUR_SY, LAYOUT_CURRENT, 0),
        ("batch_without_attempt", BNA_CS, LAYOUT_BATCH_NO_ATTEMPT, 0),
        ("batch_without_attempt", BNA_SY, LAYOUT_BATCH_NO_ATTEMPT, 0),
        ("legacy_universe", LEG_NOATT, LAYOUT_LEGACY_UNIVERSE, 0),
        ("legacy_universe", LEG_ATT, LAYOUT_LEGACY_UNIVERSE, 0),
        ("flat", FLAT_SIG, LAYOUT_FLAT, 0),
        ("symbol_older", OLD_ATT, LAYOUT_SYMBOL_OLDER, 0),
        ("symbol_older", OLD_NOATT, LAYOUT_SYMBOL_OLDER, 0),
    ],
)
def test_find_cohort_in_every_layout(name: str, cid: str, layout_name: str, attempt: int) -> None:
    record = find_cohort(FIXTURES / name, cid)
    assert (record.cohort_id, record.layout, record.attempt) == (cid, layout_name, attempt)
    assert record.dir(FIXTURES / name).name == f"cohort={cid}"
    assert not (FIXTURES / name / "_index").exists()  # a lookup never writes


def test_find_cohort_names_the_root_when_missing() -> None:
    root = FIXTURES / "flat"
    with pytest.raises(ArtifactNotFoundError, match=re.escape(str(root))):
        find_cohort(root, "cs_2025Q3_000000000000_min_cs3_max2000_v1_00000000")


def test_latest_complete_attempt(tmp_path: Path) -> None:
    root = FIXTURES / "current"
    assert latest_complete_attempt(root, B1) == 10  # attempt_11 has no marker
    assert latest_complete_attempt(root, B1, target="fwd_ret_5", stage=FS) == 0  # symbol view
    assert latest_complete_attempt(root, B1, target="fwd_ret_10") is None
    assert latest_complete_attempt(root, B2) == 0
    assert latest_complete_attempt(root, "000000000000") is None
    scope = Scope("fwd_ret_5", TR, SS, B1, 4, symbol="MSFT")
    write_json(scope.cohort_dir(tmp_path, CUR_SY) / "metadata.json", {})
    assert latest_complete_attempt(tmp_path, B1) is None
    atomic_write_text(scope.complete_marker(tmp_path), "")
    assert latest_complete_attempt(tmp_path, B1) == 4


def test_parse_refuses_non_cohort_paths(tmp_path: Path) -> None:
    view = "targets/t/reproducibility/stage=TRAINING"
    for rel in (
        f"{view}/CROSS_SECTIONAL/batch_{B}/attempt_0/feature_importances",
        f"{view}/CROSS_SECTIONAL/symbol=AAPL/cohort=x",
        f"{view}/SYMBOL_SPECIFIC/batch_{B}/cohort=x",
        f"{view}/CROSS_SECTIONAL/attempt_0/cohort=x",
        f"{view}/CROSS_SECTIONAL/batch_XYZ/attempt_0/cohort=x",
        f"{view}/CROSS_SECTIONAL/universe=abc/cohort=x",
        "targets/t/reproducibility/stage=BOGUS/CROSS_SECTIONAL/cohort=x",
        "targets/../reproducibility/stage=TRAINING/CROSS_SECTIONAL/cohort=x",
        "elsewhere/cohort=x",
    ):
        assert parse_cohort_path(tmp_path, rel) is None, rel
    assert parse_cohort_path(tmp_path, Path("/somewhere/else/cohort=x")) is None


def test_scope_record_round_trips_through_the_parser(tmp_path: Path) -> None:
    cid = "sy_2025Q3_ab12cd34ef56_min_cs1_max2000_v1_0badcafe"
    sig = B + "0" * 52
    write_json(SS_SCOPE.cohort_dir(tmp_path, cid) / "metadata.json", {"universe_sig": sig})
    # no marker at all: written by another system, read as complete
    external = parse_cohort_path(tmp_path, SS_SCOPE.cohort_dir(tmp_path, cid))
    assert (external.complete, external.origin) == (True, "external")
    atomic_write_text(SS_SCOPE.progress_marker(tmp_path), "")  # cohortflow is writing it
    assert parse_cohort_path(tmp_path, SS_SCOPE.cohort_dir(tmp_path, cid)).complete is False
    assert list(walk_cohorts(tmp_path)) == []
    atomic_write_text(SS_SCOPE.complete_marker(tmp_path), "")  # sealed
    parsed = parse_cohort_path(tmp_path, SS_SCOPE.cohort_dir(tmp_path, cid))
    assert parsed == SS_SCOPE.record(cid, universe_sig=sig)
    assert parsed.origin == "cohortflow"
    assert list(walk_cohorts(tmp_path)) == [parsed]


def test_walk_on_a_memory_root() -> None:
    root = UPath("memory://layout-walk/out")
    cid = "cs_2025Q3_ab12cd34ef56_min_cs3_max2000_v1_3d940389"
    write_json(CS_SCOPE.cohort_dir(root, cid) / "metadata.json", {"universe_sig": B + "1" * 52})
    atomic_write_text(CS_SCOPE.complete_marker(root), "")
    records = list(walk_cohorts(root))
    assert records == [CS_SCOPE.record(cid, universe_sig=B + "1" * 52)]
    assert latest_complete_attempt(root, B) == 0
    assert find_cohort(root, cid) == records[0]
    assert COMPLETE_MARKER == "_COMPLETE"
