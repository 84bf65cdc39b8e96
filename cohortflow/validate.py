"""Artifact validation: the logic behind the asset checks, usable without Dagster.

Every function returns a :class:`Verdict`: passed or not, one line saying why, and the
numbers behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cohortflow.layout import Scope
from cohortflow.store import Store

PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
IMPORTANCE_COLUMNS = ["feature", "importance", "rank", "share"]


@dataclass(frozen=True)
class Verdict:
    passed: bool
    message: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _verdict(problems: list[str], ok: str, **metadata: Any) -> Verdict:
    if problems:
        return Verdict(
            False, "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""), metadata
        )
    return Verdict(True, ok, metadata)


def leaks_remaining(store: Store, target: str, batch: str, attempt: int) -> Verdict:
    excl = store.read_exclusions(target, batch, attempt)
    cs = next(v for s, v in excl.items() if s.view == "CROSS_SECTIONAL")
    found = cs.found_here()
    names = [f"{e.feature} ({e.reason})" for e in found]
    return Verdict(
        not found,
        f"leaks found in attempt {attempt}: {', '.join(names)}"
        if found
        else f"no leak remains in attempt {attempt}",
        {"leaks_found": len(found), "excluded_total": len(cs.excluded())},
    )


def importances_schema(store: Store, target: str, batch: str, attempt: int) -> Verdict:
    problems = []
    items = store.read_importances(target, "FEATURE_SELECTION", batch, attempt)
    n = 0
    for scope, models in items.items():
        for model, frame in models.items():
            n += 1
            where = f"{scope.attempt_relpath()}/feature_importances/{model}_importances.csv"
            # the four documented columns first; a model may add its own (permutation: t_stat)
            if list(frame.columns)[: len(IMPORTANCE_COLUMNS)] != IMPORTANCE_COLUMNS:
                problems.append(
                    f"{where}: columns {list(frame.columns)} do not start with {IMPORTANCE_COLUMNS}"
                )
                continue
            if frame["feature"].duplicated().any():
                problems.append(f"{where}: duplicate features")
            if sorted(frame["rank"].tolist()) != list(range(1, len(frame) + 1)):
                problems.append(f"{where}: ranks are not 1..{len(frame)}")
    if not items:
        problems.append("no importances written")
    return _verdict(problems, f"{n} importance files have the expected columns", files=n)


def featureset_schema(store: Store, target: str, batch: str, attempt: int) -> Verdict:
    problems = []
    items = store.read_featuresets(target, batch, attempt)
    for scope, fs in items.items():
        doc = fs.to_dict()
        for key in ("features", "dropped", "rule"):
            if key not in doc:
                problems.append(f"{scope.attempt_relpath()}: featureset lacks {key!r}")
        if not fs.kept:
            problems.append(f"{scope.attempt_relpath()}: no feature kept")
        probes = [f for f in fs.kept if f.startswith("probe_")]
        if probes:
            problems.append(f"{scope.attempt_relpath()}: random probes kept: {probes}")
    return _verdict(problems, f"{len(items)} featuresets are well formed", featuresets=len(items))


def oof_schema(store: Store, target: str, batch: str, attempt: int) -> Verdict:
    scope = Scope(target, "TRAINING", "CROSS_SECTIONAL", batch, attempt)
    frame, plan = store.read_oof(scope)
    problems = []
    required = ["timestamp", "symbol", "fold", "y_true"]
    missing = [c for c in required if c not in frame.columns]
    preds = [c for c in frame.columns if c.startswith("pred_")]
    if missing:
        problems.append(f"missing columns {missing}")
    if not preds:
        problems.append("no pred_{model} column")
    if not missing and frame.duplicated(["timestamp", "symbol"]).any():
        problems.append("a (timestamp, symbol) row appears twice")
    if preds and frame[preds].isna().any().any():
        problems.append("missing predictions")
    for key in ("horizon", "embargo", "folds"):
        if key not in plan:
            problems.append(f"fold_plan.json lacks {key!r}")
    return _verdict(
        problems, f"{len(frame)} OOF rows, {len(preds)} models", rows=len(frame), models=len(preds)
    )


def stacking_files(store: Store, target: str, batch: str, attempt: int) -> Verdict:
    folder = Scope(target, "TRAINING", "CROSS_SECTIONAL", batch, attempt).stacking_dir(store.root)
    problems = []
    names = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    for required in ("model_card.json", "meta_learner.json"):
        if required not in names:
            problems.append(f"{required} missing")
    for name in names:
        head = (folder / name).read_bytes()[:2]
        if head in PICKLE_MAGIC or name.endswith((".pkl", ".pickle", ".joblib")):
            problems.append(f"{name} is a pickle")
    return _verdict(problems, f"stacking folder holds {names} in native formats", files=len(names))


def cohort_consistency(store: Store, target: str, stage: str, batch: str, attempt: int) -> Verdict:
    """Snapshot/metrics schema versions agree and the manifest is set."""
    problems = []
    cohorts = store.read_cohorts(target, stage, batch, attempt)
    for c in cohorts:
        if c.snapshot.get("scoring_schema_version") != c.metrics.get("schema", {}).get("scoring"):
            problems.append(f"{c.record.path}: scoring schema versions differ")
        if not c.snapshot.get("artifacts_manifest_sha256") and c.snapshot.get("artifacts"):
            problems.append(f"{c.record.path}: artifacts_manifest_sha256 is null")
    if not cohorts:
        problems.append("no cohort written")
    return _verdict(problems, f"{len(cohorts)} cohorts consistent", cohorts=len(cohorts))


def manifest_integrity(store: Store, target: str, stage: str, batch: str, attempt: int) -> Verdict:
    problems, ok = [], 0
    for scope in store.scopes(target, stage, batch, attempt):
        good, message = store.verify_manifest(scope)
        if good:
            ok += 1
        else:
            problems.append(message)
    return _verdict(problems, f"{ok} attempt folders match their manifests", folders=ok)


def comparability(store: Store, target: str, stage: str, batch: str, attempt: int) -> Verdict:
    problems, compared = [], 0
    for c in store.read_cohorts(target, stage, batch, attempt):
        if c.diff_prev is None:
            continue
        compared += 1
        verdict = c.diff_prev.get("verdict", {})
        if not verdict.get("comparable", False):
            problems.append(
                f"{c.record.path}: not comparable: {', '.join(verdict.get('reasons', []))}"
            )
    ok = f"{compared} cohorts comparable with their baseline" if compared else "no baseline yet"
    return _verdict(problems, ok, compared=compared)


__all__ = [
    "Verdict",
    "comparability",
    "cohort_consistency",
    "featureset_schema",
    "importances_schema",
    "leaks_remaining",
    "manifest_integrity",
    "oof_schema",
    "stacking_files",
]
