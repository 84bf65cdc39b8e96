"""The stages of one attempt for one target, as typed functions (no Dagster).

Each asset body in the Dagster shell loads its inputs, calls one of these and returns
the result with metadata; ``bench/run.py``'s bare graph calls the same functions in the
same order. Every stage sees the training window only (:attr:`TargetAttempt.holdout`):
which features are excluded or kept must not depend on the held-out period the stack is
judged on.

Attempt semantics: attempt n uses every feature except those found leaking in attempts
< n (:meth:`cohortflow.leakage.Exclusions.inherited`). Leaks that attempt n itself finds
are recorded in its exclusions and attempt n+1 runs without them.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from cohortflow.bars import Universe
from cohortflow.domain import Stage, View
from cohortflow.features import Panel, feature_specs
from cohortflow.formats import csv_bytes, json_bytes
from cohortflow.layout import Scope
from cohortflow.leakage import Exclusions, detect_leaks
from cohortflow.metrics import r2
from cohortflow.oof import OOFResult, generate_oof
from cohortflow.portfolio import portfolio_summary
from cohortflow.ranking import rank_target, symbols_for_view
from cohortflow.selection import Featureset, compute_importances_many, prune
from cohortflow.settings import Settings
from cohortflow.snapshots import CohortDraft, draft_from_rows
from cohortflow.splits import Holdout, holdout_of
from cohortflow.stacking import LoadedStack, StackingResult, column_metrics, fit_stacking
from cohortflow.store import AttemptKey, StageSnapshots

CS, SY = View.CROSS_SECTIONAL, View.SYMBOL_SPECIFIC


def run_info(run_id: str) -> dict[str, Any]:
    """Who wrote a cohort: the run id, the time and the host (``metadata.json``'s ``run``
    key, which no hash covers)."""
    return {
        "dagster_run_id": run_id,
        "finished_at": datetime.now(UTC).isoformat(),
        "host": socket.gethostname(),
    }


@dataclass(frozen=True, eq=False)
class TargetAttempt:
    """What every stage of one target in one attempt works from.

    ``universe`` needs its bars only for the exclusions (the look-ahead test recomputes
    features on them); the other stages use what it is (signature, file hashes).
    """

    target: str
    horizon: int
    batch: str
    attempt: int
    settings: Settings
    panel: Panel
    universe: Universe
    run: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> AttemptKey:
        return AttemptKey(self.batch, self.attempt, self.target)

    def scope(self, stage: Stage, symbol: str | None = None) -> Scope:
        view = CS if symbol is None else SY
        return Scope(self.target, stage, view, self.batch, self.attempt, symbol)

    @property
    def holdout(self) -> Holdout:
        """The training window and the held-out period (computed once per panel)."""
        s = self.settings
        return holdout_of(
            self.panel.frame, self.horizon, s.test_fraction, s.embargo_for(self.horizon)
        )

    @property
    def view_symbols(self) -> list[str]:
        """The symbols that get a SYMBOL_SPECIFIC view (the longest histories)."""
        return symbols_for_view(self.panel.frame, self.target, self.settings.symbol_views)

    def usable(self, exclusions: Exclusions) -> list[str]:
        """The panel's features but those found leaking in earlier attempts."""
        dropped = {e.feature for e in exclusions.inherited()}
        return [f for f in self.panel.features if f not in dropped]

    def draft(
        self,
        scope: Scope,
        rows: pd.DataFrame,
        *,
        features: Sequence[str],
        excluded: Mapping[str, str],
        metrics: Mapping[str, Any],
        key_metrics: Mapping[str, float],
    ) -> CohortDraft:
        return draft_from_rows(
            scope,
            rows,
            universe_sig=self.universe.universe_sig,
            file_hashes={f.symbol: f.sha256 for f in self.universe.files},
            features=features,
            excluded=excluded,
            metrics=metrics,
            key_metrics=key_metrics,
            settings=self.settings.fingerprint_fields(),
        )

    def snapshots(
        self,
        stage: Stage,
        drafts: Sequence[CohortDraft],
        extras: Mapping[Scope, Mapping[str, bytes]] | None = None,
    ) -> StageSnapshots:
        return StageSnapshots(
            stage, self.target, self.batch, self.attempt, tuple(drafts), extras or {}, self.run
        )


def rows_with_target(frame: pd.DataFrame, target: str, symbol: str | None = None) -> pd.DataFrame:
    """The rows of ``frame`` with a target (of one symbol, if given): one mask, one copy."""
    keep = frame[target].notna().to_numpy()
    if symbol is not None:
        keep = keep & (frame["symbol"] == symbol).to_numpy()
    return frame[keep]


def cross_sectional(items: Mapping[Scope, Any]) -> Any:
    """The cross-sectional value of a by-scope mapping."""
    return next(v for s, v in items.items() if s.view == CS)


def inherited_reasons(exclusions: Exclusions) -> dict[str, str]:
    """Feature -> reason of the features found leaking in earlier attempts."""
    return {e.feature: e.reason for e in exclusions.inherited()}


# --------------------------------------------------------------------------- TARGET_RANKING
def find_exclusions(t: TargetAttempt, previous: Exclusions | None) -> dict[Scope, Exclusions]:
    """Name rules, the look-ahead test and the dominance test on the training window, with
    the exclusions of attempt n-1 inherited; one entry per view folder."""
    columns = set.intersection(*(set(b.columns) for b in t.universe.bars.values()))
    specs = [s for s in feature_specs(columns, t.settings) if s.name in t.panel.computed]
    train_panel = dataclasses.replace(t.panel, frame=t.holdout.train)
    excl = detect_leaks(
        train_panel, t.target, t.horizon, specs, t.universe.bars, t.settings, t.attempt, previous
    )
    out = {t.scope(Stage.TARGET_RANKING): excl}
    # symbol folders exist only for the symbols that get that view
    for symbol in t.view_symbols:
        out[t.scope(Stage.TARGET_RANKING, symbol)] = excl.for_symbol(symbol)
    return out


def inherited_only(t: TargetAttempt, previous: Exclusions | None) -> dict[Scope, Exclusions]:
    """The exclusions attempt ``t`` inherits (attempt n-1's, all of them), before its own
    tests: all that :func:`rank` reads."""
    entries = () if previous is None else previous.entries
    return {t.scope(Stage.TARGET_RANKING): Exclusions(t.target, t.attempt, entries)}


def exclusions_and_ranking(
    t: TargetAttempt, previous: Exclusions | None
) -> tuple[dict[Scope, Exclusions], StageSnapshots]:
    """:func:`find_exclusions` and :func:`rank` side by side: the ranking reads only the
    exclusions inherited from earlier attempts, so it need not wait for this attempt's
    leak tests (mostly one thread's work) -- its fits fill the other cores meanwhile.
    The same results as one after the other."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="cohortflow-exclusions") as pool:
        found = pool.submit(find_exclusions, t, previous)
        ranked = rank(t, inherited_only(t, previous))
        return found.result(), ranked


def rank(t: TargetAttempt, exclusions: Mapping[Scope, Exclusions]) -> StageSnapshots:
    """How predictable the target is, both views, as cohort snapshots; each folder also
    holds the ranking's importances, its fold plan and the featureset it saw (the features
    after the inherited exclusions)."""
    excl = cross_sectional(exclusions)
    features = t.usable(excl)
    ranking = rank_target(
        t.panel.frame, t.target, t.horizon, features, t.settings, symbols=t.view_symbols
    )
    excluded = inherited_reasons(excl)
    drafts, extras = [], {}
    for view in (ranking.cross_sectional, *ranking.symbol_specific):
        scope = t.scope(Stage.TARGET_RANKING, view.symbol)
        score = ranking.score if view.symbol is None else None
        drafts.append(
            t.draft(
                scope,
                rows_with_target(t.panel.frame, t.target, view.symbol),
                features=features,
                excluded=excluded,
                metrics=view.metrics,
                key_metrics=key_metrics(view.metrics, score),
            )
        )
        seen = Featureset(
            t.target,
            scope.view,
            scope.symbol,
            tuple(features),
            {f: f"excluded_leak ({reason})" for f, reason in excluded.items()},
            {"rule": "the panel's features without those excluded in earlier attempts"},
        )
        extras[scope] = {
            **{
                f"feature_importances/{model}_importances.csv": csv_bytes(frame)
                for model, frame in view.importances.items()
            },
            "fold_plan.json": json_bytes(view.fold_plan.to_dict()),
            "featureset_artifacts/featureset_post_prune.json": json_bytes(seen.to_dict()),
        }
    return t.snapshots(Stage.TARGET_RANKING, drafts, extras)


def key_metrics(metrics: Mapping[str, Any], score: float | None) -> dict[str, float]:
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


# --------------------------------------------------------------------------- FEATURE_SELECTION
def importances(
    t: TargetAttempt, exclusions: Mapping[Scope, Exclusions]
) -> dict[Scope, dict[str, pd.DataFrame]]:
    """LightGBM gain, XGBoost gain, permutation on held-out purged folds and their rank
    combination (with random probes), both views, on the training window.

    The folds of every view are fitted as one batch (:func:`compute_importances_many`):
    the many small symbol-view fits keep every core busy where one view after another
    would leave all but one idle. Each view's numbers are those of that view alone."""
    features = t.usable(cross_sectional(exclusions))
    train = t.holdout.train
    symbols = [None, *t.view_symbols]
    frames = [rows_with_target(train, t.target, symbol) for symbol in symbols]
    found = compute_importances_many(frames, t.target, t.horizon, features, t.settings)
    return {
        t.scope(Stage.FEATURE_SELECTION, symbol): by_model
        for symbol, by_model in zip(symbols, found, strict=True)
    }


def featuresets(
    t: TargetAttempt,
    importances: Mapping[Scope, Mapping[str, pd.DataFrame]],
    exclusions: Mapping[Scope, Exclusions],
) -> dict[Scope, Featureset]:
    """The features kept per view, in order, and each dropped one with its reason (every
    feature goes in, so the leaks excluded earlier are listed as dropped)."""
    excluded = sorted(inherited_reasons(cross_sectional(exclusions)))
    train = t.holdout.train
    return {
        scope: prune(
            by_model,
            rows_with_target(train, t.target, scope.symbol),
            list(t.panel.features),
            t.target,
            scope.view,
            scope.symbol,
            t.settings,
            excluded=excluded,
        )
        for scope, by_model in importances.items()
    }


def selection_snapshots(
    t: TargetAttempt,
    importances: Mapping[Scope, Mapping[str, pd.DataFrame]],
    featuresets: Mapping[Scope, Featureset],
    exclusions: Mapping[Scope, Exclusions],
) -> StageSnapshots:
    excluded = inherited_reasons(cross_sectional(exclusions))
    drafts = []
    for scope, fs in sorted(featuresets.items(), key=lambda kv: (kv[0].view, kv[0].symbol or "")):
        combined = importances[scope]["combined"]
        drafts.append(
            t.draft(
                scope,
                rows_with_target(t.panel.frame, t.target, scope.symbol),
                features=list(fs.kept),
                excluded=excluded,
                metrics={
                    "selection": {
                        "kept": list(fs.kept),
                        "dropped": dict(fs.dropped),
                        "rule": dict(fs.rule),
                        "top": combined.head(10).to_dict(orient="records"),
                    }
                },
                key_metrics={
                    "n_kept": len(fs.kept),
                    "n_dropped": len(fs.dropped),
                    "top_share": float(combined["share"].iloc[0]) if len(combined) else 0.0,
                },
            )
        )
    return t.snapshots(Stage.FEATURE_SELECTION, drafts)


# --------------------------------------------------------------------------- TRAINING
def oof_dataset(t: TargetAttempt, featuresets: Mapping[Scope, Featureset]) -> OOFResult:
    """Out-of-fold predictions of the base models on one purged fold plan they share."""
    features = list(cross_sectional(featuresets).kept)
    return generate_oof(t.holdout.train, t.target, t.horizon, features, t.settings)


def stacking_model(
    t: TargetAttempt, featuresets: Mapping[Scope, Featureset], oof: OOFResult
) -> StackingResult:
    """A meta-learner on the OOF columns, base models refit on the whole training window."""
    h = t.holdout
    features = list(cross_sectional(featuresets).kept)
    return fit_stacking(
        oof, h.train, h.test, t.target, t.horizon, features, t.settings, split_info=h.info
    )


def evaluation(t: TargetAttempt, stack: LoadedStack, saved: pd.DataFrame) -> dict[str, Any]:
    """The held-out period scored with the stack as a user loads it (native files), and
    whether it reproduces the predictions saved when it was fitted."""
    test = t.holdout.test
    base = stack.predict_base(test)
    frame = pd.DataFrame(
        {"timestamp": test["timestamp"].to_numpy(), "y_true": test[t.target].to_numpy()}
    )
    for col in base.columns:
        frame[col] = base[col].to_numpy()
    frame["pred_stack"] = stack.predict(test)
    scores = {
        col.removeprefix("pred_"): column_metrics(
            frame["y_true"].to_numpy(),
            frame[col].to_numpy(),
            frame["timestamp"].to_numpy(),
            t.horizon,
            probability=col == "pred_stack" and stack.meta.kind == "logistic",
        )
        for col in frame.columns
        if col.startswith("pred_")
    }
    diff = float(np.max(np.abs(frame["pred_stack"].to_numpy() - saved["pred_stack"].to_numpy())))
    return {
        "target": t.target,
        "test_rows": int(len(test)),
        "test_window": {
            "first": pd.Timestamp(test["timestamp"].min()).isoformat(),
            "last": pd.Timestamp(test["timestamp"].max()).isoformat(),
        },
        "metrics_from_loaded_model": scores,
        "reproduces_saved_predictions": bool(diff <= 1e-9),
        "max_abs_diff_vs_saved": diff,
    }


def portfolio(t: TargetAttempt, saved: pd.DataFrame) -> dict[str, Any]:
    """The held-out predictions as a factor (:func:`cohortflow.portfolio.portfolio_report`):
    quantile returns, the long-short spread and its Sharpe ratio deflated for the trials,
    turnover, IC decay. Trials: the batch's targets × attempts so far (a number every run
    of this attempt agrees on, whatever order its targets run in)."""
    from cohortflow.portfolio import Trials, lead_returns, portfolio_report

    trials = Trials(len(t.settings.targets) * (t.attempt + 1))
    leads = lead_returns(t.panel.frame, t.horizon)
    doc = portfolio_report(saved, leads, t.horizon, trials=trials)
    return {
        "target": t.target,
        "trials_basis": "targets x attempts of the batch",
        **doc,
    }


def training_snapshots(
    t: TargetAttempt,
    featuresets: Mapping[Scope, Featureset],
    oof: OOFResult,
    evaluated: Mapping[str, Any],
    folio: Mapping[str, Any],
) -> StageSnapshots:
    fs = cross_sectional(featuresets)
    oof_scores = {
        col.removeprefix("pred_"): float(
            r2(oof.frame["y_true"].to_numpy(), oof.frame[col].to_numpy())
        )
        for col in oof.frame.columns
        if col.startswith("pred_")
    }
    key = {
        f"test.{model}.{name}": float(value)
        for model, scores in evaluated["metrics_from_loaded_model"].items()
        for name, value in scores.items()
        if name in ("r2", "rank_ic", "ic") and isinstance(value, int | float)
    }
    key.update({f"oof.{m}.r2": v for m, v in oof_scores.items()})
    summary = portfolio_summary(folio)
    key.update({f"portfolio.{k}": v for k, v in summary.items() if isinstance(v, int | float)})
    train = t.holdout.train
    draft = t.draft(
        t.scope(Stage.TRAINING),
        train[train[t.target].notna()],
        features=list(fs.kept),
        excluded={k: v for k, v in fs.dropped.items() if str(v).startswith("excluded")},
        metrics={
            "evaluation": dict(evaluated),
            "oof": {"r2": oof_scores},
            "portfolio": summary,
        },
        key_metrics=key,
    )
    return t.snapshots(Stage.TRAINING, [draft])


# --------------------------------------------------------------------------- the report
def ranking_table(cohorts_by_target: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """One row per target from its cross-sectional ranking cohort (read back from disk:
    :class:`cohortflow.store.CohortView`), best score first."""
    rows = []
    for target, cohorts in cohorts_by_target.items():
        cs = [c for c in cohorts if c.snapshot.get("view") == CS]
        if not cs:
            continue
        km = cs[0].snapshot.get("key_metrics", {})
        row = {"target": target, "cohort_id": cs[0].snapshot["cohort_id"], "score": km.get("score")}
        row.update({k: km[k] for k in sorted(km) if k != "score"})
        row["n_symbol_cohorts"] = sum(1 for c in cohorts if c.snapshot.get("view") == SY)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.sort_values(["score", "target"], ascending=[False, True], kind="mergesort")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


__all__ = [
    "TargetAttempt",
    "cross_sectional",
    "evaluation",
    "exclusions_and_ranking",
    "featuresets",
    "find_exclusions",
    "importances",
    "inherited_only",
    "inherited_reasons",
    "key_metrics",
    "oof_dataset",
    "portfolio",
    "rank",
    "ranking_table",
    "rows_with_target",
    "run_info",
    "selection_snapshots",
    "stacking_model",
    "training_snapshots",
]
