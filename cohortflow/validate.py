"""Artifact validation: the logic behind the asset checks, usable without Dagster.

Every function takes the store and an attempt key (``AttemptKey(batch, attempt,
target)``) and returns a :class:`Verdict`: passed or not, one line saying why, and the
numbers behind it. :func:`CHECKS` says which checks each artifact kind has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cohortflow.domain import ROLE, SNAPSHOT_KINDS, ArtifactKind, Stage, View
from cohortflow.errors import CohortflowError
from cohortflow.layout import folder_state
from cohortflow.leakage import next_attempt
from cohortflow.store import AttemptKey, Store

PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
IMPORTANCE_COLUMNS = ["feature", "importance", "rank", "share"]


@dataclass(frozen=True)
class Verdict:
    passed: bool
    message: str
    metadata: dict[str, Any] = field(default_factory=dict)
    # the check's severity when it fails: "ERROR", or "WARN" for what the next attempt fixes
    severity: str = "ERROR"


def _verdict(problems: list[str], ok: str, **metadata: Any) -> Verdict:
    if problems:
        return Verdict(
            False, "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""), metadata
        )
    return Verdict(True, ok, metadata)


def leaks_remaining(store: Store, key: AttemptKey, attempt_limit: int) -> Verdict:
    """Fails while features found leaking in this attempt are still in its inputs. A WARN
    when attempt n+1 will run without them; an ERROR when the leak-fix limit is reached."""
    excl = next(
        v
        for s, v in store.read(ArtifactKind.EXCLUSIONS, key).items()
        if s.view == View.CROSS_SECTIONAL
    )
    found = excl.found_here()
    names = [f"{e.feature} ({e.reason})" for e in found]
    if not found:
        return Verdict(
            True,
            f"no leak remains in attempt {key.attempt}",
            {"leaks_found": 0, "excluded_total": len(excl.excluded())},
        )
    fixed_next = next_attempt(excl, attempt_limit) is not None
    tail = (
        f"attempt {key.attempt + 1} runs without them"
        if fixed_next
        else f"the attempt limit ({attempt_limit}) is reached: they stay in this attempt's results"
    )
    return Verdict(
        False,
        f"leaks found in attempt {key.attempt}: {', '.join(names)}; {tail}",
        {"leaks_found": len(found), "excluded_total": len(excl.excluded())},
        "WARN" if fixed_next else "ERROR",
    )


def importances_schema(store: Store, key: AttemptKey) -> Verdict:
    problems = []
    items = store.read(ArtifactKind.IMPORTANCES, key)
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
    return _verdict(problems, f"{n} importance files have the expected columns", files=n)


def featureset_schema(store: Store, key: AttemptKey) -> Verdict:
    problems = []
    items = store.read(ArtifactKind.FEATURESETS, key)
    for scope, fs in items.items():
        if not fs.kept:
            problems.append(f"{scope.attempt_relpath()}: no feature kept")
        probes = [f for f in fs.kept if f.startswith("probe_")]
        if probes:
            problems.append(f"{scope.attempt_relpath()}: random probes kept: {probes}")
    return _verdict(problems, f"{len(items)} featuresets are well formed", featuresets=len(items))


def oof_schema(store: Store, key: AttemptKey) -> Verdict:
    oof = store.read(ArtifactKind.OOF, key)
    frame = oof.frame
    problems = []
    preds = [c for c in frame.columns if c.startswith("pred_")]
    if not preds:
        problems.append("no pred_{model} column")
    if frame.duplicated(["timestamp", "symbol"]).any():
        problems.append("a (timestamp, symbol) row appears twice")
    if preds and frame[preds].isna().any().any():
        problems.append("missing predictions")
    return _verdict(
        problems, f"{len(frame)} OOF rows, {len(preds)} models", rows=len(frame), models=len(preds)
    )


def stacking_files(store: Store, key: AttemptKey) -> Verdict:
    folder = key.scope(Stage.TRAINING).stacking_dir(store.root)
    problems = []
    files = sorted(folder.iterdir(), key=lambda p: p.name) if folder.exists() else []
    names = [p.name for p in files]
    for required in ("model_card.json", "meta_learner.json"):
        if required not in names:
            problems.append(f"{required} missing")
    for path in files:
        with path.open("rb") as fh:
            head = fh.read(2)
        if head in PICKLE_MAGIC or path.name.endswith((".pkl", ".pickle", ".joblib")):
            problems.append(f"{path.name} is a pickle")
    return _verdict(problems, f"stacking folder holds {names} in native formats", files=len(names))


def evaluation_reproduces(store: Store, key: AttemptKey) -> Verdict:
    doc = store.read(ArtifactKind.EVALUATION, key)
    ok = bool(doc.get("reproduces_saved_predictions"))
    diff = doc.get("max_abs_diff_vs_saved")
    return Verdict(
        ok,
        f"the stack loaded from its files {'reproduces' if ok else 'does NOT reproduce'} the "
        f"saved test predictions (max |diff| {diff})",
        {"max_abs_diff": diff},
    )


def _cohorts(store: Store, key: AttemptKey, stage: Stage) -> list[Any]:
    return store.read(ROLE_OF_STAGE[stage], key)


def cohort_consistency(store: Store, key: AttemptKey, stage: Stage) -> Verdict:
    """snapshot.json's scoring schema equals metrics.json's and its own nested copy; the
    artifacts manifest is set."""
    problems = []
    cohorts = _cohorts(store, key, stage)
    for c in cohorts:
        read = c.snapshot.get("scoring_schema_read", {})
        if "snapshot_claimed" in read:
            problems.append(
                f"{c.record.path}: snapshot.json says scoring {read['snapshot_claimed']}, "
                f"metrics.json {read['version']}"
            )
        if not c.snapshot.get("artifacts_manifest_sha256") and c.snapshot.get("artifacts"):
            problems.append(f"{c.record.path}: artifacts_manifest_sha256 is null")
    if not cohorts:
        problems.append("no cohort written")
    return _verdict(problems, f"{len(cohorts)} cohorts consistent", cohorts=len(cohorts))


def manifest_integrity(store: Store, key: AttemptKey, stage: Stage) -> Verdict:
    """Every file of the stage's attempt folders still matches what sealed them."""
    from cohortflow.verify import verify_folder

    problems, ok = [], 0
    for scope in store.scopes(key.target, stage, key.batch, key.attempt):
        found = verify_folder(store, scope)
        if found:
            problems += [p.line() for p in found]
        else:
            ok += 1
    return _verdict(problems, f"{ok} attempt folders match their seals", folders=ok)


def comparability(store: Store, key: AttemptKey, stage: Stage) -> Verdict:
    problems, compared = [], 0
    for c in _cohorts(store, key, stage):
        if c.diff_prev is None:
            continue
        compared += 1
        verdict = c.diff_prev.get("verdict", {})
        if not verdict.get("comparable", False):
            problems.append(
                f"{c.record.path}: not comparable: {', '.join(verdict.get('reasons', []))}"
            )
    ok = f"{compared} cohorts comparable with their baseline" if compared else "no baseline yet"
    return Verdict(not problems, "; ".join(problems[:5]) or ok, {"compared": compared}, "WARN")


def attempt_sealed(store: Store, key: AttemptKey, stage: Stage) -> Verdict:
    """The stage's attempt folders are sealed: complete, and never to change again."""
    scopes = store.scopes(key.target, stage, key.batch, key.attempt)
    open_ = [
        s.attempt_relpath()
        for s in scopes
        if not s.attempt_dir(store.root).exists() or not folder_state(s.attempt_dir(store.root))[0]
    ]
    if open_:
        return Verdict(
            False,
            f"attempt {key.attempt} is incomplete: {len(open_)} of {len(scopes)} {stage} folders "
            f"are not sealed ({open_[0]} ...); `cohortflow run` completes it",
            {"unsealed": len(open_), "folders": len(scopes)},
        )
    return Verdict(True, f"{len(scopes)} {stage} folders sealed", {"folders": len(scopes)})


ROLE_OF_STAGE = {role.stage: role.kind for role in ROLE.values() if role.is_snapshot}

Check = Callable[..., Verdict]


@dataclass(frozen=True)
class CheckDef:
    """One asset check: its name, what it says, and its logic (``fn(store, key, ...)``)."""

    name: str
    description: str
    fn: Check
    needs: str = ""  # "stage" or "limit": the extra argument fn takes


SEALED = CheckDef(
    "attempt_sealed",
    "This attempt's folders for the asset's stage are sealed (_COMPLETE): complete, and "
    "never to change again. Red after a partial materialization until `cohortflow run` "
    "completes the attempt.",
    attempt_sealed,
    "stage",
)
SNAPSHOT_CHECKS = (
    CheckDef(
        "snapshot_schema",
        "snapshot.json's scoring_schema_version equals metrics.json's schema.scoring; the "
        "artifacts manifest is set.",
        cohort_consistency,
        "stage",
    ),
    CheckDef(
        "manifest_integrity",
        "Every file of the stage's attempt folders matches what sealed it (cohortflow verify).",
        manifest_integrity,
        "stage",
    ),
    CheckDef(
        "comparable_with_previous",
        "diff_prev.json's verdict: comparable with the previous snapshot (WARN when not).",
        comparability,
        "stage",
    ),
)

#: The checks of each artifact kind, besides :data:`SEALED` (which every kind with a
#: stage folder has).
CHECKS: dict[ArtifactKind, tuple[CheckDef, ...]] = {
    ArtifactKind.EXCLUSIONS: (
        CheckDef(
            "no_leaks_remain",
            "Fails while features found leaking in this attempt are still in use: a WARN when "
            "attempt n+1 runs without them, an ERROR when the attempt limit is reached.",
            leaks_remaining,
            "limit",
        ),
    ),
    ArtifactKind.IMPORTANCES: (
        CheckDef(
            "importances_schema",
            "Every importance CSV has feature, importance, rank, share; ranks 1..n.",
            importances_schema,
        ),
    ),
    ArtifactKind.FEATURESETS: (
        CheckDef(
            "featureset_schema",
            "Featuresets keep at least one feature and no random probe.",
            featureset_schema,
        ),
    ),
    ArtifactKind.OOF: (
        CheckDef(
            "oof_schema",
            "The OOF parquet has one row per (timestamp, symbol) and a prediction per model.",
            oof_schema,
        ),
    ),
    ArtifactKind.STACKING: (
        CheckDef(
            "native_formats",
            "The stacking folder holds its model card and meta-learner, and no pickle.",
            stacking_files,
        ),
    ),
    ArtifactKind.EVALUATION: (
        CheckDef(
            "reproduces_saved_predictions",
            "The stack loaded back from its native files reproduces its saved test predictions.",
            evaluation_reproduces,
        ),
    ),
    **{kind: SNAPSHOT_CHECKS for kind in SNAPSHOT_KINDS},
}


def checks_of(kind: ArtifactKind) -> tuple[CheckDef, ...]:
    """Every check of an artifact kind (the sealed check last)."""
    own = CHECKS.get(kind, ())
    return (*own, SEALED) if ROLE[kind].stage is not None else own


def run_check(
    check: CheckDef, store: Store, key: AttemptKey, kind: ArtifactKind, attempt_limit: int
) -> Verdict:
    """Evaluate one check; an artifact that cannot be read fails it with the reason."""
    extra: tuple[Any, ...] = ()
    if check.needs == "stage":
        extra = (ROLE[kind].stage,)
    elif check.needs == "limit":
        extra = (attempt_limit,)
    try:
        return check.fn(store, key, *extra)
    except CohortflowError as exc:
        return Verdict(False, str(exc), {})


__all__ = [
    "CHECKS",
    "SEALED",
    "CheckDef",
    "Verdict",
    "attempt_sealed",
    "checks_of",
    "comparability",
    "cohort_consistency",
    "featureset_schema",
    "importances_schema",
    "leaks_remaining",
    "manifest_integrity",
    "oof_schema",
    "run_check",
    "stacking_files",
]
