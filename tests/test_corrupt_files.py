"""A corrupt file anywhere in the tree gets one clear line naming it, from every reader:
the loader and ``stacking-data``, ``cohorts show``/``diff``, ``stack``, the IO manager's
load and ``reindex`` (which skips the bad cohort and says so instead of stopping). And
``verify`` names a flipped byte and a deleted file; ``stack`` twice gives two folders."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from cohortflow.domain import ArtifactKind
from cohortflow.errors import CorruptFileError
from cohortflow.index import CohortIndex
from cohortflow_dagster.cli.main import main

pytestmark = pytest.mark.slow
TARGET = "fwd_ret_5"

MALFORMED = {
    "json": (b'{"target": "fwd_ret_5", ', r"malformed JSON: Expecting .+ at line \d+ column \d+"),
    "yaml": (b"target: [fwd_ret_5\nattempt: 0\n", r"malformed YAML: .+ at line \d+ column \d+"),
    "csv": (b'feature,importance\n"unclosed,1\n', r"malformed CSV: .+"),
    "parquet_truncated": (None, r"not a readable Parquet file \(.+\)"),
    "parquet_foreign": (
        b"timestamp,symbol\n2020-01-01,AAA\n",
        r"not a readable Parquet file \(.+\)",
    ),
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One complete attempt of one target, run by `cohortflow run` on a small universe."""
    import os

    from cohortflow import synthetic
    from tests.conftest import FAST_SETTINGS

    tmp = tmp_path_factory.mktemp("corrupt")
    (tmp / "home").mkdir()
    os.environ["DAGSTER_HOME"] = str(tmp / "home")
    synthetic.generate(tmp / "data", fmt="parquet", n_symbols=4, n_bars=400, n_noise=2, seed=5)
    settings = tmp / "one.yaml"
    settings.write_text(
        FAST_SETTINGS.read_text().replace("horizons: [5, 10]", "horizons: [5]")
        + "attempt_limit: 1\n"
    )
    out = tmp / "out"
    argv = ["run", "--data", str(tmp / "data"), "--out", str(out), "--settings", str(settings)]
    assert main(argv) == 0
    batch = json.loads(next((out / "_registry").iterdir()).read_text())["batch"]
    return {"root": out, "batch": batch}


def _copy(tree: dict, tmp_path: Path) -> Path:
    return shutil.copytree(tree["root"], tmp_path / "out")


def _attempt(root: Path, batch: str, stage: str) -> Path:
    return (
        root
        / f"targets/{TARGET}/reproducibility/stage={stage}/CROSS_SECTIONAL/batch_{batch}/attempt_0"
    )


def _corrupt(path: Path, kind: str) -> None:
    data, _ = MALFORMED[kind]
    if data is None:  # a Parquet file cut short
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    else:
        path.write_bytes(data)


def _one_line(capsys, path: Path, pattern: str, code: int = 2) -> None:
    """The command failed with exactly one line on stderr naming ``path`` and the problem,
    and no traceback."""
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1, captured.err
    assert re.fullmatch(rf"cohortflow: error: {re.escape(str(path))}: {pattern}", lines[0]), lines[
        0
    ]
    assert "Traceback" not in captured.err + captured.out


def _cohort(root: Path, batch: str, stage: str) -> Path:
    return next(p for p in _attempt(root, batch, stage).iterdir() if p.name.startswith("cohort="))


# --------------------------------------------------------------------------- stacking-data
@pytest.mark.parametrize("kind", ["parquet_truncated", "parquet_foreign"])
def test_stacking_data_names_a_corrupt_oof_file(tree, tmp_path, capsys, kind):
    root = _copy(tree, tmp_path)
    path = _attempt(root, tree["batch"], "TRAINING") / "oof" / "oof_predictions.parquet"
    _corrupt(path, kind)
    argv = ["stacking-data", "--root", str(root), "--batch", tree["batch"], "--attempt", "0"]
    assert main([*argv, "--target", TARGET]) == 2
    _one_line(capsys, path, MALFORMED[kind][1])


@pytest.mark.parametrize(("file", "kind"), [("oof/fold_plan.json", "json"), ("cohort", "json")])
def test_stacking_data_names_a_corrupt_json_beside_it(tree, tmp_path, capsys, file, kind):
    root = _copy(tree, tmp_path)
    if file == "cohort":
        path = _cohort(root, tree["batch"], "TRAINING") / "metadata.json"
    else:
        path = _attempt(root, tree["batch"], "TRAINING") / file
    _corrupt(path, kind)
    argv = ["stacking-data", "--root", str(root), "--batch", tree["batch"], "--attempt", "0"]
    assert main([*argv, "--target", TARGET]) == 2
    _one_line(capsys, path, MALFORMED[kind][1])


# --------------------------------------------------------------------------- cohorts show / diff
@pytest.mark.parametrize("name", ["metadata.json", "metrics.json", "snapshot.json"])
def test_cohorts_show_names_a_corrupt_cohort_file(tree, tmp_path, capsys, name):
    root = _copy(tree, tmp_path)
    cohort = _cohort(root, tree["batch"], "FEATURE_SELECTION")
    _corrupt(cohort / name, "json")
    cid = cohort.name.removeprefix("cohort=")
    assert main(["cohorts", "show", cid, "--root", str(root)]) == 2
    _one_line(capsys, cohort / name, MALFORMED["json"][1])


def test_cohorts_diff_names_a_corrupt_snapshot(tree, tmp_path, capsys):
    root = _copy(tree, tmp_path)
    a = _cohort(root, tree["batch"], "FEATURE_SELECTION")
    b = _cohort(root, tree["batch"], "TARGET_RANKING")
    _corrupt(b / "snapshot.json", "json")
    ids = [p.name.removeprefix("cohort=") for p in (a, b)]
    assert main(["cohorts", "diff", *ids, "--root", str(root)]) == 2
    _one_line(capsys, b / "snapshot.json", MALFORMED["json"][1])


# --------------------------------------------------------------------------- stack
def test_stack_names_a_truncated_oof_file(tree, tmp_path, capsys):
    root = _copy(tree, tmp_path)
    path = _attempt(root, tree["batch"], "TRAINING") / "oof" / "oof_predictions.parquet"
    _corrupt(path, "parquet_truncated")
    argv = ["stack", "--root", str(root), "--batch", tree["batch"], "--attempt", "0"]
    assert main([*argv, "--target", TARGET]) == 2
    _one_line(capsys, path, MALFORMED["parquet_truncated"][1])
    assert not (root / "stacks").exists()  # nothing half-written


def test_stack_twice_gives_two_folders_each_naming_its_oof(tree, tmp_path, capsys):
    from cohortflow.canonical import sha256_file

    root = _copy(tree, tmp_path)
    argv = [
        "stack",
        "--root",
        str(root),
        "--batch",
        tree["batch"],
        "--attempt",
        "0",
        "--target",
        TARGET,
    ]
    folders = []
    for _ in range(2):
        assert main(argv) == 0
        folders.append(Path(capsys.readouterr().out.strip().splitlines()[-1]))
    assert folders[0] != folders[1] and all(f.is_dir() for f in folders)
    assert (
        folders[0].parent
        == folders[1].parent
        == root / f"stacks/batch_{tree['batch']}/attempt_0/{TARGET}"
    )
    oof = _attempt(root, tree["batch"], "TRAINING") / "oof" / "oof_predictions.parquet"
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == ["meta_learner.json", "model_card.json"]
        card = json.loads((folder / "model_card.json").read_text())
        assert card["source"]["oof"] == str(oof)
        assert card["source"]["oof_sha256"] == sha256_file(oof)
        assert card["validation"]["label_end_from"] == "the attempt's feature panel"
    # the two fits agree (same OOF, same settings): deterministic, only the folder differs
    assert (folders[0] / "meta_learner.json").read_bytes() == (
        folders[1] / "meta_learner.json"
    ).read_bytes()
    # a name that exists is refused, never reused
    assert main([*argv, "--output-name", folders[0].name, "--out", str(folders[0].parent)]) == 2
    assert "already exists" in capsys.readouterr().err


# --------------------------------------------------------------------------- the IO manager
@pytest.mark.parametrize(
    ("kind", "relpath", "corruption"),
    [
        (ArtifactKind.EXCLUSIONS, f"feature_exclusions/{TARGET}_exclusions.yaml", "yaml"),
        (ArtifactKind.IMPORTANCES, "feature_importances/lightgbm_importances.csv", "csv"),
        (ArtifactKind.FEATURESETS, "featureset_artifacts/featureset_post_prune.json", "json"),
        (ArtifactKind.OOF, "oof/oof_predictions.parquet", "parquet_truncated"),
        (ArtifactKind.OOF, "oof/oof_predictions.parquet", "parquet_foreign"),
        (ArtifactKind.EVALUATION, "evaluation/evaluation.json", "json"),
    ],
)
def test_the_io_manager_load_names_a_corrupt_file(tree, tmp_path, kind, relpath, corruption):
    from dagster import AssetKey, DagsterInstance, build_input_context, build_output_context

    from cohortflow_dagster.io_managers.canonical_store import CanonicalStoreIOManager
    from cohortflow_dagster.io_managers.keys import KIND_KEY
    from cohortflow_dagster.partitions import attempt_key, attempt_partitions

    root = _copy(tree, tmp_path)
    stage = {
        ArtifactKind.EXCLUSIONS: "TARGET_RANKING",
        ArtifactKind.IMPORTANCES: "FEATURE_SELECTION",
        ArtifactKind.FEATURESETS: "FEATURE_SELECTION",
    }.get(kind, "TRAINING")
    path = _attempt(root, tree["batch"], stage) / relpath
    _corrupt(path, corruption)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("universe_batch", [tree["batch"]])
    instance.add_dynamic_partitions("attempt", ["0"])
    key = AssetKey([TARGET, kind.value])
    context = build_input_context(
        asset_key=key,
        upstream_output=build_output_context(
            asset_key=key, definition_metadata={KIND_KEY: kind.value}
        ),
        partition_key=str(attempt_key(tree["batch"], 0)),
        asset_partitions_def=attempt_partitions,
        instance=instance,
    )
    with pytest.raises(CorruptFileError) as caught:
        CanonicalStoreIOManager(root=str(root)).load_input(context)
    message = str(caught.value)
    assert "\n" not in message
    assert re.fullmatch(rf"{re.escape(str(path))}: {MALFORMED[corruption][1]}", message), message


# --------------------------------------------------------------------------- reindex
def test_reindex_skips_and_reports_a_bad_cohort(tree, tmp_path, capsys):
    root = _copy(tree, tmp_path)
    before = len(CohortIndex(root).list())
    cohort = _cohort(root, tree["batch"], "TARGET_RANKING")
    _corrupt(cohort / "metadata.json", "json")
    (root / "_index" / "cohorts.sqlite").write_bytes(b"garbage, not a database")
    assert main(["reindex", "--root", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    skipped = [ln for ln in out if ln.startswith("skipped: ")]
    assert len(skipped) == 1
    assert re.fullmatch(
        rf"skipped: {re.escape(str(cohort / 'metadata.json'))}: {MALFORMED['json'][1]}", skipped[0]
    )
    assert out[-1] == f"indexed {before - 1} cohorts under {root}; skipped 1"
    # the damaged index was kept aside, not deleted
    assert list((root / "_index").glob("cohorts.sqlite.corrupt-*"))


# --------------------------------------------------------------------------- verify
def test_verify_names_a_flipped_byte_and_a_deleted_file(tree, tmp_path, capsys):
    root = _copy(tree, tmp_path)
    assert main(["verify", "--root", str(root)]) == 0
    assert "every file matches its seal" in capsys.readouterr().out
    training = _attempt(root, tree["batch"], "TRAINING")
    flipped = training / "stacking" / "lightgbm.txt"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    deleted = training / "oof" / "fold_plan.json"
    deleted.unlink()
    assert main(["verify", "--root", str(root), "--batch", tree["batch"]]) == 1
    out = capsys.readouterr().out.splitlines()
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    assert any(ln.startswith(f"changed: {rel(flipped)} (sha256 ") for ln in out), out
    assert any(ln.startswith(f"missing: {rel(deleted)} (sha256 ") for ln in out), out
    assert out[-1].endswith("problem(s)")
