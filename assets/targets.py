"""One set of per-attempt assets per target (an asset factory).

Every asset here is partitioned by universe batch × attempt and lives under the target's
key prefix (``fwd_ret_5/featureset`` …), so a researcher can materialize one horizon and
the executor can run targets side by side. The bodies only gather inputs, call the core
and describe the result; the IO manager writes the files.

Attempt semantics: attempt n uses every feature except those found leaking in attempts
< n. Leaks that attempt n itself finds are recorded in its exclusions (its leakage check
fails) and attempt n+1 runs without them.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, AssetKey, AssetsDefinition, MetadataValue, asset

from assets.partitions import attempt_partitions, split_key
from cohortflow import plots
from cohortflow.bars import Universe
from cohortflow.errors import ArtifactNotFoundError
from cohortflow.features import Panel, feature_specs
from cohortflow.layout import Scope
from cohortflow.leakage import Exclusions, detect_leaks
from cohortflow.ranking import TargetRanking, rank_target, symbols_for_view
from cohortflow.selection import Featureset, compute_importances, prune
from cohortflow.snapshots import draft_from_rows
from cohortflow.stacking import split_train_test
from cohortflow.store import StageSnapshots, csv_bytes
from io_managers.keys import KIND_KEY as KIND
from io_managers.keys import LOAD_KEY, STAGE_KEY
from resources.cohortflow import CohortflowResource

CS, SY = "CROSS_SECTIONAL", "SYMBOL_SPECIFIC"


# --------------------------------------------------------------------------- helpers
def _partition(context: AssetExecutionContext) -> tuple[str, int]:
    batch, attempt = split_key(context.partition_key)
    assert attempt is not None
    return batch, attempt


def _run_info(context: AssetExecutionContext) -> dict[str, Any]:
    import socket
    from datetime import UTC, datetime

    return {
        "dagster_run_id": context.run.run_id,
        "finished_at": datetime.now(UTC).isoformat(),
        "host": socket.gethostname(),
    }


def _file_hashes(universe: Universe) -> dict[str, str]:
    return {f.symbol: f.sha256 for f in universe.files}


def inherited_exclusions(excl: Exclusions, attempt: int) -> dict[str, str]:
    """Features excluded for attempt ``attempt``: those found in earlier attempts."""
    return {e.feature: e.reason for e in excl.entries if e.attempt < attempt}


def usable_features(panel: Panel, excl: Exclusions, attempt: int) -> list[str]:
    dropped = inherited_exclusions(excl, attempt)
    return [f for f in panel.features if f not in dropped]


def training_window(panel: Panel, target: str, horizon: int, settings: Any) -> pd.DataFrame:
    """The panel rows before the held-out test period (and its gap): the only rows that
    leakage detection, feature selection and training may look at."""
    train, _, _ = split_train_test(panel.frame, target, horizon, settings)
    return train


def target_rows(frame: pd.DataFrame, target: str, symbol: str | None = None) -> pd.DataFrame:
    keep = frame[target].notna().to_numpy()
    if symbol is not None:  # one mask: copy the symbol's rows, not the whole panel first
        keep = keep & (frame["symbol"] == symbol).to_numpy()
    return frame[keep]


def cohort_draft(
    scope: Scope,
    panel: Panel,
    universe: Universe,
    excl: Exclusions,
    settings: Any,
    *,
    features: Sequence[str],
    metrics: Mapping[str, Any],
    key_metrics: Mapping[str, float],
) -> Any:
    """The cohort draft of a scope, on the panel rows of its view with a target."""
    return draft_from_rows(
        scope,
        target_rows(panel.frame, scope.target, scope.symbol),
        universe_sig=universe.universe_sig,
        file_hashes=_file_hashes(universe),
        features=features,
        excluded=inherited_exclusions(excl, scope.attempt),
        metrics=metrics,
        key_metrics=key_metrics,
        settings=settings.fingerprint_fields(),
    )


def _cs_and_symbols(items: Mapping[Scope, Any]) -> tuple[Any, dict[str, Any]]:
    cs = next(v for s, v in items.items() if s.view == CS)
    return cs, {s.symbol: v for s, v in items.items() if s.view == SY}


def _png(fig_bytes: bytes) -> MetadataValue:
    return MetadataValue.md(plots.markdown_image(fig_bytes))


# --------------------------------------------------------------------------- factory
def build_target_assets(target: str, horizon: int) -> list[AssetsDefinition]:
    """The per-attempt assets of one target, keyed under ``[target, ...]``."""
    common = dict(key_prefix=[target], partitions_def=attempt_partitions)
    panel_in = {"feature_panel": AssetIn(key=AssetKey("feature_panel"))}
    bars_in = {"universe_bars": AssetIn(key=AssetKey("universe_bars"))}
    # snapshots need what the universe is (its signature and file hashes), not its bars
    files_in = {
        "universe_bars": AssetIn(key=AssetKey("universe_bars"), metadata={LOAD_KEY: "files"})
    }

    def own(*names: str) -> dict[str, AssetIn]:
        """Inputs from this target's own assets (same key prefix)."""
        return {n: AssetIn(key=AssetKey([target, n])) for n in names}

    @asset(
        name="feature_exclusions",
        group_name="leakage",
        kinds={"yaml"},
        metadata={KIND: "feature_exclusions"},
        ins={**panel_in, **bars_in},
        description=f"Features excluded for {target}: name rules, look-ahead test, dominance "
        "test, with evidence and the attempt that found each; inherited from attempt n-1.",
        **common,
    )
    def feature_exclusions(
        context: AssetExecutionContext,
        cohortflow: CohortflowResource,
        feature_panel: Panel,
        universe_bars: Universe,
    ) -> dict[Scope, Exclusions]:
        batch, attempt = _partition(context)
        settings = cohortflow.settings()
        inherited = None
        if attempt > 0:
            try:
                previous = cohortflow.store().read_exclusions(target, batch, attempt - 1)
            except ArtifactNotFoundError as exc:
                raise ArtifactNotFoundError(
                    f"attempt {attempt} of batch {batch} builds on attempt {attempt - 1}, "
                    f"which has no exclusions for {target} yet: {exc}"
                ) from None
            inherited = next(v for s, v in previous.items() if s.view == CS)
        specs = [
            s
            for s in feature_specs(_all_columns(universe_bars), settings)
            if s.name in feature_panel.computed
        ]
        # the dominance test sees the training window only: which features are excluded must
        # not depend on the held-out period the stack is judged on
        train_panel = dataclasses.replace(
            feature_panel, frame=training_window(feature_panel, target, horizon, settings)
        )
        excl = detect_leaks(
            train_panel, target, horizon, specs, universe_bars.bars, settings, attempt, inherited
        )
        out: dict[Scope, Exclusions] = {Scope(target, "TARGET_RANKING", CS, batch, attempt): excl}
        # symbol-view folders exist only for the symbols that get that view (each completes
        # when its ranking cohort is written)
        for symbol in symbols_for_view(feature_panel.frame, target, settings.symbol_views):
            out[Scope(target, "TARGET_RANKING", SY, batch, attempt, symbol)] = excl.for_symbol(
                symbol
            )
        found = excl.found_here()
        context.add_output_metadata(
            {
                "leaks_found_here": len(found),
                "found": ", ".join(f"{e.feature} ({e.reason})" for e in found) or "none",
                "excluded_total": len(excl.excluded()),
            }
        )
        return out

    @asset(
        name="cohort_snapshot_target_ranking",
        group_name="target_ranking",
        kinds={"lightgbm", "scikitlearn", "json"},
        metadata={KIND: "cohort_snapshot", STAGE_KEY: "TARGET_RANKING"},
        ins={**panel_in, **files_in, **own("feature_exclusions")},
        description=f"How predictable {target} is, both views (pooled IC, rank IC, ICIR, "
        "Newey-West t, OOF R²; per symbol R², AUC, IC), as cohort snapshots.",
        **common,
    )
    def cohort_snapshot_target_ranking(
        context: AssetExecutionContext,
        cohortflow: CohortflowResource,
        feature_panel: Panel,
        universe_bars: Universe,
        feature_exclusions: dict[Scope, Exclusions],
    ) -> StageSnapshots:
        batch, attempt = _partition(context)
        settings = cohortflow.settings()
        excl, _ = _cs_and_symbols(feature_exclusions)
        features = usable_features(feature_panel, excl, attempt)
        symbols = symbols_for_view(feature_panel.frame, target, settings.symbol_views)
        ranking: TargetRanking = rank_target(
            feature_panel.frame, target, horizon, features, settings, symbols=symbols
        )
        stage = "TARGET_RANKING"
        drafts, extras = [], {}
        for view in (ranking.cross_sectional, *ranking.symbol_specific):
            scope = Scope(target, stage, view.view, batch, attempt, view.symbol)
            score = ranking.score if view.symbol is None else None
            drafts.append(
                cohort_draft(
                    scope,
                    feature_panel,
                    universe_bars,
                    excl,
                    settings,
                    features=features,
                    metrics=view.metrics,
                    key_metrics=_key_metrics(view.metrics, score),
                )  # fmt: skip
            )
            extras[scope] = {
                f"feature_importances/{model}_importances.csv": csv_bytes(frame)
                for model, frame in view.importances.items()
            }
            extras[scope]["fold_plan.json"] = _json_bytes(view.fold_plan.to_dict())
        cs_key = drafts[0].key_metrics
        context.add_output_metadata(
            {
                "cohort_id": drafts[0].cohort_id,
                "score": float(ranking.score),
                **{k: float(v) for k, v in cs_key.items() if isinstance(v, int | float)},
                "symbols": len(ranking.symbol_specific),
            }
        )
        return StageSnapshots(
            stage, target, batch, attempt, tuple(drafts), extras, _run_info(context)
        )

    @asset(
        name="feature_importances",
        group_name="feature_selection",
        kinds={"lightgbm", "xgboost", "csv"},
        metadata={KIND: "feature_importances"},
        ins={**panel_in, **own("feature_exclusions")},
        description=f"Importances for {target}, both views: LightGBM gain, XGBoost gain, "
        "permutation on held-out purged folds, and their rank combination (with probes).",
        **common,
    )
    def feature_importances(
        context: AssetExecutionContext,
        cohortflow: CohortflowResource,
        feature_panel: Panel,
        feature_exclusions: dict[Scope, Exclusions],
    ) -> dict[Scope, dict[str, pd.DataFrame]]:
        batch, attempt = _partition(context)
        settings = cohortflow.settings()
        excl, _ = _cs_and_symbols(feature_exclusions)
        features = usable_features(feature_panel, excl, attempt)
        out: dict[Scope, dict[str, pd.DataFrame]] = {}
        train = training_window(feature_panel, target, horizon, settings)
        for symbol in [None, *symbols_for_view(feature_panel.frame, target, settings.symbol_views)]:
            scope = Scope(target, "FEATURE_SELECTION", SY if symbol else CS, batch, attempt, symbol)
            rows = target_rows(train, target, symbol)
            out[scope] = compute_importances(rows, target, horizon, features, settings)
        cs = out[Scope(target, "FEATURE_SELECTION", CS, batch, attempt)]
        meta: dict[str, Any] = {
            "top_features": ", ".join(cs["combined"]["feature"].head(5)),
        }
        meta["importance_plot"] = _png(plots.importance_bars(cs, title=f"{target}: importances"))
        context.add_output_metadata(meta)
        return out

    @asset(
        name="featureset",
        group_name="feature_selection",
        kinds={"json"},
        metadata={KIND: "featureset"},
        ins={**panel_in, **own("feature_importances", "feature_exclusions")},
        description=f"The features kept for {target} (in order) and each dropped one with its "
        "reason: below the random probes, near-duplicate, excluded as a leak.",
        **common,
    )
    def featureset(
        context: AssetExecutionContext,
        cohortflow: CohortflowResource,
        feature_panel: Panel,
        feature_importances: dict[Scope, dict[str, pd.DataFrame]],
        feature_exclusions: dict[Scope, Exclusions],
    ) -> dict[Scope, Featureset]:
        batch, attempt = _partition(context)
        settings = cohortflow.settings()
        excl, _ = _cs_and_symbols(feature_exclusions)
        excluded = sorted(inherited_exclusions(excl, attempt))
        out = {}
        train = training_window(feature_panel, target, horizon, settings)
        for scope, importances in feature_importances.items():
            rows = target_rows(train, target, scope.symbol)
            # every feature goes in, so the leaks excluded earlier are listed as dropped
            out[scope] = prune(
                importances, rows, list(feature_panel.features), target, scope.view,
                scope.symbol, settings, excluded=excluded,
            )  # fmt: skip
        cs = out[Scope(target, "FEATURE_SELECTION", CS, batch, attempt)]
        context.add_output_metadata(
            {"kept": len(cs.kept), "dropped": len(cs.dropped), "features": ", ".join(cs.kept)}
        )
        return out

    @asset(
        name="cohort_snapshot_feature_selection",
        group_name="feature_selection",
        kinds={"json"},
        metadata={KIND: "cohort_snapshot", STAGE_KEY: "FEATURE_SELECTION"},
        ins={
            **panel_in,
            **files_in,
            **own("feature_importances", "featureset", "feature_exclusions"),
        },
        description=f"Cohort snapshots of {target}'s feature selection, both views.",
        **common,
    )
    def cohort_snapshot_feature_selection(
        context: AssetExecutionContext,
        cohortflow: CohortflowResource,
        feature_panel: Panel,
        universe_bars: Universe,
        feature_importances: dict[Scope, dict[str, pd.DataFrame]],
        featureset: dict[Scope, Featureset],
        feature_exclusions: dict[Scope, Exclusions],
    ) -> StageSnapshots:
        batch, attempt = _partition(context)
        settings = cohortflow.settings()
        excl, _ = _cs_and_symbols(feature_exclusions)
        drafts = []
        for scope, fs in sorted(
            featureset.items(), key=lambda kv: (kv[0].view, kv[0].symbol or "")
        ):
            combined = feature_importances[scope]["combined"]
            metrics = {
                "selection": {
                    "kept": list(fs.kept),
                    "dropped": dict(fs.dropped),
                    "rule": dict(fs.rule),
                    "top": combined.head(10).to_dict(orient="records"),
                }
            }
            key_metrics = {
                "n_kept": len(fs.kept),
                "n_dropped": len(fs.dropped),
                "top_share": float(combined["share"].iloc[0]) if len(combined) else 0.0,
            }
            drafts.append(
                cohort_draft(
                    scope,
                    feature_panel,
                    universe_bars,
                    excl,
                    settings,
                    features=list(fs.kept),
                    metrics=metrics,
                    key_metrics=key_metrics,
                )  # fmt: skip
            )
        context.add_output_metadata({"cohort_id": drafts[0].cohort_id, "cohorts": len(drafts)})
        return StageSnapshots(
            "FEATURE_SELECTION", target, batch, attempt, tuple(drafts), {}, _run_info(context)
        )

    from assets.training import build_training_assets

    return [
        feature_exclusions,
        cohort_snapshot_target_ranking,
        feature_importances,
        featureset,
        cohort_snapshot_feature_selection,
        *build_training_assets(target, horizon, common, {**panel_in, **files_in}, own),
    ]


def _all_columns(universe: Universe) -> set[str]:
    common: set[str] | None = None
    for frame in universe.bars.values():
        common = set(frame.columns) if common is None else common & set(frame.columns)
    return common or set()


def _json_bytes(doc: Any) -> bytes:
    from cohortflow.canonical import canonical_json_bytes

    return canonical_json_bytes(doc)


def _key_metrics(metrics: Mapping[str, Any], score: float | None) -> dict[str, float]:
    """The flat headline numbers of a ranking cohort (per model summaries)."""
    out: dict[str, float] = {}
    for model, doc in sorted(metrics.items()):
        summary = doc.get("summary", {}) if isinstance(doc, Mapping) else {}
        for name, value in sorted(summary.items()):
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{model}.{name}"] = float(value)
    if score is not None:
        out["score"] = float(score)
    return out


def flatten_targets(targets: Sequence[tuple[str, int]]) -> list[AssetsDefinition]:
    out: list[AssetsDefinition] = []
    for target, horizon in targets:
        out += build_target_assets(target, horizon)
    return out
