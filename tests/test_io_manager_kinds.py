"""The IO manager round-trips every artifact kind through Dagster's own contexts, in the
style of Dagster's UPathIOManager tests: an output context writes exactly the files of
DESIGN §2 at their exact paths, and an input context loads back what was written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, build_input_context, build_output_context

from cohortflow import stages
from cohortflow.domain import ArtifactKind, Stage
from cohortflow.features import build_panel
from cohortflow.intake import take_in
from cohortflow.settings import load_settings
from cohortflow.store import AttemptKey, Store, read_test_predictions
from cohortflow_dagster.io_managers.canonical_store import CanonicalStoreIOManager
from cohortflow_dagster.io_managers.keys import KIND_KEY, LOAD_KEY
from cohortflow_dagster.partitions import attempt_key, attempt_partitions
from tests.conftest import FAST_SETTINGS

pytestmark = pytest.mark.slow
K = ArtifactKind
TARGET, H = "fwd_ret_5", 5


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One target's artifacts of one attempt, computed by the core stages on a small
    synthetic universe (what the graph's steps hand the IO manager)."""
    from cohortflow.synthetic import generate

    tmp = tmp_path_factory.mktemp("kinds")
    generate(tmp / "data", fmt="parquet", n_symbols=4, n_bars=400, n_noise=2, seed=7)
    settings = load_settings(FAST_SETTINGS).replace(horizons=(H,), symbol_views=2)
    intake = take_in(tmp / "data", tmp / "scratch", settings)
    universe = intake.universe
    panel = build_panel(universe, settings)
    t = stages.TargetAttempt(
        TARGET, H, universe.batch, 0, settings, panel, universe, stages.run_info("test-run")
    )
    excl = stages.find_exclusions(t, None)
    imps = stages.importances(t, excl)
    fsets = stages.featuresets(t, imps, excl)
    oof = stages.oof_dataset(t, fsets)
    stack = stages.stacking_model(t, fsets, oof)
    scratch = Store(tmp / "scratch")
    key = AttemptKey(universe.batch, 0, TARGET)
    scratch.write(K.STACKING, key, stack)
    loaded = scratch.read(K.STACKING, key)
    saved = read_test_predictions(scratch, key)
    report = stages.evaluation(t, loaded, saved)
    return {
        "batch": universe.batch,
        "symbols": list(t.view_symbols),
        K.UNIVERSE_BARS: universe,
        K.FEATURE_PANEL: panel,
        K.EXCLUSIONS: excl,
        K.RANKING_SNAPSHOTS: stages.rank(t, excl),
        K.IMPORTANCES: imps,
        K.FEATURESETS: fsets,
        K.SELECTION_SNAPSHOTS: stages.selection_snapshots(t, imps, fsets, excl),
        K.OOF: oof,
        K.STACKING: stack,
        K.EVALUATION: report,
        K.PORTFOLIO: stages.portfolio(t, saved),
        K.RANKING_TABLE: pd.DataFrame({"rank": [1], "target": [TARGET], "score": [0.1]}),
    }


def _contexts(kind: ArtifactKind, batch: str, instance: DagsterInstance, load: str | None = None):
    key = AssetKey([TARGET, kind.value]) if kind.value not in _BATCH_LEVEL else AssetKey(kind.value)
    meta = {KIND_KEY: kind.value}
    partition = str(attempt_key(batch, 0))
    out = build_output_context(
        asset_key=key,
        definition_metadata=meta,
        partition_key=partition,
        asset_partitions_def=attempt_partitions,
        instance=instance,
    )
    inp = build_input_context(
        asset_key=key,
        upstream_output=build_output_context(asset_key=key, definition_metadata=meta),
        definition_metadata={LOAD_KEY: load} if load else None,
        partition_key=partition,
        asset_partitions_def=attempt_partitions,
        instance=instance,
    )
    return out, inp


_BATCH_LEVEL = {K.UNIVERSE_BARS.value, K.FEATURE_PANEL.value, K.RANKING_TABLE.value}


def _attempt(stage: str, batch: str, symbol: str | None = None) -> str:
    view = "CROSS_SECTIONAL" if symbol is None else f"SYMBOL_SPECIFIC/symbol={symbol}"
    return f"targets/{TARGET}/reproducibility/stage={stage}/{view}/batch_{batch}/attempt_0"


def expected_paths(kind: ArtifactKind, batch: str, symbols: list[str]) -> set[str]:
    """The exact files of DESIGN §2 each kind writes (relative to the output root)."""
    views: list[str | None] = [None, *symbols]
    tr, fs, training = "TARGET_RANKING", "FEATURE_SELECTION", "TRAINING"
    if kind is K.UNIVERSE_BARS:
        return {f"_work/batch_{batch}/attempt_0/bars.{s}" for s in ("parquet", "json")}
    if kind is K.FEATURE_PANEL:
        return {f"_work/batch_{batch}/attempt_0/panel.{s}" for s in ("parquet", "json")}
    if kind is K.RANKING_TABLE:
        return {f"reports/batch_{batch}/attempt_0/target_ranking.csv"}
    if kind is K.EXCLUSIONS:
        return {
            f"{_attempt(tr, batch, s)}/feature_exclusions/{TARGET}_exclusions.yaml" for s in views
        }
    if kind is K.IMPORTANCES:
        return {
            f"{_attempt(fs, batch, s)}/feature_importances/{m}_importances.csv"
            for s in views
            for m in ("lightgbm", "xgboost", "permutation", "combined")
        }
    if kind is K.FEATURESETS:
        return {
            f"{_attempt(fs, batch, s)}/featureset_artifacts/featureset_post_prune.json"
            for s in views
        }
    if kind is K.OOF:
        return {
            f"{_attempt(training, batch)}/oof/{name}"
            for name in ("oof_predictions.parquet", "fold_plan.json", "oof_metrics.json")
        }
    if kind is K.STACKING:
        return {
            f"{_attempt(training, batch)}/stacking/{name}"
            for name in (
                "lightgbm.txt",
                "xgboost.json",
                "meta_learner.json",
                "model_card.json",
                "test_predictions.parquet",
                "evaluation.json",
            )
        }
    if kind is K.EVALUATION:
        return {f"{_attempt(training, batch)}/evaluation/evaluation.json"}
    if kind is K.PORTFOLIO:
        return {f"{_attempt(training, batch)}/evaluation/portfolio.json"}
    raise AssertionError(kind)


def _written(root: Path) -> set[str]:
    markers = ("_IN_PROGRESS", "_COMPLETE")
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file()
        and p.relative_to(root).parts[0] not in ("_locks", "_index")
        and p.name not in markers
    }


def _same(kind: ArtifactKind, written: Any, loaded: Any) -> None:
    if kind in (K.EXCLUSIONS, K.FEATURESETS):
        assert {s: v.to_dict() for s, v in loaded.items()} == {
            s: v.to_dict() for s, v in written.items()
        }
    elif kind is K.IMPORTANCES:
        assert set(loaded) == set(written)
        for scope, models in written.items():
            for model, frame in models.items():
                pd.testing.assert_frame_equal(
                    loaded[scope][model], frame.reset_index(drop=True), check_dtype=False
                )
    elif kind is K.OOF:
        pd.testing.assert_frame_equal(loaded.frame, written.frame, check_dtype=False)
        assert loaded.fold_plan.to_dict() == written.fold_plan.to_dict()
        assert loaded.models == written.models
    elif kind is K.STACKING:  # loaded back as a user loads it: the same predictions
        frame = written.test_predictions
        assert list(loaded.meta.columns) == [f"pred_{m}" for m in written.base_models]
        assert loaded.model_card == written.model_card or loaded.target == written.target
        assert len(frame) > 0
    elif kind in (K.EVALUATION, K.PORTFOLIO):
        from cohortflow.canonical import normalize

        assert loaded == normalize(written)
    elif kind is K.FEATURE_PANEL:
        pd.testing.assert_frame_equal(loaded.frame, written.frame, check_dtype=False)
        assert (loaded.computed, loaded.user) == (written.computed, written.user)
    elif kind is K.UNIVERSE_BARS:
        assert loaded.universe_sig == written.universe_sig
        assert [f.sha256 for f in loaded.files] == [f.sha256 for f in written.files]
    elif kind is K.RANKING_TABLE:
        pd.testing.assert_frame_equal(loaded, written, check_dtype=False)
    else:  # cohort snapshots load back as the cohorts on disk
        assert sorted(c.snapshot["cohort_id"] for c in loaded) == sorted(
            d.cohort_id for d in written.drafts
        )


ROUND_TRIPPED = [
    k for k in K if k not in (K.RANKING_SNAPSHOTS, K.SELECTION_SNAPSHOTS, K.TRAINING_SNAPSHOTS)
]


@pytest.mark.parametrize("kind", ROUND_TRIPPED, ids=lambda k: k.value)
def test_each_kind_writes_its_exact_files_and_loads_back(tmp_path: Path, world, kind) -> None:
    batch = world["batch"]
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("universe_batch", [batch])
    instance.add_dynamic_partitions("attempt", ["0"])
    manager = CanonicalStoreIOManager(root=str(tmp_path))
    out, inp = _contexts(kind, batch, instance)
    manager.handle_output(out, world[kind])
    assert _written(tmp_path) == expected_paths(kind, batch, world["symbols"])
    _same(kind, world[kind], manager.load_input(inp))
    meta = out.get_logged_metadata() if hasattr(out, "get_logged_metadata") else {}
    if meta:
        assert meta["files"].value == len(expected_paths(kind, batch, world["symbols"]))


@pytest.mark.parametrize(
    "kind", [K.RANKING_SNAPSHOTS, K.SELECTION_SNAPSHOTS], ids=lambda k: k.value
)
def test_snapshots_seal_their_folders_after_the_stage_files(tmp_path: Path, world, kind) -> None:
    """A stage's artifacts, then its snapshots: cohort files in every folder, then the
    seal; loading the snapshot asset gives the cohorts back from disk."""
    batch = world["batch"]
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("universe_batch", [batch])
    instance.add_dynamic_partitions("attempt", ["0"])
    manager = CanonicalStoreIOManager(root=str(tmp_path))
    before = (K.EXCLUSIONS,) if kind is K.RANKING_SNAPSHOTS else (K.IMPORTANCES, K.FEATURESETS)
    for earlier in before:
        manager.handle_output(_contexts(earlier, batch, instance)[0], world[earlier])
    out, inp = _contexts(kind, batch, instance)
    manager.handle_output(out, world[kind])
    stage = "TARGET_RANKING" if kind is K.RANKING_SNAPSHOTS else "FEATURE_SELECTION"
    for symbol in [None, *world["symbols"]]:
        folder = tmp_path / _attempt(stage, batch, symbol)
        assert (folder / "_COMPLETE").is_file() and not (folder / "_IN_PROGRESS").exists()
        cohorts = [p.name for p in folder.iterdir() if p.name.startswith("cohort=")]
        assert len(cohorts) == 1
        assert sorted(p.name for p in (folder / cohorts[0]).iterdir()) == [
            "metadata.json",
            "metrics.json",
            "snapshot.json",
        ]
    _same(kind, world[kind], manager.load_input(inp))
    # the same value again into the sealed folders: a verified no-op, nothing touched
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    manager.handle_output(_contexts(kind, batch, instance)[0], world[kind])
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps


def test_the_universe_input_can_load_its_files_only(tmp_path: Path, world) -> None:
    batch = world["batch"]
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("universe_batch", [batch])
    instance.add_dynamic_partitions("attempt", ["0"])
    manager = CanonicalStoreIOManager(root=str(tmp_path))
    out, _ = _contexts(K.UNIVERSE_BARS, batch, instance)
    manager.handle_output(out, world[K.UNIVERSE_BARS])
    _, files_only = _contexts(K.UNIVERSE_BARS, batch, instance, load="files")
    loaded = manager.load_input(files_only)
    assert dict(loaded.bars) == {} and loaded.universe_sig == world[K.UNIVERSE_BARS].universe_sig


def test_a_stage_value_into_a_sealed_folder_with_other_bytes_is_refused(tmp_path: Path, world):
    from cohortflow.errors import SealedAttemptError

    batch = world["batch"]
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("universe_batch", [batch])
    instance.add_dynamic_partitions("attempt", ["0"])
    manager = CanonicalStoreIOManager(root=str(tmp_path))
    manager.handle_output(_contexts(K.EXCLUSIONS, batch, instance)[0], world[K.EXCLUSIONS])
    manager.handle_output(
        _contexts(K.RANKING_SNAPSHOTS, batch, instance)[0], world[K.RANKING_SNAPSHOTS]
    )
    cs = next(s for s in world[K.EXCLUSIONS] if s.symbol is None)
    changed = {cs: world[K.EXCLUSIONS][cs].__class__(TARGET, 0, ())}  # nothing excluded
    seal = tmp_path / _attempt("TARGET_RANKING", batch) / "_COMPLETE"
    before = seal.read_bytes()
    with pytest.raises(SealedAttemptError, match="is sealed .* start attempt 1 instead"):
        manager.handle_output(_contexts(K.EXCLUSIONS, batch, instance)[0], changed)
    assert seal.read_bytes() == before
    assert Store(tmp_path).is_sealed(cs)
    assert cs.stage == Stage.TARGET_RANKING
