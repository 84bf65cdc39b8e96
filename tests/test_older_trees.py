"""Trees written by older versions and by the older system are read: every layout of
DESIGN §2's table, with and without markers, is listed, shown, diffed, verified and
migrated. ``reference/`` is written the way ../shared/reference describes the older
system: the current layout, no markers, a stale snapshot scoring version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cohortflow.layout import COMPLETE_MARKER, PROGRESS_MARKER, walk_cohorts
from cohortflow_dagster.cli.main import main

FIXTURES = Path(__file__).parent / "fixtures" / "layouts"
LAYOUTS = (
    "current",
    "batch_without_attempt",
    "legacy_universe",
    "flat",
    "symbol_older",
    "reference",
)
REFERENCE_CS0 = "cs_2025Q3_958ecb3c3bb6_min_cs3_max2000_v1_3d940389"


def _containers(root: Path) -> set[Path]:
    """The folders that hold cohort folders (attempt folders, or their older stand-ins)."""
    return {p.parent for p in root.rglob("cohort=*") if p.is_dir()}


def _tree(tmp_path: Path, layout: str, markers: str) -> Path:
    """A copy of a fixture tree; ``markers``: "none" (as written), "in_progress" (every
    container marked as being written) or "complete" (every container sealed)."""
    root = shutil.copytree(FIXTURES / layout, tmp_path / layout)
    for folder in _containers(root):
        for name in (COMPLETE_MARKER, PROGRESS_MARKER):
            (folder / name).unlink(missing_ok=True)
        if markers == "in_progress":
            (folder / PROGRESS_MARKER).write_bytes(b"")
        elif markers == "complete":
            (folder / COMPLETE_MARKER).write_text("{}\n")
    return root


def _list(root: Path, capsys) -> list[dict]:
    assert main(["cohorts", "list", "--root", str(root), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("markers", ["none", "in_progress", "complete"])
def test_every_layout_with_and_without_markers_is_listed_shown_diffed_and_migrated(
    tmp_path: Path, capsys, layout: str, markers: str
) -> None:
    root = _tree(tmp_path, layout, markers)
    found = list(walk_cohorts(root, include_incomplete=True))
    assert found, layout
    rows = _list(root, capsys)
    if markers == "in_progress":  # being written (or killed): nothing listed
        assert rows == []
        return
    assert len(rows) == len(found)
    origin = "external" if markers == "none" else "cohortflow"
    assert {r["origin"] for r in rows} == {origin}
    assert all(r["complete"] for r in rows)
    if markers == "none":  # another system's attempts: no reason recorded by cohortflow
        assert {r["reason"] for r in rows} == {"external"}

    first = rows[0]["cohort_id"]
    assert main(["cohorts", "show", first, "--root", str(root)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["record"]["cohort_id"] == first
    assert shown["record"]["origin"] == origin
    if len(rows) > 1:
        assert (
            main(
                ["cohorts", "diff", rows[0]["cohort_id"], rows[1]["cohort_id"], "--root", str(root)]
            )
            == 0
        )
        diff = json.loads(capsys.readouterr().out)
        assert set(diff["scoring_schema"]) == {rows[0]["cohort_id"], rows[1]["cohort_id"]}

    new = tmp_path / "migrated"
    assert main(["migrate", "--from", str(root), "--to", str(new)]) == 0
    out = capsys.readouterr().out
    assert "failed=0" in out, out
    # a cohort with no batch_/universe= folder and no universe_sig cannot be placed: it is
    # skipped, and the command says why
    unplaced = out.count("universe unknown")
    migrated = list(walk_cohorts(new))
    assert len(migrated) + unplaced == len(rows)
    assert {r.layout for r in migrated} == {"current"} and {r.origin for r in migrated} == {
        "cohortflow"
    }
    for record in migrated:  # sealed by the migration, or its own seal copied along
        assert (record.dir(new).parent / COMPLETE_MARKER).is_file()
        assert not (record.dir(new).parent / PROGRESS_MARKER).exists()


def test_the_reference_tree_reads_as_the_older_system_wrote_it(tmp_path: Path, capsys) -> None:
    root = _tree(tmp_path, "reference", "none")
    rows = _list(root, capsys)
    assert sorted((r["view"], r["attempt"], r["symbol"]) for r in rows) == [
        ("CROSS_SECTIONAL", 0, None),
        ("CROSS_SECTIONAL", 1, None),
        ("SYMBOL_SPECIFIC", 0, "AAPL"),
    ]
    assert {r["layout"] for r in rows} == {"current", "symbol_older"}
    # the stale 1.1 at the snapshot's top level: read as 1.2 (metrics.json is the
    # authority), and the command says which version it read and what the snapshot claimed
    assert main(["cohorts", "show", REFERENCE_CS0, "--root", str(root)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["scoring_schema"] == {
        "version": "1.2",
        "source": "metrics.json schema.scoring",
        "snapshot_claimed": "1.1",
    }
    snapshot = shown["snapshot.json"]
    assert snapshot["scoring_schema_version"] == "1.2"
    assert snapshot["outputs"]["metrics"]["schema"]["scoring"] == "1.2"
    # its snapshots' manifest digests match its files: verify passes on the older tree
    assert main(["verify", "--root", str(root)]) == 0
    assert "every file matches" in capsys.readouterr().out
    # a changed artifact is named, in the current layout and in the older symbol one
    for csv in root.rglob("attempt_0/feature_importances/lightgbm_importances.csv"):
        csv.write_text(csv.read_text().replace("12.5", "12.6"))
    assert main(["verify", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert (
        f"manifest: targets/fwd_ret_10m/reproducibility/stage=TARGET_RANKING/CROSS_SECTIONAL/batch_958ecb3c3bb6/attempt_0/cohort={REFERENCE_CS0}/snapshot.json"
        in out
    )
    assert "SYMBOL_SPECIFIC/symbol=AAPL/attempt_0/cohort=" in out
    assert "2 problem(s)" in out


def test_older_snapshot_shapes_normalise_to_one() -> None:
    from cohortflow.snapshots import normalize_scoring

    cases = [
        # (snapshot, metrics) -> version read, source
        (
            ({"scoring_schema_version": "1.1"}, None),
            ("1.1", "snapshot.json scoring_schema_version"),
        ),
        (
            ({"scoring_schema_version": "1.1"}, {"schema": {"scoring": "1.2"}}),
            ("1.2", "metrics.json schema.scoring"),
        ),
        (
            ({"outputs": {"metrics": {"schema": {"scoring": "1.2"}}}}, {}),
            ("1.2", "snapshot.json outputs.metrics.schema.scoring"),
        ),
        (({}, {}), ("1.1", "default for cohorts that record none")),
    ]
    for (snapshot, metrics), (version, source) in cases:
        snap, mets = normalize_scoring(snapshot, metrics, "somewhere")
        assert snap["scoring_schema_version"] == version
        assert snap["outputs"]["metrics"]["schema"]["scoring"] == version
        assert mets["schema"]["scoring"] == version
        assert snap["scoring_schema_read"]["source"] == source
