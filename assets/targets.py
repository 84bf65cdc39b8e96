"""One set of per-attempt assets per target (an asset factory), three steps each.

Each step is a multi-asset that computes one stage's artifacts in order and writes each
as it is yielded (the IO manager), the stage's cohort snapshots last (they seal its
folders), then evaluates the checks of what it wrote. The bodies only gather inputs,
call :mod:`cohortflow.stages` and describe the result. A step can run for a subset of
its assets (the UI's Materialize on one asset, a partial backfill): what it does not
compute it reads back from the tree.

Keys are ``[target, artifact]`` and each target is its own asset group, so the lineage
reads target by target: data -> exclusions -> ranking -> importances -> featureset ->
OOF -> stack -> evaluation.
"""

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetOut,
    AssetsDefinition,
    Output,
    multi_asset,
)

from cohortflow import plots, stages
from cohortflow.bars import Universe
from cohortflow.domain import ArtifactKind, AssetRole, Step, roles_of
from cohortflow.features import Panel
from cohortflow.store import AttemptKey, read_test_predictions
from cohortflow.version import code_version
from cohortflow_dagster.assets.checks import check_results, check_specs
from cohortflow_dagster.io_managers.canonical_store import LAST_PANEL
from cohortflow_dagster.io_managers.keys import KIND_KEY, LOAD_KEY, STEP_TAG
from cohortflow_dagster.metadata import frame_facts, joined, num, numbers, png, table
from cohortflow_dagster.partitions import attempt_partitions, key_of
from cohortflow_dagster.resources.cohortflow import CohortflowResource
from cohortflow_dagster.resources.launchpad import LaunchpadSettings

K = ArtifactKind

DESCRIPTIONS: dict[ArtifactKind, str] = {
    K.EXCLUSIONS: "Features excluded for {t}: name rules, the look-ahead test, the dominance "
    "test, each with its evidence and the attempt that found it; attempt n inherits n-1's.",
    K.RANKING_SNAPSHOTS: "How predictable {t} is, both views (pooled IC, rank IC, ICIR, "
    "Newey-West t, OOF R²; per symbol R², AUC, IC), as cohort snapshots.",
    K.IMPORTANCES: "Importances for {t}, both views: LightGBM gain, XGBoost gain, "
    "permutation on held-out purged folds, and their rank combination (with random probes).",
    K.FEATURESETS: "The features kept for {t} (in order) and each dropped one with its "
    "reason: below the random probes, near-duplicate, excluded as a leak.",
    K.SELECTION_SNAPSHOTS: "Cohort snapshots of {t}'s feature selection, both views.",
    K.OOF: "Out-of-fold predictions of the base models for {t} on one purged fold plan "
    "they share (training period only).",
    K.STACKING: "The stacking model of {t}: a meta-learner on the OOF columns, base models "
    "refit on the whole training window; native formats only.",
    K.EVALUATION: "{t} on the held-out test period, scored with the stacking model as "
    "loaded back from its native files: base models, equal weight, the stack.",
    K.PORTFOLIO: "{t}'s held-out predictions as a factor: quantile returns, the long-short "
    "spread and its Sharpe (deflated for the trials), turnover, IC decay.",
    K.TRAINING_SNAPSHOTS: "The cohort snapshot of {t}'s training stage: OOF fold metrics, "
    "the stack and its held-out evaluation.",
}
KINDS: dict[ArtifactKind, set[str]] = {
    K.EXCLUSIONS: {"yaml"},
    K.RANKING_SNAPSHOTS: {"lightgbm", "scikitlearn", "json"},
    K.IMPORTANCES: {"lightgbm", "xgboost", "csv"},
    K.FEATURESETS: {"json"},
    K.SELECTION_SNAPSHOTS: {"json"},
    K.OOF: {"lightgbm", "xgboost", "parquet"},
    K.STACKING: {"lightgbm", "xgboost", "scikitlearn"},
    K.EVALUATION: {"json"},
    K.PORTFOLIO: {"json"},
    K.TRAINING_SNAPSHOTS: {"json"},
}
PANEL = AssetKey("feature_panel")
BARS = AssetKey("universe_bars")


def asset_key(role: AssetRole, target: str) -> AssetKey:
    return AssetKey([target, role.name]) if role.per_target else AssetKey(role.name)


def outs(roles: tuple[AssetRole, ...], target: str) -> dict[str, AssetOut]:
    return {
        role.name: AssetOut(
            key=asset_key(role, target),
            metadata={KIND_KEY: role.kind.value},
            group_name=target,
            description=DESCRIPTIONS[role.kind].format(t=target),
            kinds=KINDS[role.kind],
            tags={STEP_TAG: role.step.value},
            is_required=False,
            code_version=code_version(),
        )
        for role in roles
    }


class StepRun:
    """One run of a stage step: which of its assets are selected, where they live, and
    the attempt they belong to."""

    def __init__(
        self,
        context: AssetExecutionContext,
        cohortflow: CohortflowResource,
        launchpad: LaunchpadSettings,
        step: Step,
        target: str,
        horizon: int,
        panel: Panel,
        universe: Universe,
    ) -> None:
        self.context = context
        self.store = cohortflow.store()
        self.settings = cohortflow.settings(launchpad)
        self.key: AttemptKey = key_of(context.partition_key, target)
        self.keys = {role.kind: asset_key(role, target) for role in roles_of(step)}
        self.selected = set(context.selected_asset_keys)
        self.t = stages.TargetAttempt(
            target,
            horizon,
            self.key.batch,
            self.key.attempt,
            self.settings,
            panel,
            universe,
            stages.run_info(context.run.run_id),
        )

    @classmethod
    def reading_data(
        cls,
        context: AssetExecutionContext,
        cohortflow: CohortflowResource,
        launchpad: LaunchpadSettings,
        step: Step,
        target: str,
        horizon: int,
    ) -> "StepRun":
        """A step that loads the attempt's panel (shared in process: LAST_PANEL) and what
        its universe is (files and hashes, no bars) from the tree itself."""
        store = cohortflow.store()
        key = key_of(context.partition_key)
        panel = LAST_PANEL.get(store, key)
        universe = store.read(K.UNIVERSE_BARS, key, bars=False)
        return cls(context, cohortflow, launchpad, step, target, horizon, panel, universe)

    def wants(self, kind: ArtifactKind) -> bool:
        return self.keys[kind] in self.selected

    def get(self, kind: ArtifactKind, compute: Callable[[], Any]) -> Any:
        """Computed when selected, else read back from the tree (a partial run)."""
        if not self.wants(kind):
            return self.store.read(kind, self.key)
        t0 = time.perf_counter()
        value = compute()
        self.context.log.info(
            f"{self.t.target} {kind.value}: computed in {time.perf_counter() - t0:.1f} s"
        )
        return value

    def output(self, kind: ArtifactKind, value: Any, metadata: dict[str, Any]) -> Iterator[Output]:
        if self.wants(kind):
            yield Output(value, output_name=kind.value, metadata=metadata)

    def snapshots(self, kind: ArtifactKind, compute: Callable[[], Any]) -> Iterator[Output]:
        """The stage's cohort snapshots, when selected (they are never read back)."""
        if self.wants(kind):
            snaps = compute()
            yield from self.output(kind, snaps, _snapshot_meta(snaps))

    def checks(self) -> Iterator[Any]:
        yield from check_results(
            self.context, self.store, self.key, self.keys, self.settings.attempt_limit
        )


# --------------------------------------------------------------------------- metadata
def _exclusions_meta(items: dict, batch_symbols: str) -> dict[str, Any]:
    excl = stages.cross_sectional(items)
    rows = pd.DataFrame(
        [
            {
                "feature": e.feature,
                "reason": e.reason,
                "found_in_attempt": e.attempt,
                "symbols": ", ".join(e.symbols) or "all",
            }
            for e in excl.entries
        ],
        columns=["feature", "reason", "found_in_attempt", "symbols"],
    )
    return {
        "leaks_found_here": len(excl.found_here()),
        "found": joined(f"{e.feature} ({e.reason})" for e in excl.found_here()),
        "excluded_total": len(excl.excluded()),
        "exclusions": table(rows),
        "symbols": batch_symbols,
    }


def _snapshot_meta(snaps: Any) -> dict[str, Any]:
    cs = snaps.drafts[0]
    rows = pd.DataFrame(
        [
            {"view": d.scope.view.value, "symbol": d.scope.symbol or "all", "rows": d.rows}
            | numbers(dict(d.key_metrics))
            for d in snaps.drafts
        ]
    )
    return {"cohort_id": cs.cohort_id, "cohorts": len(snaps.drafts), "key_metrics": table(rows)}


def _importance_meta(t: stages.TargetAttempt, items: dict) -> dict[str, Any]:
    cs = stages.cross_sectional(items)
    combined = cs["combined"]
    return {
        "top_features": joined(combined["feature"].head(5)),
        "combined_importance": table(combined),
        "importance_plot": png(
            plots.importance_bars(cs, title=f"{t.target}: feature importances (pooled)"),
            f"{t.target} importances",
        ),
        **frame_facts(combined),
    }


def _featureset_meta(items: dict) -> dict[str, Any]:
    cs = stages.cross_sectional(items)
    rows = pd.DataFrame(
        [{"feature": f, "kept": True, "reason": ""} for f in cs.kept]
        + [{"feature": f, "kept": False, "reason": r} for f, r in cs.dropped.items()]
    )
    return {"kept": len(cs.kept), "dropped": len(cs.dropped), "features": table(rows, 60)}


def _oof_meta(t: stages.TargetAttempt, oof: Any) -> dict[str, Any]:
    folds = pd.DataFrame(oof.fold_metrics)
    meta: dict[str, Any] = {
        "folds": len(oof.fold_plan.folds),
        "features": len(next(iter(oof.features.values()), ())),
        "train_last": str(t.holdout.info.get("train_last", "")),
        **frame_facts(oof.frame),
    }
    if not folds.empty and "rank_ic" in folds:
        meta["fold_metrics"] = table(folds)
        by_fold = folds.pivot_table(index="fold", columns="model", values="rank_ic")
        meta["oof_rank_ic_by_fold"] = png(
            plots.grouped_bars(by_fold, f"{t.target}: OOF rank IC by fold", "rank IC"),
            f"{t.target} OOF rank IC",
        )
        for model, value in folds.groupby("model")["rank_ic"].mean().items():
            meta[f"oof_rank_ic_{model}"] = num(value)
    return meta


def _stack_meta(t: stages.TargetAttempt, result: Any) -> dict[str, Any]:
    scores = pd.DataFrame(
        [
            {
                "model": m,
                **numbers({k: v for k, v in d.items() if k in ("r2", "rank_ic", "ic", "icir")}),
            }
            for m, d in result.test_metrics.items()
            if isinstance(d, dict) and "rank_ic" in d
        ]
    )
    weights = pd.DataFrame({"model": list(result.weights), "weight": list(result.weights.values())})
    stack = result.test_metrics["stack"]
    meta: dict[str, Any] = {
        "weights": table(weights),
        "test_metrics": table(scores),
        "stack_test_rank_ic": num(stack.get("rank_ic")),
        "weights_plot": png(
            plots.bar_chart(
                list(result.weights),
                list(result.weights.values()),
                f"{t.target}: stack weights",
                "weight",
            ),
            f"{t.target} stack weights",
        ),
    }
    if stack.get("r2") is not None:  # None for a logistic (sign) meta-learner
        meta["stack_test_r2"] = num(stack["r2"])
    if not scores.empty:
        meta["test_metrics_plot"] = png(
            plots.grouped_bars(
                scores.set_index("model")[["r2", "rank_ic"]].astype(float),
                f"{t.target}: held-out test",
                "score",
            ),
            f"{t.target} held-out test",
        )
    return meta


def _evaluation_meta(report: dict[str, Any]) -> dict[str, Any]:
    m = report["metrics_from_loaded_model"]
    meta: dict[str, Any] = {
        "stack_rank_ic": num(m["stack"].get("rank_ic")),
        "reproduces_saved_predictions": report["reproduces_saved_predictions"],
        "test_rows": report["test_rows"],
    }
    if m["stack"].get("r2") is not None:
        meta["stack_r2"] = num(m["stack"]["r2"])
    return meta


def _portfolio_meta(t: stages.TargetAttempt, doc: dict[str, Any]) -> dict[str, Any]:
    from cohortflow.portfolio import portfolio_summary

    summary = portfolio_summary(doc)
    means = doc["mean_return_by_quantile"]
    quantiles = pd.DataFrame(
        {"quantile": [f"Q{k}" for k in range(1, len(means) + 1)], "mean_return": means}
    )
    return {
        **{k: num(v) if isinstance(v, float) else v for k, v in summary.items()},
        "mean_return_by_quantile": table(quantiles),
        "portfolio_plot": png(plots.portfolio_plot(doc, t.target), f"{t.target} portfolio"),
    }


# --------------------------------------------------------------------------- the factory
def build_target_assets(target: str, horizon: int) -> list[AssetsDefinition]:
    """The three stage steps of one target, keyed under ``[target, ...]``.

    Lineage: each artifact depends on the one before it in the stage chain (data ->
    exclusions -> ranking snapshots; exclusions -> importances -> featureset -> selection
    snapshots; featureset -> OOF -> stack -> evaluation, portfolio -> training snapshots),
    so the graph reads as a line per target. The later steps also read the attempt's panel
    and universe; they load them from the tree themselves rather than draw an edge from
    the data to every artifact.
    """
    panel_in = {"feature_panel": AssetIn(key=PANEL)}
    # the ranking stage needs what the universe is (signature, file hashes), not its bars
    files_in = {"universe_bars": AssetIn(key=BARS, metadata={LOAD_KEY: "files"})}

    def own(kind: ArtifactKind) -> dict[str, AssetIn]:
        return {kind.value: AssetIn(key=AssetKey([target, kind.value]))}

    def step_asset(step: Step, ins: dict[str, AssetIn], deps: dict[str, set[AssetKey]]):
        roles = roles_of(step)
        keys = {role.kind: asset_key(role, target) for role in roles}
        return multi_asset(
            name=f"{target}__{step.value}",
            outs=outs(roles, target),
            ins=ins,
            internal_asset_deps=deps,
            check_specs=check_specs(keys),
            partitions_def=attempt_partitions,
            can_subset=True,
            op_tags={"cohortflow/step": step.value, "cohortflow/target": target},
        )

    key = {role.kind: asset_key(role, target) for role in (r for s in Step for r in roles_of(s))}

    @step_asset(
        Step.TARGET_RANKING,
        {**panel_in, **files_in},
        {
            K.EXCLUSIONS.value: {PANEL, BARS},
            K.RANKING_SNAPSHOTS.value: {key[K.EXCLUSIONS]},
        },
    )
    def target_ranking(
        context: AssetExecutionContext,
        cohortflow: CohortflowResource,
        launchpad: LaunchpadSettings,
        feature_panel: Panel,
        universe_bars: Universe,
    ):
        run = StepRun(
            context,
            cohortflow,
            launchpad,
            Step.TARGET_RANKING,
            target,
            horizon,
            feature_panel,
            universe_bars,
        )
        t = run.t

        def inputs() -> tuple[Any, stages.TargetAttempt]:
            """Attempt n-1's exclusions (inherited) and the attempt with its bars."""
            previous = None
            if t.attempt > 0:
                earlier = run.store.read(K.EXCLUSIONS, AttemptKey(t.batch, t.attempt - 1, target))
                previous = stages.cross_sectional(earlier)
            with_bars = dataclasses.replace(
                t, universe=run.store.read(K.UNIVERSE_BARS, AttemptKey(t.batch, t.attempt))
            )
            return previous, with_bars

        ranked = None
        if run.wants(K.EXCLUSIONS) and run.wants(K.RANKING_SNAPSHOTS):
            # both: the leak tests run beside the ranking's fits (stages.exclusions_and_ranking)
            previous, with_bars = inputs()
            excl, ranked = run.get(
                K.EXCLUSIONS, lambda: stages.exclusions_and_ranking(with_bars, previous)
            )
        else:
            excl = run.get(K.EXCLUSIONS, lambda: stages.find_exclusions(*inputs()[::-1]))
        yield from run.output(
            K.EXCLUSIONS, excl, _exclusions_meta(excl, joined(t.universe.symbols))
        )
        yield from run.snapshots(
            K.RANKING_SNAPSHOTS, lambda: ranked if ranked is not None else stages.rank(t, excl)
        )
        yield from run.checks()

    @step_asset(
        Step.FEATURE_SELECTION,
        own(K.EXCLUSIONS),
        {
            K.IMPORTANCES.value: {key[K.EXCLUSIONS]},
            K.FEATURESETS.value: {key[K.IMPORTANCES]},
            K.SELECTION_SNAPSHOTS.value: {key[K.FEATURESETS]},
        },
    )
    def feature_selection(
        context: AssetExecutionContext,
        cohortflow: CohortflowResource,
        launchpad: LaunchpadSettings,
        feature_exclusions: dict,
    ):
        run = StepRun.reading_data(
            context, cohortflow, launchpad, Step.FEATURE_SELECTION, target, horizon
        )
        t, excl = run.t, feature_exclusions
        imps = run.get(K.IMPORTANCES, lambda: stages.importances(t, excl))
        yield from run.output(K.IMPORTANCES, imps, _importance_meta(t, imps))
        if run.wants(K.FEATURESETS) or run.wants(K.SELECTION_SNAPSHOTS):
            fsets = run.get(K.FEATURESETS, lambda: stages.featuresets(t, imps, excl))
            yield from run.output(K.FEATURESETS, fsets, _featureset_meta(fsets))
            yield from run.snapshots(
                K.SELECTION_SNAPSHOTS, lambda: stages.selection_snapshots(t, imps, fsets, excl)
            )
        yield from run.checks()

    @step_asset(
        Step.TRAINING,
        own(K.FEATURESETS),
        {
            K.OOF.value: {key[K.FEATURESETS]},
            K.STACKING.value: {key[K.OOF]},
            K.EVALUATION.value: {key[K.STACKING]},
            K.PORTFOLIO.value: {key[K.STACKING]},
            K.TRAINING_SNAPSHOTS.value: {key[K.EVALUATION], key[K.PORTFOLIO]},
        },
    )
    def training(
        context: AssetExecutionContext,
        cohortflow: CohortflowResource,
        launchpad: LaunchpadSettings,
        featureset: dict,
    ):
        run = StepRun.reading_data(context, cohortflow, launchpad, Step.TRAINING, target, horizon)
        t = run.t
        needs_oof = run.wants(K.OOF) or run.wants(K.STACKING) or run.wants(K.TRAINING_SNAPSHOTS)
        oof = run.get(K.OOF, lambda: stages.oof_dataset(t, featureset)) if needs_oof else None
        if oof is not None:
            yield from run.output(K.OOF, oof, _oof_meta(t, oof))
        if run.wants(K.STACKING):
            result = stages.stacking_model(t, featureset, oof)
            yield from run.output(K.STACKING, result, _stack_meta(t, result))
        rest = (K.EVALUATION, K.PORTFOLIO, K.TRAINING_SNAPSHOTS)
        if any(run.wants(k) for k in rest):
            # scored as a user loads it: from the files the store just wrote
            stack = run.store.read(K.STACKING, run.key)
            saved = read_test_predictions(run.store, run.key)
            report = run.get(K.EVALUATION, lambda: stages.evaluation(t, stack, saved))
            yield from run.output(K.EVALUATION, report, _evaluation_meta(report))
            folio = run.get(K.PORTFOLIO, lambda: stages.portfolio(t, saved))
            yield from run.output(K.PORTFOLIO, folio, _portfolio_meta(t, folio))
            yield from run.snapshots(
                K.TRAINING_SNAPSHOTS,
                lambda: stages.training_snapshots(t, featureset, oof, report, folio),
            )
        yield from run.checks()

    return [target_ranking, feature_selection, training]
