"""Read a stored OOF dataset (stage TRAINING) back for stacking, without Dagster.

``load_stacking_data(root, batch, attempt, target)`` reads
``targets/{target}/reproducibility/stage=TRAINING/CROSS_SECTIONAL/batch_{b}/attempt_{n}/oof/
oof_predictions.parquet`` with its ``fold_plan.json`` and the attempt's TRAINING cohort
metadata. When something is missing, the error names the exact path it looked for and
what does exist one level up (the targets, the batches, the attempts), so the caller can
correct the request without walking the tree by hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from cohortflow.canonical import sha256_hex
from cohortflow.errors import ArtifactNotFoundError, DataError, InvalidNameError, StoreError
from cohortflow.formats import json_bytes, parse_parquet, read_bytes, read_json
from cohortflow.fsio import atomic_write_bytes, write_json
from cohortflow.layout import (
    CROSS_SECTIONAL,
    METADATA_FILE,
    Scope,
    as_root,
    folder_state,
    run_file,
    sorted_attempts,
    unique_run_dir,
    validate_batch,
)
from cohortflow.names import validate_name
from cohortflow.store import Store
from cohortflow.verify import verify_folder

log = logging.getLogger(__name__)

STAGE = "TRAINING"
EXPORT_FILES = ("oof_predictions.parquet", "fold_plan.json", "metadata.json")
# the OOF column prefix of cohortflow.oof, repeated so that reading a dataset does not import
# scikit-learn and the model libraries
PRED_PREFIX = "pred_"
FOLD_PLAN_FOLDER = "oof"


class OOFColumnsError(DataError, ValueError):
    """A stored OOF dataset lacks ``y_true`` or every ``pred_`` column."""


@dataclass(frozen=True)
class StackingData:
    """An OOF dataset as stored, and where it came from.

    ``metadata``: batch, attempt, target, path (str), fold_plan (the fold_plan.json dict or
    None), rows, pred_columns, models, sha256 (of the parquet bytes), complete (the
    attempt's ``_COMPLETE`` marker exists), cohort_id and cohort_metadata (the attempt's
    TRAINING cohort ``metadata.json``, or None).
    """

    frame: pd.DataFrame
    metadata: dict


def _dirs(folder: Any) -> list[str]:
    """Sorted names of the sub-folders of ``folder`` ([] if it does not exist)."""
    try:
        return sorted(p.name for p in folder.iterdir() if p.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _batches(view_dir: Any) -> list[str]:
    return [name.removeprefix("batch_") for name in _dirs(view_dir) if name.startswith("batch_")]


def _read_json(path: Any) -> Any:
    """A JSON document, or None when the file is absent (malformed: one clear error)."""
    try:
        return read_json(path)
    except ArtifactNotFoundError:
        return None


def _not_found(root: Any, scope: Scope, path: Any) -> ArtifactNotFoundError:
    """The most specific "not found" error: missing target, batch, or attempt/file."""
    what = (
        f"OOF dataset not found for batch {scope.batch} attempt {scope.attempt} target "
        f"{scope.target}; expected {path}"
    )
    targets_dir = root / "targets"
    targets = _dirs(targets_dir)
    if scope.target not in targets:
        return ArtifactNotFoundError(f"{what}; targets under {targets_dir}: {targets}")
    view_dir = scope.view_dir(root)
    batch_dir = view_dir / f"batch_{scope.batch}"
    if not batch_dir.is_dir():
        batches = _batches(view_dir)
        if batches:
            return ArtifactNotFoundError(f"{what}; batches of target {scope.target}: {batches}")
        elsewhere = {}
        for name in targets:
            try:
                other = Scope(name, STAGE, CROSS_SECTIONAL, scope.batch, 0).view_dir(root)
            except InvalidNameError:  # a stray folder under targets/ is no target
                continue
            if found := _batches(other):
                elsewhere[name] = found
        return ArtifactNotFoundError(
            f"{what}; target {scope.target} has no {STAGE} batches; batches by target: {elsewhere}"
        )
    return ArtifactNotFoundError(f"{what}; attempts of this batch: {sorted_attempts(batch_dir)}")


def _cohort_metadata(root: Any, scope: Scope) -> tuple[str | None, dict | None]:
    """The attempt's TRAINING cohort id and metadata.json (the last cohort id if several)."""
    attempt_dir = scope.attempt_dir(root)
    found = []
    for name in _dirs(attempt_dir):
        if name.startswith("cohort="):
            cid = name.removeprefix("cohort=")
            meta = _read_json(scope.cohort_file(root, cid, METADATA_FILE))
            if isinstance(meta, dict):
                found.append((cid, meta))
    if len(found) > 1:
        log.warning("%s holds %d cohorts; using %s", attempt_dir, len(found), found[-1][0])
    return found[-1] if found else (None, None)


def load_stacking_data(root: Any, batch: str, attempt: int, target: str) -> StackingData:
    """The OOF dataset of ``target`` for one batch (12 hex, ``batch_`` prefix optional) and attempt.

    Raises :class:`~cohortflow.errors.ArtifactNotFoundError` naming the expected path and
    what exists (targets, batches of the target, attempts of the batch) when it is absent,
    :class:`OOFColumnsError` (a ValueError) naming the file when ``y_true`` or every
    ``pred_`` column is missing, and InvalidNameError for an unsafe batch or target name.
    """
    root = as_root(root)
    target = validate_name("target", target)
    if isinstance(batch, str):
        batch = batch.removeprefix("batch_")
    batch = validate_batch(batch)
    scope = Scope(target, STAGE, CROSS_SECTIONAL, batch, attempt)
    path = scope.oof_path(root)
    if not path.is_file():
        raise _not_found(root, scope, path)

    data = read_bytes(path)
    frame = parse_parquet(path, data)
    preds = [c for c in frame.columns if c.startswith(PRED_PREFIX)]
    missing = [c for c in ("y_true",) if c not in frame] + ([] if preds else [f"{PRED_PREFIX}*"])
    if missing:
        raise OOFColumnsError(
            path,
            f"OOF dataset lacks column(s) {missing}; it needs y_true and at least one "
            f"{PRED_PREFIX}{{model}} column; it has {list(frame.columns)}",
        )
    fold_plan = _read_json(scope.fold_plan_path(root, FOLD_PLAN_FOLDER))
    if fold_plan is None:
        log.warning("no fold_plan.json beside %s", path)
    # complete: sealed, and every file still what sealed it (a deleted fold plan is not)
    problems = [p.line() for p in verify_folder(Store(root), scope)]
    complete = folder_state(scope.attempt_dir(root))[0] and not problems
    cohort_id, cohort_meta = _cohort_metadata(root, scope)
    metadata = {
        "batch": batch,
        "attempt": scope.attempt,
        "target": target,
        "path": str(path),
        "fold_plan": fold_plan,
        "rows": len(frame),
        "pred_columns": preds,
        "models": [c.removeprefix(PRED_PREFIX) for c in preds],
        "sha256": sha256_hex(data),
        "complete": complete,
        "problems": problems,
        "cohort_id": cohort_id,
        "cohort_metadata": cohort_meta,
    }
    log.info("loaded OOF %s: %d rows, columns %s", path, len(frame), preds)
    return StackingData(frame=frame, metadata=metadata)


def export_stacking_data(data: StackingData, parent: Any, name: str | None = None) -> Any:
    """Copy a loaded OOF dataset into a new folder ``parent/name`` (default: a new run id).

    The folder is claimed with :func:`cohortflow.layout.unique_run_dir`, so two exports never
    share or overwrite one (an existing ``name`` is refused). It receives the stored parquet
    bytes unchanged (checked against ``metadata["sha256"]``), ``fold_plan.json`` when the
    source had one, and ``metadata.json`` (the provenance, without the fold plan). Returns
    the folder.
    """
    source = as_root(data.metadata["path"])
    raw = read_bytes(source)
    if sha256_hex(raw) != data.metadata["sha256"]:
        raise StoreError(
            f"{source} changed since it was loaded (sha256 differs); load it again to export it"
        )
    folder = unique_run_dir(as_root(parent), name)
    atomic_write_bytes(run_file(folder, EXPORT_FILES[0]), raw)
    if data.metadata.get("fold_plan") is not None:
        write_json(run_file(folder, EXPORT_FILES[1]), data.metadata["fold_plan"])
    write_json(
        run_file(folder, EXPORT_FILES[2]),
        {k: v for k, v in data.metadata.items() if k != "fold_plan"},
    )
    log.info("exported %s to %s", source, folder)
    return folder


def oof_label_end(root: Any, data: StackingData, horizon: int) -> tuple[Any, str]:
    """Each OOF row's label end (the timestamp of its symbol's bar ``horizon`` bars later),
    which the walk-forward validation purges on: from the attempt's stored feature panel,
    else, where that is gone, the row ``horizon`` OOF rows later of the same symbol (the
    OOF rows are every labelled training bar). Returns the array and where it came from."""
    import numpy as np

    from cohortflow.domain import ArtifactKind
    from cohortflow.store import AttemptKey

    frame = data.frame[["timestamp", "symbol"]].astype({"symbol": str})
    column = f"label_end_{int(horizon)}"
    try:
        panel = (
            Store(root)
            .read(
                ArtifactKind.FEATURE_PANEL,
                AttemptKey(data.metadata["batch"], data.metadata["attempt"]),
            )
            .frame
        )
        ends = panel[["timestamp", "symbol", column]].astype({"symbol": str})
        found = frame.merge(ends, on=["timestamp", "symbol"], how="left", validate="many_to_one")
        if not found[column].isna().any():
            return found[column].to_numpy(dtype="datetime64[ns]"), "the attempt's feature panel"
    except (ArtifactNotFoundError, KeyError):
        pass
    later = frame.groupby("symbol", sort=False)["timestamp"].shift(-int(horizon))
    return np.asarray(later.to_numpy(dtype="datetime64[ns]")), "the OOF rows of each symbol"


def fit_stack(data: StackingData, settings: Any, run_id: str, root: Any) -> dict[str, bytes]:
    """The meta-learner fitted on a stored OOF dataset, without regenerating it: its
    penalty chosen by walk-forward validation over the OOF dates (purged on each row's
    label end, as the graph does), then fitted on every OOF row. Returns the files of a
    stack run folder: ``meta_learner.json`` and ``model_card.json`` (naming the OOF file
    and its sha256)."""
    from cohortflow.stacking import fit_meta_learner

    meta = data.metadata
    plan = meta.get("fold_plan") or {}
    horizon = int(plan.get("horizon") or int(str(meta["target"]).rsplit("_", 1)[-1]))
    label_end, label_source = oof_label_end(root, data, horizon)
    learner, validation = fit_meta_learner(
        data.frame, meta["models"], horizon, settings, label_end=label_end
    )
    card = {
        "run": run_id,
        "source": {
            "oof": meta["path"],
            "oof_sha256": meta["sha256"],
            "rows": meta["rows"],
            "batch": meta["batch"],
            "attempt": meta["attempt"],
            "target": meta["target"],
            "cohort_id": meta.get("cohort_id"),
            "complete": meta["complete"],
        },
        "meta_learner": {"kind": learner.kind, "alpha": learner.alpha, "nonneg": learner.nonneg},
        "weights": learner.weights(),
        "validation": {
            "chosen_alpha": validation["chosen_alpha"],
            "mean_scores": validation["mean_scores"],
            "label_end_from": label_source,
        },
        "settings": {
            "meta_learner": settings.meta_learner,
            "nonneg_weights": settings.nonneg_weights,
            "n_splits": settings.n_splits,
            "embargo": settings.embargo_for(horizon),
        },
    }
    doc = {**learner.to_dict(), "target": meta["target"], "horizon": horizon}
    return {"meta_learner.json": json_bytes(doc), "model_card.json": json_bytes(card)}
