"""Stage TRAINING for one target: OOF dataset, stacking model, evaluation, snapshot."""

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, AssetIn, AssetsDefinition, MetadataValue, asset

from assets.partitions import split_key
from cohortflow import plots
from cohortflow.bars import Universe
from cohortflow.features import Panel
from cohortflow.layout import Scope
from cohortflow.metrics import r2
from cohortflow.oof import OOFResult, generate_oof
from cohortflow.selection import Featureset
from cohortflow.snapshots import draft_from_rows
from cohortflow.stacking import LoadedStack, StackingResult, fit_stacking, split_train_test
from cohortflow.store import StageSnapshots
from io_managers.keys import KIND_KEY as KIND
from io_managers.keys import STAGE_KEY
from resources.cohortflow import CohortflowResource

CS = "CROSS_SECTIONAL"


def _cs_featureset(featureset: dict[Scope, Featureset]) -> Featureset:
    return next(v for s, v in featureset.items() if s.view == CS)


def _md_png(png: bytes) -> MetadataValue:
    return MetadataValue.md(plots.markdown_image(png))


def evaluate_loaded_stack(
    stack: LoadedStack, test: pd.DataFrame, saved: pd.DataFrame, target: str, horizon: int
) -> dict[str, Any]:
    """Score the stack as a user would load it (native files) on the held-out period, and
    check that it reproduces the predictions saved when it was fitted."""
    from cohortflow.stacking import column_metrics

    base = stack.predict_base(test)
    frame = pd.DataFrame(
        {"timestamp": test["timestamp"].to_numpy(), "y_true": test[target].to_numpy()}
    )
    for col in base.columns:
        frame[col] = base[col].to_numpy()
    frame["pred_stack"] = stack.predict(test)
    metrics = {}
    for col in [c for c in frame.columns if c.startswith("pred_")]:
        metrics[col[len("pred_") :]] = column_metrics(
            frame["y_true"].to_numpy(),
            frame[col].to_numpy(),
            frame["timestamp"].to_numpy(),
            horizon,
            probability=col == "pred_stack" and stack.meta.kind == "logistic",
        )
    diff = float(np.max(np.abs(frame["pred_stack"].to_numpy() - saved["pred_stack"].to_numpy())))
    return {
        "target": target,
        "test_rows": int(len(test)),
        "test_window": {
            "first": pd.Timestamp(test["timestamp"].min()).isoformat(),
            "last": pd.Timestamp(test["timestamp"].max()).isoformat(),
        },
        "metrics_from_loaded_model": metrics,
        "reproduces_saved_predictions": bool(diff <= 1e-9),
        "max_abs_diff_vs_saved": diff,
    }


def build_training_assets(
    target: str,
    horizon: int,
    common: dict[str, Any],
    data_in: dict[str, AssetIn],
    own: Callable[..., dict[str, AssetIn]],
) -> list[AssetsDefinition]:
    panel_in = {"feature_panel": data_in["feature_panel"]}

    @asset(
        name="oof_dataset",
        group_name="training",
        kinds={"lightgbm", "xgboost", "parquet"},
        metadata={KIND: "oof_dataset"},
        ins={**panel_in, **own("featureset")},
        description=f"Out-of-fold predictions of the base models for {target} on one purged "
        "fold plan that they share (training period only).",
        **common,
    )
    def oof_dataset(
        context: AssetExecutionContext,
        cohortflow: CohortflowResource,
        feature_panel: Panel,
        featureset: dict[Scope, Featureset],
    ) -> OOFResult:
        settings = cohortflow.settings()
        train, _, boundaries = split_train_test(feature_panel.frame, target, horizon, settings)
        features = list(_cs_featureset(featureset).kept)
        result = generate_oof(train, target, horizon, features, settings)
        folds = pd.DataFrame(result.fold_metrics)
        meta: dict[str, Any] = {
            "rows": len(result.frame),
            "folds": len(result.fold_plan.folds),
            "features": len(features),
            "train_last": str(boundaries.get("train_last", "")),
        }
        if not folds.empty and "r2" in folds:
            table = folds.pivot_table(index="fold", columns="model", values="rank_ic")
            meta["oof_rank_ic_by_fold"] = _md_png(
                plots.grouped_bars(table, f"{target}: OOF rank IC by fold", "rank IC")
            )
            for model, value in folds.groupby("model")["rank_ic"].mean().items():
                meta[f"oof_rank_ic_{model}"] = float(value)
        context.add_output_metadata(meta)
        return result

    @asset(
        name="stacking_model",
        group_name="training",
        kinds={"lightgbm", "xgboost", "scikitlearn"},
        metadata={KIND: "stacking_model"},
        ins={**panel_in, **own("featureset", "oof_dataset")},
        description=f"The stacking model of {target}: a meta-learner on the OOF columns, base "
        "models refit on the whole training window; native formats only.",
        **common,
    )
    def stacking_model(
        context: AssetExecutionContext,
        cohortflow: CohortflowResource,
        feature_panel: Panel,
        featureset: dict[Scope, Featureset],
        oof_dataset: OOFResult,
    ) -> StackingResult:
        settings = cohortflow.settings()
        train, test, boundaries = split_train_test(feature_panel.frame, target, horizon, settings)
        features = list(_cs_featureset(featureset).kept)
        result = fit_stacking(
            oof_dataset, train, test, target, horizon, features, settings, split_info=boundaries
        )
        table = pd.DataFrame(
            {
                m: {k: v for k, v in result.test_metrics[m].items() if k in ("r2", "rank_ic")}
                for m in result.test_metrics
                if isinstance(result.test_metrics[m], dict) and "r2" in result.test_metrics[m]
            }
        ).T
        stack = result.test_metrics["stack"]
        meta: dict[str, Any] = {
            "weights": MetadataValue.json(result.weights),
            "stack_test_rank_ic": float(stack["rank_ic"]),
        }
        if stack.get("r2") is not None:  # None for a logistic (sign) meta-learner
            meta["stack_test_r2"] = float(stack["r2"])
        if not table.empty:
            meta["test_metrics_plot"] = _md_png(
                plots.grouped_bars(table, f"{target}: held-out test", "score")
            )
        meta["weights_plot"] = _md_png(
            plots.bar_chart(
                list(result.weights), list(result.weights.values()), "stack weights", "weight"
            )
        )
        context.add_output_metadata(meta)
        return result

    @asset(
        name="evaluation",
        group_name="training",
        kinds={"json"},
        metadata={KIND: "evaluation"},
        ins={**panel_in, **own("stacking_model")},
        description=f"{target} on the held-out test period, scored with the stacking model "
        "as loaded back from its native files: base models, equal weight, the stack.",
        **common,
    )
    def evaluation(
        context: AssetExecutionContext,
        cohortflow: CohortflowResource,
        feature_panel: Panel,
        stacking_model: LoadedStack,
    ) -> dict[str, Any]:
        settings = cohortflow.settings()
        batch, attempt = split_key(context.partition_key)
        _, test, _ = split_train_test(feature_panel.frame, target, horizon, settings)
        saved = cohortflow.store().read_test_predictions(
            Scope(target, "TRAINING", CS, batch, attempt)
        )
        report = evaluate_loaded_stack(stacking_model, test, saved, target, horizon)
        m = report["metrics_from_loaded_model"]
        meta: dict[str, Any] = {
            "stack_rank_ic": float(m["stack"]["rank_ic"]),
            "reproduces_saved_predictions": report["reproduces_saved_predictions"],
        }
        if m["stack"].get("r2") is not None:
            meta["stack_r2"] = float(m["stack"]["r2"])
        context.add_output_metadata(meta)
        return report

    @asset(
        name="cohort_snapshot_training",
        group_name="training",
        kinds={"json"},
        metadata={KIND: "cohort_snapshot", STAGE_KEY: "TRAINING"},
        ins={**data_in, **own("featureset", "oof_dataset", "evaluation")},
        description=f"The cohort snapshot of {target}'s training stage: OOF fold metrics, the "
        "stack and its held-out evaluation.",
        **common,
    )
    def cohort_snapshot_training(
        context: AssetExecutionContext,
        cohortflow: CohortflowResource,
        feature_panel: Panel,
        universe_bars: Universe,
        featureset: dict[Scope, Featureset],
        oof_dataset: OOFResult,
        evaluation: dict[str, Any],
    ) -> StageSnapshots:
        batch, attempt = split_key(context.partition_key)
        settings = cohortflow.settings()
        scope = Scope(target, "TRAINING", CS, batch, attempt)
        train, _, _ = split_train_test(feature_panel.frame, target, horizon, settings)
        fs = _cs_featureset(featureset)
        metrics_by_model = evaluation["metrics_from_loaded_model"]
        oof = oof_dataset.frame
        oof_scores = {
            c[len("pred_") :]: float(r2(oof["y_true"].to_numpy(), oof[c].to_numpy()))
            for c in oof.columns
            if c.startswith("pred_")
        }
        key = {
            f"test.{m}.{k}": float(v)
            for m, d in metrics_by_model.items()
            for k, v in d.items()
            if k in ("r2", "rank_ic", "ic") and isinstance(v, int | float)
        }
        key.update({f"oof.{m}.r2": v for m, v in oof_scores.items()})
        draft = draft_from_rows(
            scope,
            train[train[target].notna()],
            universe_sig=universe_bars.universe_sig,
            file_hashes=_file_hashes(universe_bars),
            features=list(fs.kept),
            excluded={k: v for k, v in fs.dropped.items() if str(v).startswith("excluded")},
            metrics={"evaluation": evaluation, "oof": {"r2": oof_scores}},
            key_metrics=key,
            settings=settings.fingerprint_fields(),
        )
        context.add_output_metadata({"cohort_id": draft.cohort_id})
        return StageSnapshots("TRAINING", target, batch, attempt, (draft,), {}, _run_info(context))

    from assets.targets import _file_hashes, _run_info

    return [oof_dataset, stacking_model, evaluation, cohort_snapshot_training]
