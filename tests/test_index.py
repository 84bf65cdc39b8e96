"""cohortflow.index: the index agrees with the tree, rebuilds, and takes concurrent adds."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from upath import UPath

from cohortflow import layout
from cohortflow.errors import ArtifactNotFoundError
from cohortflow.fsio import atomic_write_text, write_json
from cohortflow.index import CohortIndex, find_cohort
from cohortflow.layout import Scope, walk_cohorts

FIXTURES = Path(__file__).parent / "fixtures" / "layouts"
LAYOUT_TREES = ("current", "batch_without_attempt", "legacy_universe", "flat", "symbol_older")
REPO = Path(__file__).resolve().parents[1]
B = "ab12cd34ef56"
SIG = B + "0" * 52


def _copy_all(dst: Path) -> Path:
    """All fixture trees merged into one root (their paths do not overlap)."""
    for name in LAYOUT_TREES:
        shutil.copytree(FIXTURES / name, dst, dirs_exist_ok=True)
    return dst


@pytest.fixture
def merged(tmp_path: Path) -> Path:
    return _copy_all(tmp_path / "out")


def test_rebuild_list_and_get_agree_with_the_walk(merged: Path) -> None:
    index = CohortIndex(merged)
    assert not index.exists()
    walked = list(walk_cohorts(merged))
    assert len(walked) == 14
    assert index.rebuild() == 14
    assert index.exists()
    assert index.path == merged / "_index" / "cohorts.sqlite"
    assert index.list() == walked
    for target in ("fwd_ret_5", "fwd_ret_10", "fwd_ret_20"):
        assert index.list(target=target) == [r for r in walked if r.target == target]
    assert index.list(view="SYMBOL_SPECIFIC", symbol="AAPL") == [
        r for r in walked if r.symbol == "AAPL"
    ]
    cur_batch = "958ecb3c3bb6"
    assert [r.attempt for r in index.list(target="fwd_ret_5", batch=cur_batch, attempt=10)] == [
        10,
        10,
    ]
    for record in walked:
        expected = min(
            (r for r in walked if r.cohort_id == record.cohort_id), key=layout.newest_first_key
        )
        assert index.get(record.cohort_id) == expected
    assert index.get("cs_nope") is None


@pytest.mark.parametrize("name", LAYOUT_TREES)
def test_each_fixture_tree_indexes_like_the_walk(tmp_path: Path, name: str) -> None:
    root = shutil.copytree(FIXTURES / name, tmp_path / name)
    index = CohortIndex(root)
    index.rebuild()
    walked = list(walk_cohorts(root))
    assert walked and index.list() == walked
    assert {r.layout for r in index.list()} == {r.layout for r in walked}


def test_get_prefers_the_newest_complete_attempt(merged: Path) -> None:
    index = CohortIndex(merged)
    index.rebuild()
    x = "cs_2025Q3_958ecb3c3bb6_min_cs3_max2000_v1_024a77f7"  # attempts 2, 10, 11 (incomplete)
    assert index.get(x).attempt == 10
    assert [r.attempt for r in index.list() if r.cohort_id == x] == [10, 2]


def test_add_is_an_upsert_and_keeps_summaries(tmp_path: Path) -> None:
    index = CohortIndex(tmp_path)
    scope = Scope("fwd_ret_5", "TRAINING", "CROSS_SECTIONAL", B, 0)
    record = scope.record("cs_2025Q3_ab12cd34ef56_min_cs3_max2000_v1_11111111", SIG)
    index.add(record, {"rank_ic": 0.05, "n": 3})
    index.add(record)  # again, no summary: one row, summary kept
    assert index.list() == [record]
    assert index.summary(record.cohort_id) == {"n": 3, "rank_ic": 0.05}
    index.add(record, {"rank_ic": 0.07})
    assert index.summary(record.cohort_id) == {"rank_ic": 0.07}
    assert index.add_many([scope.record("cs_b", SIG), (scope.record("cs_c", SIG), {"k": 1})]) == 2
    assert [r.cohort_id for r in index.list(target="fwd_ret_5")] == [
        "cs_2025Q3_ab12cd34ef56_min_cs3_max2000_v1_11111111",
        "cs_b",
        "cs_c",
    ]


def test_incomplete_records_are_hidden_by_default(tmp_path: Path) -> None:
    index = CohortIndex(tmp_path)
    scope = Scope("fwd_ret_5", "TRAINING", "CROSS_SECTIONAL", B, 1)
    pending = scope.record("cs_pending", SIG, complete=False)
    index.add(pending)
    assert index.get("cs_pending") is None and index.list() == []
    assert index.get("cs_pending", include_incomplete=True) == pending
    index.add(scope.record("cs_pending", SIG))  # marker written, record added again
    assert index.get("cs_pending").complete is True


def test_remove_attempt(tmp_path: Path) -> None:
    index = CohortIndex(tmp_path)
    for attempt in (0, 1):
        scope = Scope("fwd_ret_5", "TRAINING", "SYMBOL_SPECIFIC", B, attempt, symbol="AAPL")
        index.add(scope.record(f"sy_{attempt}", SIG))
    assert index.remove_attempt("fwd_ret_5", "TRAINING", "SYMBOL_SPECIFIC", B, 1, "AAPL") == 1
    assert [r.cohort_id for r in index.list()] == ["sy_0"]


def test_rebuild_drops_stale_rows_and_keeps_summaries(merged: Path) -> None:
    index = CohortIndex(merged)
    index.rebuild()
    first = index.list()[0]
    index.add(first, {"kept": True})
    ghost = Scope("fwd_ret_5", "TRAINING", "CROSS_SECTIONAL", B, 0).record("cs_ghost", SIG)
    index.add(ghost)  # no folder on disk
    shutil.rmtree(merged / index.list(target="fwd_ret_20")[0].path)
    assert index.rebuild() == 13
    assert index.get("cs_ghost") is None
    assert index.summary(first.cohort_id, first.path) == {"kept": True}
    assert index.list() == list(walk_cohorts(merged))


def test_reading_a_root_without_index_creates_nothing(tmp_path: Path) -> None:
    index = CohortIndex(tmp_path)
    assert index.list() == [] and index.get("x") is None and not index.exists()
    assert not (tmp_path / "_index").exists()


def test_sqlite_file_uses_wal_and_indexes(tmp_path: Path) -> None:
    index = CohortIndex(tmp_path)
    index.add(Scope("t", "TRAINING", "CROSS_SECTIONAL", B, 0).record("cs_a", SIG))
    con = sqlite3.connect(index.path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        plan = " ".join(
            str(r)
            for r in con.execute(
                "EXPLAIN QUERY PLAN SELECT * FROM cohorts WHERE target='t' AND stage='TRAINING'"
            )
        )
    finally:
        con.close()
    assert {"cohorts_by_id", "cohorts_by_scope"} <= names
    assert "cohorts_by_scope" in plan


def test_find_cohort_uses_the_index_and_falls_back_to_the_tree(
    merged: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    CohortIndex(merged).rebuild()
    cid = "sy_2024Q3_958ecb3c3bb6_min_cs1_max2000_v1_6682bb50"
    expected = find_cohort(merged, cid)

    def no_walk(*args: object, **kwargs: object) -> None:
        raise AssertionError("walked the tree although the index has the cohort")

    with monkeypatch.context() as m:
        m.setattr(layout, "walk_cohorts", no_walk)
        assert find_cohort(merged, cid) == expected
    # a cohort written after the last rebuild is still found, by walking
    scope = Scope("fwd_ret_5", "TRAINING", "CROSS_SECTIONAL", B, 0)
    write_json(scope.cohort_dir(merged, "cs_late") / "metadata.json", {"universe_sig": SIG})
    atomic_write_text(scope.complete_marker(merged), "")
    assert find_cohort(merged, "cs_late") == scope.record("cs_late", SIG)


_WRITER = textwrap.dedent(
    """
    import sys, time
    from cohortflow.index import CohortIndex
    from cohortflow.layout import Scope
    from pathlib import Path
    root, worker = sys.argv[1], int(sys.argv[2])
    scope = Scope("fwd_ret_5", "TRAINING", "CROSS_SECTIONAL", "ab12cd34ef56", worker)
    # a barrier: every writer has imported everything before any of them writes
    Path(root, f"ready_{worker}").touch()
    while len(list(Path(root).glob("ready_*"))) < 4:
        time.sleep(0.005)
    index = CohortIndex(root)
    t0 = time.time()
    for i in range(50):
        index.add(scope.record(f"cs_w{worker}_{i:02d}", "ab12cd34ef56" + "0" * 52), {"i": i})
        time.sleep(0.01)  # keep the four write windows wide enough to overlap under load
    print(t0, time.time())
    """
)


def test_concurrent_adds_from_four_processes(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), str(w)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for w in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [e.decode() for _, e in outputs]
    windows = [tuple(map(float, out.split())) for out, _ in outputs]
    # the writers really ran at the same time: every window overlaps every other
    assert max(t0 for t0, _ in windows) < min(t1 for _, t1 in windows), windows
    records = CohortIndex(tmp_path).list()
    assert len(records) == 200
    assert {r.cohort_id for r in records} == {
        f"cs_w{w}_{i:02d}" for w in range(4) for i in range(50)
    }
    assert CohortIndex(tmp_path).summary("cs_w3_49") == {"i": 49}


def test_memory_root_uses_a_jsonl_index() -> None:
    root = UPath("memory://index-test/out")
    scope = Scope("fwd_ret_5", "TARGET_RANKING", "SYMBOL_SPECIFIC", B, 0, symbol="MSFT")
    write_json(scope.cohort_dir(root, "sy_a") / "metadata.json", {"universe_sig": SIG})
    atomic_write_text(scope.complete_marker(root), "")
    index = CohortIndex(root)
    assert index.path == root / "_index" / "cohorts.jsonl"
    assert index.rebuild() == 1
    assert index.get("sy_a") == scope.record("sy_a", SIG)
    index.add(scope.record("sy_b", SIG), {"x": 1.5})
    assert [r.cohort_id for r in CohortIndex(root).list(symbol="MSFT")] == ["sy_a", "sy_b"]
    assert index.summary("sy_b") == {"x": 1.5}
    assert find_cohort(root, "sy_a").symbol == "MSFT"


def test_list_order_is_the_layout_sort_key(tmp_path: Path) -> None:
    # SQLite sorts the listing; it must be exactly layout.sort_key's order
    records = []
    for stage in ("TRAINING", "TARGET_RANKING", "FEATURE_SELECTION"):
        for attempt in (2, 10, 0):
            records.append(
                Scope("fwd_ret_5", stage, "SYMBOL_SPECIFIC", B, attempt, "MSFT").record("sy_b", SIG)
            )
            records.append(
                Scope("fwd_ret_5", stage, "CROSS_SECTIONAL", B, attempt).record("cs_a", SIG)
            )
            records.append(
                Scope("fwd_ret_10", stage, "CROSS_SECTIONAL", "00" * 6, attempt).record(
                    "cs_c", None
                )
            )
    records.append(
        layout.CohortRecord(
            "cs_a",
            "fwd_ret_5",
            "TRAINING",
            "CROSS_SECTIONAL",
            None,
            None,
            None,
            0,
            "flat",
            "targets/fwd_ret_5/reproducibility/stage=TRAINING/CROSS_SECTIONAL/cohort=cs_a",
        )
    )
    index = CohortIndex(tmp_path)
    index.add_many(reversed(records))
    assert index.list() == sorted(records, key=layout.sort_key)
    assert [r.stage for r in index.list(target="fwd_ret_10", attempt=0)] == [
        "TARGET_RANKING",
        "FEATURE_SELECTION",
        "TRAINING",
    ]


def test_find_cohort_ignores_an_index_entry_ahead_of_its_marker(tmp_path: Path) -> None:
    # a writer adds the cohort to the index, then dies before writing _COMPLETE
    scope = Scope("fwd_ret_5", "TRAINING", "CROSS_SECTIONAL", B, 1)
    atomic_write_text(scope.progress_marker(tmp_path), "")
    write_json(scope.cohort_dir(tmp_path, "cs_early") / "metadata.json", {"universe_sig": SIG})
    CohortIndex(tmp_path).add(scope.record("cs_early", SIG))
    with pytest.raises(ArtifactNotFoundError, match="the index and the tree"):
        find_cohort(tmp_path, "cs_early")
    atomic_write_text(scope.complete_marker(tmp_path), "{}\n")
    assert find_cohort(tmp_path, "cs_early") == scope.record("cs_early", SIG)
