"""The whole graph on a synthetic universe with known truth (``cli.runner.run_universe``).

8 symbols × 900 bars (5 folds), horizons 5 and 10 (the planted signal horizon is 10). Attempt 0
must find both planted leaks, attempt 1 must find none and be the last; the planted
signals survive selection, the noise mostly does not, fwd_ret_10 ranks first, and every
attempt folder holds exactly the files of DESIGN §2 with consistent snapshots.

Data size and seed: with the fast settings (3 folds, one permutation repeat) the weaker
signal ``sig_b`` (pooled IC 0.12) clears the permutation t-stat rule in about 6 of 10
seeds at this size; seed 1 is one of them, and the graph is deterministic, so the
outcome is fixed. The ``future`` name rule is left out of the settings so that the data
tests (not the name) must catch ``leak_future``: both leaks then carry numeric evidence.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

PROJECT = Path(__file__).resolve().parent.parent
FAST = PROJECT / "config" / "fast.yaml"
TARGETS = ("fwd_ret_5", "fwd_ret_10")
T10 = "fwd_ret_10"
STAGES = ("TARGET_RANKING", "FEATURE_SELECTION", "TRAINING")
LEAKS = ("leak_centered", "leak_future")
COHORT_DOCS = ("metadata.json", "metrics.json", "snapshot.json")
PREV_DOCS = ("diff_prev.json", "drift.json")
# The run's Dagster event log in memory: the SQLite event log of a DAGSTER_HOME costs
# half to three quarters of the wall time of a small run on this shared disk.
IN_MEMORY_HOME = (
    "telemetry:\n  enabled: false\n"
    "event_log_storage:\n  module: dagster._core.storage.event_log\n"
    "  class: InMemoryEventLogStorage\n"
)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Pipeline:
    root: Path
    batch: str
    truth: object
    result: object
    seconds: float


def write_settings(path: Path, **changes: object) -> Path:
    """fast.yaml with ``changes`` applied."""
    raw = yaml.safe_load(FAST.read_text())
    raw.update(changes)
    path.write_text(yaml.safe_dump(raw, sort_keys=True))
    return path


def in_memory_dagster_home(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text(IN_MEMORY_HOME)
    return path


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    from cohortflow.synthetic import generate
    from cohortflow_dagster.cli.runner import run_universe

    base = tmp_path_factory.mktemp("pipeline")
    truth = generate(base / "data", fmt="parquet", n_symbols=8, n_bars=900, n_noise=4, seed=1)
    settings = write_settings(
        base / "settings.yaml",
        name_rules=["fwd_", "target", "label"],
        n_splits=5,
        permutation_repeats=2,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(in_memory_dagster_home(base / "dagster_home")))
        t0 = time.perf_counter()
        result = run_universe(str(base / "data"), str(base / "out"), str(settings))
        seconds = time.perf_counter() - t0
    yield Pipeline(base / "out", result.intake.record.batch, truth, result, seconds)


# --------------------------------------------------------------------------- helpers
def view_dirs(root: Path, target: str, stage: str) -> list[Path]:
    """The view folders holding batch folders: CROSS_SECTIONAL and each symbol= folder."""
    base = root / "targets" / target / "reproducibility" / f"stage={stage}"
    out = [base / "CROSS_SECTIONAL"] if (base / "CROSS_SECTIONAL").is_dir() else []
    sy = base / "SYMBOL_SPECIFIC"
    if sy.is_dir():
        out += sorted(p for p in sy.iterdir() if p.name.startswith("symbol="))
    return out


def attempt_dir(
    root: Path, target: str, stage: str, batch: str, attempt: int, symbol: str | None = None
) -> Path:
    base = root / "targets" / target / "reproducibility" / f"stage={stage}"
    view = (
        base / "CROSS_SECTIONAL"
        if symbol is None
        else base / "SYMBOL_SPECIFIC" / f"symbol={symbol}"
    )
    return view / f"batch_{batch}" / f"attempt_{attempt}"


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def only_cohort(folder: Path) -> str:
    ids = [p.name[len("cohort=") :] for p in folder.iterdir() if p.name.startswith("cohort=")]
    assert len(ids) == 1, f"{folder}: expected one cohort folder, found {ids}"
    return ids[0]


def manifest_sha256(folder: Path) -> str:
    """DESIGN §3, recomputed here: sha256 over sorted ``relpath\\0size\\0sha256\\n`` records
    of the attempt's files, without cohort folders and the completion marker."""
    records = []
    for rel in sorted(files_under(folder)):
        if rel.split("/")[0].startswith("cohort=") or rel == "_COMPLETE":
            continue
        data = (folder / rel).read_bytes()
        records.append(f"{rel}\0{len(data)}\0{hashlib.sha256(data).hexdigest()}\n")
    return hashlib.sha256("".join(records).encode()).hexdigest()


def expected_files(target: str, stage: str, cohort: str, attempt: int) -> set[str]:
    """The exact files of one attempt folder (either view) per DESIGN §2 and §3."""
    docs = COHORT_DOCS + (PREV_DOCS if attempt > 0 else ())
    out = {f"cohort={cohort}/{name}" for name in docs} | {"_COMPLETE"}
    if stage == "TARGET_RANKING":
        out |= {
            f"feature_exclusions/{target}_exclusions.yaml",
            "feature_importances/lightgbm_importances.csv",
            "fold_plan.json",
            # the features the ranking saw, after the inherited exclusions (as the reference)
            "featureset_artifacts/featureset_post_prune.json",
        }
    elif stage == "FEATURE_SELECTION":
        out |= {
            f"feature_importances/{m}_importances.csv"
            for m in ("lightgbm", "xgboost", "permutation", "combined")
        }
        out |= {"featureset_artifacts/featureset_post_prune.json"}
    else:
        out |= {"oof/oof_predictions.parquet", "oof/fold_plan.json", "oof/oof_metrics.json"}
        out |= {"evaluation/evaluation.json", "evaluation/portfolio.json"}
        out |= {
            f"stacking/{name}"
            for name in (
                "lightgbm.txt",
                "xgboost.json",
                "meta_learner.json",
                "model_card.json",
                "test_predictions.parquet",
                "evaluation.json",
            )
        }
    return out


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- leaks
def test_attempt0_exclusions_list_both_planted_leaks_with_numeric_evidence(
    pipeline: Pipeline,
) -> None:
    print(f"\nwhole graph, 2 attempts: {pipeline.seconds:.1f} s")
    path = (
        pipeline.root
        / f"targets/{T10}/reproducibility/stage=TARGET_RANKING/CROSS_SECTIONAL/batch_{pipeline.batch}"
        / "attempt_0/feature_exclusions/fwd_ret_10_exclusions.yaml"
    )
    doc = read_yaml(path)
    assert doc["attempt"] == 0 and doc["target"] == T10
    assert doc["found_in_this_attempt"] == list(LEAKS)
    entries = {e["feature"]: e for e in doc["excluded"]}
    assert set(entries) == set(LEAKS)
    for name in LEAKS:
        entry = entries[name]
        assert entry["attempt"] == 0
        assert entry["symbols"] == []  # pooled: every symbol
        # user columns cannot be recomputed, so the dominance test is what must catch them
        assert entry["reason"] == "dominance"
        evidence = entry["evidence"]
        assert evidence["threshold"] == pytest.approx(0.3)
        assert abs(evidence["rank_ic"]) > evidence["threshold"]
        assert evidence["rows"] > 2000 and evidence["folds"] == 5
    # the planted leaks are far above the honest features (median |rank IC| ~ 0.05)
    assert min(abs(entries[n]["evidence"]["rank_ic"]) for n in LEAKS) > 0.5


def test_attempt1_finds_no_leak_and_is_the_last(pipeline: Pipeline) -> None:
    assert [a.attempt for a in pipeline.result.attempts] == [0, 1]
    assert pipeline.result.attempts[1].leaks == {t: [] for t in TARGETS}
    for target in TARGETS:
        folder = attempt_dir(pipeline.root, target, "TARGET_RANKING", pipeline.batch, 1)
        doc = read_yaml(folder / "feature_exclusions" / f"{target}_exclusions.yaml")
        assert doc["found_in_this_attempt"] == []
        assert sorted(e["feature"] for e in doc["excluded"]) == list(LEAKS)
        assert {e["attempt"] for e in doc["excluded"]} == {0}  # inherited from attempt 0
    # no attempt 2 anywhere in the tree
    for target in TARGETS:
        for stage in STAGES:
            for view in view_dirs(pipeline.root, target, stage):
                attempts = sorted(p.name for p in (view / f"batch_{pipeline.batch}").iterdir())
                assert attempts == ["attempt_0", "attempt_1"], view
    assert sorted(
        p.name for p in (pipeline.root / "reports" / f"batch_{pipeline.batch}").iterdir()
    ) == [
        "attempt_0",
        "attempt_1",
    ]


# every check of every asset, per target: no_leaks_remain, importances_schema,
# featureset_schema, oof_schema, native_formats, and three per cohort snapshot
# six of their own (exclusions, importances, featureset, OOF, stack, evaluation), three per
# cohort snapshot, and attempt_sealed on each of the ten assets with a stage folder
CHECKS_PER_TARGET = 6 + 3 * 3 + 10


def test_asset_checks_fail_on_the_leaks_of_attempt0_and_all_pass_in_attempt1(
    pipeline: Pipeline,
) -> None:
    first, second = pipeline.result.attempts
    assert len(first.checks) == len(second.checks) == CHECKS_PER_TARGET * len(TARGETS)
    assert len({(c.asset, c.check) for c in first.checks}) == len(first.checks)
    failed = [c for c in first.checks if not c.passed]
    assert sorted((c.asset, c.check) for c in failed) == [
        (f"{t}/feature_exclusions", "no_leaks_remain") for t in sorted(TARGETS)
    ]
    for c in failed:  # the failure names the leaks it found; attempt 1 fixes them: a WARN
        assert all(leak in c.description for leak in LEAKS), c.description
        assert c.severity == "WARN" and "attempt 1 runs without them" in c.description
    assert [c.line() for c in second.checks if not c.passed] == []
    # the second attempt's snapshots were compared with the first's
    assert {c.check for c in second.checks} >= {"manifest_integrity", "comparable_with_previous"}


# --------------------------------------------------------------------------- selection, ranking
def test_attempt1_featureset_keeps_the_signals_and_prunes_the_noise(pipeline: Pipeline) -> None:
    truth = pipeline.truth
    path = (
        pipeline.root
        / f"targets/{T10}/reproducibility/stage=FEATURE_SELECTION/CROSS_SECTIONAL/batch_{pipeline.batch}"
        / "attempt_1/featureset_artifacts/featureset_post_prune.json"
    )
    doc = read_json(path)
    kept = doc["features"]
    assert set(truth.signal_features) <= set(kept), kept
    assert not set(LEAKS) & set(kept)
    noise_kept = [f for f in truth.noise_features if f in kept]
    assert len(noise_kept) <= len(truth.noise_features) // 4, noise_kept  # at most 1 of 4
    dropped = {d["feature"] for d in doc["dropped"]}
    assert set(truth.noise_features) - set(noise_kept) <= dropped
    assert doc["n_kept"] == len(kept) and doc["view"] == "CROSS_SECTIONAL" and doc["target"] == T10


def test_the_planted_horizon_ranks_first(pipeline: Pipeline) -> None:
    path = (
        pipeline.root / "reports" / f"batch_{pipeline.batch}" / "attempt_1" / "target_ranking.csv"
    )
    table = pd.read_csv(path)
    assert table["target"].tolist() == [T10, "fwd_ret_5"]
    assert table["rank"].tolist() == [1, 2]
    assert table["score"].iloc[0] > table["score"].iloc[1]
    assert pipeline.result.ranking["target"].iloc[0] == T10


def test_attempt1_training_snapshot_records_the_excluded_leaks(pipeline: Pipeline) -> None:
    folder = attempt_dir(pipeline.root, T10, "TRAINING", pipeline.batch, 1)
    snapshot = read_json(folder / f"cohort={only_cohort(folder)}" / "snapshot.json")
    assert sorted(snapshot["excluded"]) == list(LEAKS)


# --------------------------------------------------------------------------- the tree
def test_attempt_folders_hold_exactly_the_design_files(pipeline: Pipeline) -> None:
    symbols = pipeline.result.intake.universe.symbols
    problems = []
    checked = 0
    for target in TARGETS:
        for stage in STAGES:
            views: list[str | None] = [None] + (
                [symbols[0], symbols[-1]] if stage != "TRAINING" else []
            )
            for symbol in views:
                for attempt in (0, 1):
                    folder = attempt_dir(
                        pipeline.root, target, stage, pipeline.batch, attempt, symbol
                    )
                    want = expected_files(target, stage, only_cohort(folder), attempt)
                    got = files_under(folder)
                    if got != want:
                        problems.append(
                            f"{folder}: extra {sorted(got - want)}, missing {sorted(want - got)}"
                        )
                    checked += 1
        # the training stage has no symbol view
        assert not (
            pipeline.root / f"targets/{target}/reproducibility/stage=TRAINING/SYMBOL_SPECIFIC"
        ).exists()
    assert not problems, "\n".join(problems)
    assert checked == len(TARGETS) * (3 + 3 + 1) * 2


def test_snapshots_agree_with_metrics_and_the_files_on_disk(pipeline: Pipeline) -> None:
    count = 0
    for target in TARGETS:
        for stage in STAGES:
            for view in view_dirs(pipeline.root, target, stage):
                for attempt in (0, 1):
                    folder = view / f"batch_{pipeline.batch}" / f"attempt_{attempt}"
                    cohort = folder / f"cohort={only_cohort(folder)}"
                    snapshot = read_json(cohort / "snapshot.json")
                    metrics = read_json(cohort / "metrics.json")
                    assert (
                        snapshot["scoring_schema_version"] == metrics["schema"]["scoring"] == "1.2"
                    )
                    recorded = snapshot["artifacts_manifest_sha256"]
                    assert recorded is not None
                    assert recorded == manifest_sha256(folder), folder
                    assert read_json(folder / "_COMPLETE")["artifacts_manifest_sha256"] == recorded
                    metadata = read_json(cohort / "metadata.json")
                    assert metadata["cohort_id"] == snapshot["cohort_id"] == only_cohort(folder)
                    assert metadata["attempt"] == attempt and metadata["batch"] == pipeline.batch
                    assert set(metadata["run"]) >= {"dagster_run_id", "finished_at", "host"}
                    count += 1
    assert (
        count == 2 * (2 * (1 + 8) + 1) * 2
    )  # targets x (TR, FS: CS + 8 symbols; TRAINING) x attempts


def test_attempt1_diff_prev_names_its_baseline_and_the_removed_leaks(pipeline: Pipeline) -> None:
    root = pipeline.root
    for target in TARGETS:
        for stage in STAGES:
            for view in view_dirs(root, target, stage):
                old = view / f"batch_{pipeline.batch}" / "attempt_0"
                new = view / f"batch_{pipeline.batch}" / "attempt_1"
                old_cohort = old / f"cohort={only_cohort(old)}"
                diff = read_json(new / f"cohort={only_cohort(new)}" / "diff_prev.json")
                baseline = diff["baseline"]
                assert baseline["path"] == old_cohort.relative_to(root).as_posix()
                assert (
                    baseline["snapshot_sha256"]
                    == hashlib.sha256((old_cohort / "snapshot.json").read_bytes()).hexdigest()
                )
                assert baseline["attempt"] == 0 and baseline["cohort_id"] == only_cohort(old)
                assert diff["verdict"]["comparable"] is True
                drift = read_json(new / f"cohort={only_cohort(new)}" / "drift.json")
                assert drift["baseline"] == only_cohort(old)
    # ranking stage: attempt 0 used every feature, attempt 1 all but the leaks
    for target in TARGETS:
        folder = attempt_dir(root, target, "TARGET_RANKING", pipeline.batch, 1)
        diff = read_json(folder / f"cohort={only_cohort(folder)}" / "diff_prev.json")
        assert diff["features"] == {"added": [], "removed": list(LEAKS)}
        assert diff["exclusions"] == {"added": list(LEAKS), "removed": []}
        assert "featureset changed" in diff["verdict"]["notes"]
    # selection stage: the leaks that attempt 0 kept are gone
    folder = attempt_dir(root, T10, "FEATURE_SELECTION", pipeline.batch, 1)
    diff = read_json(folder / f"cohort={only_cohort(folder)}" / "diff_prev.json")
    assert set(LEAKS) <= set(diff["features"]["removed"])
    assert diff["exclusions"]["added"] == list(LEAKS)


# --------------------------------------------------------------------------- symbol views
def test_every_attempt_folder_completes_when_symbol_views_are_limited(tmp_path: Path) -> None:
    from dagster import DagsterInstance

    from cohortflow.intake import take_in
    from cohortflow.settings import load_settings
    from cohortflow.synthetic import generate
    from cohortflow_dagster.definitions import build_definitions
    from cohortflow_dagster.partitions import attempt_key

    generate(tmp_path / "data", fmt="parquet", n_symbols=3, n_bars=260, n_noise=2, seed=4)
    settings = write_settings(tmp_path / "s.yaml", horizons=[5], symbol_views=1)
    out = tmp_path / "out"
    batch = take_in(tmp_path / "data", out, load_settings(settings)).record.batch
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("universe_batch", [batch])
    instance.add_dynamic_partitions("attempt", ["0"])
    job = build_definitions(str(tmp_path / "data"), str(out), str(settings)).resolve_job_def(
        "cohortflow_job"
    )
    assert job.execute_in_process(partition_key=attempt_key(batch, 0), instance=instance).success
    incomplete = sorted(
        p.relative_to(out).as_posix()
        for p in (out / "targets").rglob("attempt_0")
        if not (p / "_COMPLETE").exists()
    )
    assert incomplete == []


def test_no_temporary_files_remain(pipeline: Pipeline) -> None:
    leftovers = [p for p in pipeline.root.rglob(".tmp-*")]
    assert leftovers == []
    assert os.path.isfile(pipeline.root / "_registry" / f"batch_{pipeline.batch}.json")
