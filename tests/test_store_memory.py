"""The store and the IO manager on a ``memory://`` root (fsspec's in-process filesystem):
the whole graph materializes there, every artifact lands at its exact canonical path, the
index is the JSON-lines file (no SQLite), the registry and the locks leave no trace, and
the IO manager round-trips a value through Dagster's output and input contexts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from upath import UPath

PROJECT = Path(__file__).resolve().parent.parent
FAST = PROJECT / "config" / "fast.yaml"
ROOT = "memory://cf-test"
TARGETS = ("fwd_ret_5", "fwd_ret_10")


@dataclass(frozen=True)
class Materialized:
    batch: str
    symbols: tuple[str, ...]
    data_dir: Path
    seconds: float


def _wipe() -> None:
    root = UPath(ROOT)
    if root.exists():
        root.fs.rm(root.path, recursive=True)


@pytest.fixture(scope="module")
def materialized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Materialized]:
    from dagster import DagsterInstance, materialize

    from cohortflow.intake import take_in
    from cohortflow.settings import load_settings
    from cohortflow.synthetic import generate
    from cohortflow_dagster.assets import build_assets
    from cohortflow_dagster.io_managers.canonical_store import CanonicalStoreIOManager
    from cohortflow_dagster.partitions import attempt_key
    from cohortflow_dagster.resources.cohortflow import CohortflowResource

    _wipe()
    data = tmp_path_factory.mktemp("memory") / "data"
    generate(data, fmt="parquet", n_symbols=3, n_bars=260, n_noise=2, seed=4)
    settings = load_settings(FAST)
    intake = take_in(data, ROOT, settings)
    batch = intake.record.batch
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("universe_batch", [batch])
    instance.add_dynamic_partitions("attempt", ["0"])
    t0 = time.perf_counter()
    result = materialize(
        build_assets(settings),
        partition_key=attempt_key(batch, 0),
        resources={
            "io_manager": CanonicalStoreIOManager(root=ROOT),
            "cohortflow": CohortflowResource(
                data_dir=str(data), output_root=ROOT, settings_path=str(FAST)
            ),
        },
        instance=instance,
        raise_on_error=False,
    )
    seconds = time.perf_counter() - t0
    failures = [
        e.event_specific_data.error.message
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    ]
    assert result.success, failures
    yield Materialized(batch, tuple(intake.universe.symbols), data, seconds)
    _wipe()


def attempt(stage: str, target: str, batch: str, symbol: str | None = None, n: int = 0) -> str:
    view = "CROSS_SECTIONAL" if symbol is None else f"SYMBOL_SPECIFIC/symbol={symbol}"
    return f"targets/{target}/reproducibility/stage={stage}/{view}/batch_{batch}/attempt_{n}"


def cohort_of(folder: UPath) -> str:
    ids = [p.name for p in folder.iterdir() if p.name.startswith("cohort=")]
    assert len(ids) == 1, ids
    return ids[0]


@pytest.mark.slow
def test_every_artifact_lands_at_its_exact_memory_path(materialized: Materialized) -> None:
    print(f"\nwhole graph on {ROOT}: {materialized.seconds:.1f} s")
    b = materialized.batch
    root = UPath(ROOT)
    expected = [
        f"_registry/batch_{b}.json",
        f"_work/batch_{b}/attempt_0/bars.parquet",
        f"_work/batch_{b}/attempt_0/bars.json",
        f"_work/batch_{b}/attempt_0/panel.parquet",
        f"_work/batch_{b}/attempt_0/panel.json",
        f"reports/batch_{b}/attempt_0/target_ranking.csv",
        "_index/cohorts.jsonl",
    ]
    for target in TARGETS:
        for symbol in (None, *materialized.symbols):
            tr = attempt("TARGET_RANKING", target, b, symbol)
            expected += [
                f"{tr}/feature_exclusions/{target}_exclusions.yaml",
                f"{tr}/feature_importances/lightgbm_importances.csv",
                f"{tr}/fold_plan.json",
                f"{tr}/_COMPLETE",
            ]
            fs = attempt("FEATURE_SELECTION", target, b, symbol)
            expected += [
                f"{fs}/feature_importances/{m}_importances.csv"
                for m in ("lightgbm", "xgboost", "permutation", "combined")
            ]
            expected += [f"{fs}/featureset_artifacts/featureset_post_prune.json", f"{fs}/_COMPLETE"]
            for folder in (tr, fs):
                cohort = cohort_of(root / folder)
                expected += [
                    f"{folder}/{cohort}/{name}"
                    for name in ("metadata.json", "metrics.json", "snapshot.json")
                ]
        training = attempt("TRAINING", target, b)
        expected += [
            f"{training}/oof/oof_predictions.parquet",
            f"{training}/oof/fold_plan.json",
            f"{training}/evaluation/evaluation.json",
            *(
                f"{training}/stacking/{n}"
                for n in ("lightgbm.txt", "xgboost.json", "meta_learner.json", "model_card.json")
            ),
            f"{training}/{cohort_of(root / training)}/snapshot.json",
            f"{training}/_COMPLETE",
        ]
    missing = [rel for rel in expected if not UPath(f"{ROOT}/{rel}").is_file()]
    assert missing == []
    # the exclusions file at its exact path, read straight from the memory filesystem
    exclusions = UPath(
        f"{ROOT}/{attempt('TARGET_RANKING', 'fwd_ret_10', b)}/feature_exclusions/fwd_ret_10_exclusions.yaml"
    )
    assert "leak_future" in exclusions.read_text()
    # bookkeeping of local roots has no place here: no SQLite index, no lock files
    assert not UPath(f"{ROOT}/_index/cohorts.sqlite").exists()
    assert not UPath(f"{ROOT}/_locks").exists()
    # and nothing leaked onto the local disk under a path named after the URL
    assert not (PROJECT / "memory:").exists() and not Path("memory:").exists()


@pytest.mark.slow
def test_readers_and_manifests_work_on_the_memory_root(materialized: Materialized) -> None:
    from cohortflow.domain import ArtifactKind
    from cohortflow.index import CohortIndex, find_cohort
    from cohortflow.layout import Scope, latest_complete_attempt, walk_cohorts
    from cohortflow.loader import load_stacking_data
    from cohortflow.store import AttemptKey, Store
    from cohortflow.verify import verify_folder

    b = materialized.batch
    store = Store(ROOT)
    for target in TARGETS:
        for stage in ("TARGET_RANKING", "FEATURE_SELECTION", "TRAINING"):
            symbols = (None,) if stage == "TRAINING" else (None, *materialized.symbols)
            for symbol in symbols:
                view = "CROSS_SECTIONAL" if symbol is None else "SYMBOL_SPECIFIC"
                assert verify_folder(store, Scope(target, stage, view, b, 0, symbol)) == []
    walked = list(walk_cohorts(ROOT))
    indexed = CohortIndex(ROOT).list()
    # 2 targets × (TR: 1 + 3, FS: 1 + 3, TRAINING: 1)
    assert len(walked) == len(indexed) == 18
    assert sorted(r.path for r in walked) == sorted(r.path for r in indexed)
    assert latest_complete_attempt(ROOT, b) == 0
    record = find_cohort(ROOT, walked[0].cohort_id)
    assert record.path == walked[0].path
    stacking = load_stacking_data(ROOT, b, 0, "fwd_ret_10")
    assert len(stacking.frame) > 0 and {"y_true", "pred_lightgbm", "pred_xgboost"} <= set(
        stacking.frame.columns
    )
    # the stack loads back from memory (native formats only, from their bytes)
    stack = store.read(ArtifactKind.STACKING, AttemptKey(b, 0, "fwd_ret_10"))
    assert set(stack.base_models) >= {"lightgbm", "xgboost"} and stack.target == "fwd_ret_10"


@pytest.mark.slow
def test_io_manager_round_trip_through_dagster_contexts(materialized: Materialized) -> None:
    from dagster import AssetKey, DagsterInstance, build_input_context, build_output_context

    from cohortflow.store import Store
    from cohortflow_dagster.io_managers.canonical_store import CanonicalStoreIOManager
    from cohortflow_dagster.partitions import attempt_key, attempt_partitions

    b = materialized.batch
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("universe_batch", [b])
    instance.add_dynamic_partitions("attempt", ["0", "5"])
    manager = CanonicalStoreIOManager(root=ROOT)
    from cohortflow.domain import ArtifactKind
    from cohortflow.store import AttemptKey

    value = Store(ROOT).read(ArtifactKind.FEATURESETS, AttemptKey(b, 0, "fwd_ret_10"))
    # written to attempt 5 through the IO manager, as Dagster would hand it over
    key = AssetKey(["fwd_ret_10", "featureset"])
    moved = {
        type(scope)(scope.target, scope.stage, scope.view, scope.batch, 5, scope.symbol): fs
        for scope, fs in value.items()
    }
    meta = {"cohortflow/kind": "featureset"}
    out_ctx = build_output_context(
        asset_key=key,
        definition_metadata=meta,
        partition_key=str(attempt_key(b, 5)),
        asset_partitions_def=attempt_partitions,
        instance=instance,
    )
    manager.handle_output(out_ctx, moved)
    path = UPath(
        f"{ROOT}/{attempt('FEATURE_SELECTION', 'fwd_ret_10', b, n=5)}/featureset_artifacts/featureset_post_prune.json"
    )
    assert path.is_file()
    cs = next(fs for scope, fs in value.items() if scope.view == "CROSS_SECTIONAL")
    assert json.loads(path.read_text())["features"] == list(cs.kept)

    in_ctx = build_input_context(
        asset_key=key,
        upstream_output=build_output_context(asset_key=key, definition_metadata=meta),
        partition_key=str(attempt_key(b, 5)),
        asset_partitions_def=attempt_partitions,
        instance=instance,
    )
    loaded = manager.load_input(in_ctx)
    assert {s: fs.to_dict() for s, fs in loaded.items()} == {
        s: fs.to_dict() for s, fs in moved.items()
    }
