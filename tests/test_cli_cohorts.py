"""`cohortflow cohorts list/show/diff`, `reindex` and `migrate` on the checked-in trees of
every older layout (DESIGN §2's table)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cohortflow_dagster.cli.main import main

FIXTURES = Path(__file__).parent / "fixtures" / "layouts"
JSON_KEYS = {
    "cohort_id",
    "target",
    "stage",
    "view",
    "batch",
    "universe_sig",
    "symbol",
    "attempt",
    "layout",
    "path",
}


@pytest.fixture
def every_layout(tmp_path: Path) -> Path:
    """All fixture trees merged into one root (they use distinct targets/ids)."""
    root = tmp_path / "root"
    for tree in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        shutil.copytree(tree, root, dirs_exist_ok=True)
    return root


def _list(root: Path, capsys, *extra: str) -> list[dict]:
    assert main(["cohorts", "list", "--root", str(root), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_list_json_covers_every_layout_with_the_documented_fields(every_layout: Path, capsys):
    rows = _list(every_layout, capsys)
    assert rows, "no cohort listed"
    assert all(set(r) >= JSON_KEYS for r in rows)
    layouts = {r["layout"] for r in rows}
    assert layouts == {
        "current",
        "batch_without_attempt",
        "legacy_universe",
        "flat",
        "symbol_older",
    }
    for r in rows:
        assert isinstance(r["attempt"], int)
        assert r["batch"] is None or len(r["batch"]) == 12
        assert (every_layout / r["path"]).is_dir()
        if r["layout"] in ("flat", "batch_without_attempt"):
            assert r["attempt"] == 0


def test_attempts_sort_by_number_not_name(every_layout: Path, capsys):
    rows = [r for r in _list(every_layout, capsys) if r["layout"] == "current"]
    attempts = [
        r["attempt"]
        for r in rows
        if r["view"] == "CROSS_SECTIONAL"
        and r["batch"] == rows[0]["batch"]
        and r["target"] == rows[0]["target"]
        and r["stage"] == rows[0]["stage"]
    ]
    if 10 in attempts and 2 in attempts:
        assert attempts.index(10) < attempts.index(2)  # newest first: attempt_10 before attempt_2


def test_filters(every_layout: Path, capsys):
    everything = _list(every_layout, capsys)
    target = everything[0]["target"]
    only = _list(every_layout, capsys, "--target", target)
    assert only and all(r["target"] == target for r in only)
    sy = _list(every_layout, capsys, "--view", "SYMBOL_SPECIFIC")
    assert sy and all(r["view"] == "SYMBOL_SPECIFIC" and r["symbol"] for r in sy)
    zero = _list(every_layout, capsys, "--attempt", "0")
    assert zero and all(r["attempt"] == 0 for r in zero)


def test_show_and_diff(every_layout: Path, capsys):
    rows = _list(every_layout, capsys)
    a, b = rows[0]["cohort_id"], rows[1]["cohort_id"]
    assert main(["cohorts", "show", a, "--root", str(every_layout)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["record"]["cohort_id"] == a
    assert main(["cohorts", "diff", a, b, "--root", str(every_layout)]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert {"baseline", "verdict", "metrics", "features", "exclusions"} <= set(diff)
    assert diff["baseline"]["cohort_id"] in (a, None) or diff["baseline"]["path"] == rows[0]["path"]


def test_unknown_cohort_is_a_clear_error(every_layout: Path, capsys):
    assert (
        main(
            [
                "cohorts",
                "show",
                "cs_2025Q1_000000000000_min_cs1_max1_v1_00000000",
                "--root",
                str(every_layout),
            ]
        )
        == 2
    )
    assert "cohortflow: error:" in capsys.readouterr().err


def test_reindex_then_list_agree(every_layout: Path, capsys):
    before = _list(every_layout, capsys)
    assert main(["reindex", "--root", str(every_layout)]) == 0
    assert f"indexed {len(before)} cohorts" in capsys.readouterr().out
    assert _list(every_layout, capsys) == before


def test_migrate_reports_counts_and_leaves_the_old_tree_alone(tmp_path: Path, capsys):
    old = tmp_path / "old"
    shutil.copytree(FIXTURES / "legacy_universe", old)
    before = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    code = main(["migrate", "--from", str(old), "--to", str(tmp_path / "new")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "migrated=" in out and "failed=0" in out
    assert int(out.split("migrated=")[1].split()[0]) > 0
    after = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    assert after == before
    rows = _list(tmp_path / "new", capsys)
    assert rows and {r["layout"] for r in rows} == {"current"}
