"""A backfill launched the way the Dagster UI launches one: GraphQL against ``dagster dev``.

Three universe batches (4, 3 and 2 of the same 4 synthetic symbols) are registered, their
partitions added, then ``launchPartitionBackfill`` asks for attempt 0 of each batch over
the whole asset graph. The daemon runs the backfill through the run queue; the test waits
until every asset has a materialization for every selected partition, then checks the
canonical tree file by file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dagster_dev import (
    LAUNCH_BACKFILL,
    TEST_OUTPUT,
    DagsterDev,
    add_partitions,
    dagster_dev,
    make_workspace,
    register_batches,
)

SYMBOLS = ("SYN00", "SYN01", "SYN02", "SYN03")
SUBSETS = (SYMBOLS, ("SYN00", "SYN01", "SYN02"), ("SYN00", "SYN02"))
TARGETS = ("fwd_ret_5", "fwd_ret_10")  # config/fast.yaml: horizons [5, 10]
STAGES = ("TARGET_RANKING", "FEATURE_SELECTION", "TRAINING")
DEADLINE_S = 8 * 60
TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


ASSET_KEYS = "query { assetNodes { assetKey { path } } }"

PROGRESS = """
query Progress($backfillId: String!, $partitions: [String!]) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill {
      status
      error { message }
      runs(limit: 100) { runId status tags { key value } }
      assetBackfillData {
        assetBackfillStatuses {
          ... on AssetPartitionsStatusCounts {
            assetKey { path }
            numPartitionsTargeted
            numPartitionsMaterialized
            numPartitionsFailed
          }
        }
      }
    }
    ... on Error { message }
  }
  assetNodes {
    assetKey { path }
    assetMaterializations(partitions: $partitions) { partition runId }
  }
}
"""

STEP_FAILURES = """
query Failures($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run {
      eventConnection(limit: 5000) {
        events {
          __typename
          ... on ExecutionStepFailureEvent { stepKey error { message } }
        }
      }
    }
  }
}
"""


def _expected_asset_keys() -> set[str]:
    """The asset keys of the code location built with the test settings, in-process."""
    from dagster_dev import FAST_SETTINGS

    from cohortflow_dagster.definitions import build_definitions

    defs = build_definitions("unused-data", "unused-output", str(FAST_SETTINGS))
    return {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}


def _missing(progress: dict[str, Any], partitions: list[str]) -> dict[str, list[str]]:
    """Asset -> the selected partitions it has no materialization for yet."""
    out = {}
    for node in progress["assetNodes"]:
        done = {m["partition"] for m in node["assetMaterializations"]}
        left = sorted(set(partitions) - done)
        if left:
            out["/".join(node["assetKey"]["path"])] = left
    return out


def _failures(dev: DagsterDev, runs: list[dict[str, Any]]) -> str:
    lines = []
    for run in runs:
        if run["status"] != "FAILURE":
            continue
        events = dev.graphql(STEP_FAILURES, {"runId": run["runId"]})["runOrError"]
        for e in events["eventConnection"]["events"]:
            if e["__typename"] == "ExecutionStepFailureEvent":
                lines.append(
                    f"run {run['runId'][:8]} {e['stepKey']}: {e['error']['message'][:600]}"
                )
    return "\n".join(lines) or "no step failure recorded"


def _wait_for_backfill(dev: DagsterDev, backfill_id: str, partitions: list[str]) -> dict[str, Any]:
    """Poll until every asset has every partition materialized; the last progress answer."""
    t0 = time.monotonic()
    while True:
        progress = dev.graphql(PROGRESS, {"backfillId": backfill_id, "partitions": partitions})
        backfill = progress["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        missing = _missing(progress, partitions)
        if not missing and backfill["status"] in TERMINAL:
            return progress
        if backfill["status"] in TERMINAL or time.monotonic() - t0 > DEADLINE_S:
            pytest.fail(
                f"backfill {backfill_id} {backfill['status']} after {time.monotonic() - t0:.0f} s; "
                f"missing {json.dumps(missing)[:1500]}\nerror: {backfill['error']}\n"
                f"{_failures(dev, backfill['runs'])}\n--- dagster dev log ---\n{dev.log_tail()}"
            )
        time.sleep(5)


def _attempt_dir(
    root: Path, target: str, stage: str, batch: str, symbol: str | None = None
) -> Path:
    """DESIGN §2, spelled out here on purpose (not via cohortflow.layout)."""
    view = f"SYMBOL_SPECIFIC/symbol={symbol}" if symbol else "CROSS_SECTIONAL"
    return root / f"targets/{target}/reproducibility/stage={stage}/{view}/batch_{batch}/attempt_0"


def _assert_canonical_tree(root: Path, batch: str, symbols: tuple[str, ...]) -> None:
    assert (root / f"_registry/batch_{batch}.json").is_file()
    assert (root / f"_work/batch_{batch}/attempt_0/bars.parquet").is_file()
    assert (root / f"_work/batch_{batch}/attempt_0/panel.parquet").is_file()
    ranking = pd.read_csv(root / f"reports/batch_{batch}/attempt_0/target_ranking.csv")
    assert sorted(ranking["target"]) == sorted(TARGETS)
    assert ranking["rank"].tolist() == [1, 2]
    for target in TARGETS:
        for stage in STAGES:
            assert (_attempt_dir(root, target, stage, batch) / "_COMPLETE").is_file(), (
                target,
                stage,
            )
        ranking_dir = _attempt_dir(root, target, "TARGET_RANKING", batch)
        assert (ranking_dir / f"feature_exclusions/{target}_exclusions.yaml").is_file()
        selection_dir = _attempt_dir(root, target, "FEATURE_SELECTION", batch)
        assert (selection_dir / "featureset_artifacts/featureset_post_prune.json").is_file()
        for model in ("lightgbm", "xgboost", "permutation", "combined"):
            assert (selection_dir / f"feature_importances/{model}_importances.csv").is_file()
        training = _attempt_dir(root, target, "TRAINING", batch)
        for name in (
            "oof/oof_predictions.parquet",
            "oof/fold_plan.json",
            "stacking/model_card.json",
            "stacking/meta_learner.json",
            "stacking/lightgbm.txt",
            "stacking/xgboost.json",
            "evaluation/evaluation.json",
        ):
            assert (training / name).is_file(), (target, name)
        # the batch's own symbols, read from the registered files: not the whole folder
        oof = pd.read_parquet(training / "oof/oof_predictions.parquet")
        assert sorted(oof["symbol"].astype(str).unique()) == sorted(symbols)
        assert not list(training.glob("**/*.pkl")) and not list(training.glob("**/*.pickle"))
        evaluation = json.loads((training / "evaluation/evaluation.json").read_text())
        assert evaluation["reproduces_saved_predictions"] is True
        for symbol in SYMBOLS:
            for stage in ("TARGET_RANKING", "FEATURE_SELECTION"):
                marker = _attempt_dir(root, target, stage, batch, symbol) / "_COMPLETE"
                assert marker.is_file() == (symbol in symbols), (target, stage, symbol)


@pytest.mark.slow
def test_backfill_from_the_ui_materializes_every_partition(tmp_path: Path) -> None:
    from cohortflow_dagster.partitions import attempt_key

    t_start = time.monotonic()
    ws = make_workspace(tmp_path, max_concurrent_runs=2)
    batches = register_batches(ws, SUBSETS)
    assert len(set(batches)) == len(SUBSETS)
    add_partitions(ws, batches, attempts=[0])
    partitions = [str(attempt_key(b, 0)) for b in batches]
    assert all(p == f"0|{b}" for p, b in zip(partitions, batches, strict=True))
    expected_keys = _expected_asset_keys()

    with dagster_dev(ws, "ui_backfill") as dev:
        t_ready = time.monotonic()
        served = {"/".join(n["assetKey"]["path"]) for n in dev.graphql(ASSET_KEYS)["assetNodes"]}
        assert served == expected_keys
        launched = dev.graphql(
            LAUNCH_BACKFILL,
            {
                "params": {
                    "partitionNames": partitions,
                    "assetSelection": [{"path": key.split("/")} for key in sorted(served)],
                    "title": "test_ui_backfill",
                }
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        t_launch = time.monotonic()
        progress = _wait_for_backfill(dev, launched["backfillId"], partitions)
        t_done = time.monotonic()

    backfill = progress["partitionBackfillOrError"]
    assert backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), backfill["status"]
    for status in backfill["assetBackfillData"]["assetBackfillStatuses"]:
        assert status["numPartitionsTargeted"] == len(partitions), status
        assert status["numPartitionsMaterialized"] == len(partitions), status
        assert status["numPartitionsFailed"] == 0, status
    runs = backfill["runs"]
    assert all(r["status"] == "SUCCESS" for r in runs), runs
    run_partitions = sorted(
        t["value"] for r in runs for t in r["tags"] if t["key"] == "dagster/partition"
    )
    assert set(run_partitions) == set(partitions)

    for batch, symbols in zip(batches, SUBSETS, strict=True):
        _assert_canonical_tree(ws.output_root, batch, symbols)

    timing = {
        "setup_s": round(t_ready - t_start, 1),
        "backfill_s": round(t_done - t_launch, 1),
        "total_s": round(time.monotonic() - t_start, 1),
        "runs": len(runs),
        "partitions": partitions,
    }
    TEST_OUTPUT.mkdir(exist_ok=True)
    (TEST_OUTPUT / "ui_backfill_timing.json").write_text(json.dumps(timing, indent=1))
