"""Cohort snapshots: metadata.json, metrics.json, snapshot.json, diff_prev.json, drift.json.

A stage hands the store a :class:`CohortDraft` (what was evaluated and how it scored); the
store writes the attempt's other artifacts first, then calls :func:`finalize_cohort` with
the attempt folder on disk, so ``artifacts_manifest_sha256`` covers the files as they
really are. Run-specific facts (Dagster run id, time, host) live only under
``metadata.json["run"]``; no hash covers them, so reruns are byte-identical elsewhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from cohortflow.canonical import canonical_json_bytes, fingerprint, normalize, sha256_hex
from cohortflow.errors import CorruptFileError
from cohortflow.layout import COHORT_FILES, COMPLETE_MARKER, PROGRESS_MARKER, Scope, cohort_id
from cohortflow.settings import CONFIG_VERSION, DEFAULT_SCORING_SCHEMA
from cohortflow.version import code_version

METRICS_SCHEMA_VERSION = "1"
SNAPSHOT_FILES = COHORT_FILES
# what readers of older snapshots fall back to when a cohort records no version at all
LEGACY_SCORING_SCHEMA = "1.1"


@dataclass(frozen=True)
class CohortDraft:
    """Everything that defines and scores one cohort, before it is written."""

    scope: Scope
    universe_sig: str
    symbols: tuple[str, ...]
    first_bar: pd.Timestamp
    last_bar: pd.Timestamp
    rows: int
    settings: Mapping[str, Any]
    data_fingerprint: str
    features: tuple[str, ...]
    excluded: Mapping[str, str]
    metrics: Mapping[str, Any]
    key_metrics: Mapping[str, float]
    data_profile: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def featureset_fingerprint(self) -> str:
        return fingerprint({"features": list(self.features), "excluded": dict(self.excluded)})

    def identity(self) -> dict[str, Any]:
        """What defines the cohort; its fingerprint is the cohort id's hash8."""
        return {
            "data": self.data_fingerprint,
            "target": self.scope.target,
            "stage": self.scope.stage,
            "view": self.scope.view,
            "symbol": self.scope.symbol,
            "universe_sig": self.universe_sig,
            "settings": dict(self.settings),
            "featureset": self.featureset_fingerprint,
        }

    @property
    def cohort_id(self) -> str:
        return cohort_id(
            view=self.scope.view,
            last_bar=self.last_bar,
            universe_sig=self.universe_sig,
            min_cs=int(self.settings.get("min_cs", 1)),
            max_rows=int(self.settings.get("max_rows", 0)),
            cfg_version=CONFIG_VERSION,
            identity=self.identity(),
        )


@dataclass(frozen=True)
class ManifestRecord:
    relpath: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Baseline:
    """The previous comparable snapshot a new cohort is diffed against."""

    path: str  # relative to the output root
    snapshot: Mapping[str, Any]
    metadata: Mapping[str, Any]
    snapshot_sha256: str


@dataclass(frozen=True)
class CohortFiles:
    cohort_id: str
    documents: Mapping[str, Any]  # file name -> JSON document

    @property
    def snapshot(self) -> Mapping[str, Any]:
        return self.documents["snapshot.json"]


def manifest_records(attempt_dir: Any) -> list[ManifestRecord]:
    """The attempt's artifact files: everything under the attempt folder except cohort
    folders, the completion marker and hidden (temporary/lock) files; sorted by path."""
    records = []
    for path in _walk_files(attempt_dir):
        rel = (
            path.relative_to(attempt_dir).as_posix() if hasattr(path, "relative_to") else str(path)
        )
        parts = rel.split("/")
        if parts[0].startswith("cohort=") or rel in (COMPLETE_MARKER, PROGRESS_MARKER):
            continue
        if any(p.startswith(".") for p in parts):
            continue
        data = path.read_bytes()
        records.append(ManifestRecord(rel, len(data), sha256_hex(data)))
    return sorted(records, key=lambda r: r.relpath)


def _walk_files(folder: Any) -> Iterable[Any]:
    if not folder.exists():
        return []
    out = []
    stack = [folder]
    while stack:
        current = stack.pop()
        for child in current.iterdir():
            if child.is_dir():
                stack.append(child)
            else:
                out.append(child)
    return out


def manifest_sha256(records: Sequence[ManifestRecord]) -> str | None:
    """sha256 over sorted ``relpath\\0size\\0sha256\\n`` records; None only when empty."""
    if not records:
        return None
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.relpath):
        h.update(f"{r.relpath}\0{r.size}\0{r.sha256}\n".encode())
    return h.hexdigest()


def metadata_digest(metadata: Mapping[str, Any]) -> str:
    """sha256 of a cohort's metadata.json without its ``run`` key (the run id, time and
    host that wrote it, which no hash covers: DESIGN §3)."""
    return sha256_hex(canonical_json_bytes({k: v for k, v in metadata.items() if k != "run"}))


def scoring_version(
    snapshot: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None
) -> tuple[str, str]:
    """The scoring schema version a cohort was scored under, and where it was read from.

    ``metrics.json``'s ``schema.scoring`` is the authority; older snapshots carry only a
    top-level ``scoring_schema_version`` (sometimes a stale ``"1.1"`` beside metrics
    written as 1.2, the bug the reference fixed), or nothing.
    """
    schema = (metrics or {}).get("schema")
    if isinstance(schema, Mapping) and schema.get("scoring") is not None:
        return str(schema["scoring"]), "metrics.json schema.scoring"
    outputs = (snapshot or {}).get("outputs")
    nested = outputs.get("metrics", {}).get("schema", {}) if isinstance(outputs, Mapping) else {}
    if isinstance(nested, Mapping) and nested.get("scoring") is not None:
        return str(nested["scoring"]), "snapshot.json outputs.metrics.schema.scoring"
    if (snapshot or {}).get("scoring_schema_version") is not None:
        return str(snapshot["scoring_schema_version"]), "snapshot.json scoring_schema_version"
    return LEGACY_SCORING_SCHEMA, "default for cohorts that record none"


def normalize_scoring(
    snapshot: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None, where: Any
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Older snapshots in today's shape: ``scoring_schema_version`` at the top level equal
    to ``outputs.metrics.schema.scoring`` and to metrics.json's ``schema.scoring``, plus
    ``scoring_schema_read`` saying which version was read, from where, and what the
    snapshot claimed if it disagreed. Documents that are not mappings are refused."""
    for name, doc in (("snapshot.json", snapshot), ("metrics.json", metrics)):
        if doc is not None and not isinstance(doc, Mapping):
            raise CorruptFileError(f"{where}/{name}", "expected a JSON mapping at the top level")
    if snapshot is None and metrics is None:
        return None, None
    version, source = scoring_version(snapshot, metrics)
    snap = dict(snapshot or {})
    claimed = snap.get("scoring_schema_version")
    snap["scoring_schema_version"] = version
    outputs = dict(snap.get("outputs") or {})
    outputs["metrics"] = {**dict(outputs.get("metrics") or {}), "schema": {"scoring": version}}
    snap["outputs"] = outputs
    read = {"version": version, "source": source}
    if claimed is not None and str(claimed) != version:
        read["snapshot_claimed"] = str(claimed)
    snap["scoring_schema_read"] = read
    mets = dict(metrics or {})
    mets["schema"] = {**dict(mets.get("schema") or {}), "scoring": version}
    return snap, mets


def flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys; lists are kept as values."""
    out: dict[str, Any] = {}
    for key in sorted(doc):
        value = doc[key]
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def diff_flat(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Old, new and delta per flattened key that changed (DVC's `metrics diff` shape)."""
    fo, fn = flatten(old), flatten(new)
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(set(fo) | set(fn)):
        a, b = fo.get(key), fn.get(key)
        if a == b:
            continue
        entry: dict[str, Any] = {"old": a, "new": b}
        if _is_number(a) and _is_number(b):
            entry["delta"] = b - a
        out[key] = entry
    return out


def _comparability(snapshot: Mapping[str, Any], baseline: Baseline) -> dict[str, Any]:
    reasons = []
    old = baseline.snapshot
    if old.get("scoring_schema_version") != snapshot.get("scoring_schema_version"):
        reasons.append(
            f"scoring schema {old.get('scoring_schema_version')} -> {snapshot.get('scoring_schema_version')}"
        )
    old_fp, new_fp = old.get("fingerprints", {}), snapshot.get("fingerprints", {})
    if old_fp.get("settings") != new_fp.get("settings"):
        reasons.append("settings changed")
    for key in ("target", "stage", "view", "symbol"):
        if old.get(key) != snapshot.get(key):
            reasons.append(f"{key} differs")
    notes = []
    if old_fp.get("data") != new_fp.get("data"):
        notes.append("data changed")
    if old_fp.get("featureset") != new_fp.get("featureset"):
        notes.append("featureset changed")
    return {
        "comparable": not reasons,
        "verdict": "comparable" if not reasons else "not_comparable",
        "reasons": reasons,
        "notes": notes,
    }


def build_diff_prev(snapshot: Mapping[str, Any], baseline: Baseline) -> dict[str, Any]:
    old_features = set(baseline.snapshot.get("features", []))
    new_features = set(snapshot.get("features", []))
    old_excl = dict(baseline.snapshot.get("excluded", {}))
    new_excl = dict(snapshot.get("excluded", {}))
    return {
        "baseline": {
            "cohort_id": baseline.snapshot.get("cohort_id"),
            "path": baseline.path,
            "snapshot_sha256": baseline.snapshot_sha256,
            "attempt": baseline.snapshot.get("attempt"),
        },
        "verdict": _comparability(snapshot, baseline),
        "metrics": diff_flat(
            baseline.snapshot.get("key_metrics", {}), snapshot.get("key_metrics", {})
        ),
        "settings": diff_flat(
            baseline.metadata.get("settings", {}), snapshot.get("settings_values", {})
        ),
        "features": {
            "added": sorted(new_features - old_features),
            "removed": sorted(old_features - new_features),
        },
        "exclusions": {
            "added": sorted(set(new_excl) - set(old_excl)),
            "removed": sorted(set(old_excl) - set(new_excl)),
        },
        "fingerprints": diff_flat(
            baseline.snapshot.get("fingerprints", {}), snapshot.get("fingerprints", {})
        ),
    }


def build_drift(
    draft: CohortDraft, snapshot: Mapping[str, Any], baseline: Baseline
) -> dict[str, Any]:
    """How data and scores moved against the baseline: rows, window, per-feature mean
    shift in baseline standard deviations, and relative metric changes."""
    old_meta = baseline.metadata
    feature_shift = {}
    old_profile = old_meta.get("data_profile", {})
    for name, stats in sorted(draft.data_profile.items()):
        if name in old_profile:
            o = old_profile[name]
            sd = o.get("std") or 0.0
            shift = (stats["mean"] - o["mean"]) / sd if sd > 0 else None
            feature_shift[name] = {
                "old_mean": o["mean"],
                "new_mean": stats["mean"],
                "std_shift": shift,
            }
    metrics = {}
    for key, entry in diff_flat(
        baseline.snapshot.get("key_metrics", {}), snapshot["key_metrics"]
    ).items():
        rel = None
        if "delta" in entry and entry["old"]:
            rel = entry["delta"] / abs(entry["old"])
        metrics[key] = {**entry, "relative": rel}
    old_rows = int(old_meta.get("rows", 0))
    return {
        "baseline": baseline.snapshot.get("cohort_id"),
        "rows": {"old": old_rows, "new": draft.rows, "delta": draft.rows - old_rows},
        "window": {
            "old": old_meta.get("data_window"),
            "new": {"first": draft.first_bar.isoformat(), "last": draft.last_bar.isoformat()},
        },
        "features": feature_shift,
        "metrics": metrics,
        "largest_feature_shift": max(
            (abs(v["std_shift"]) for v in feature_shift.values() if v["std_shift"] is not None),
            default=0.0,
        ),
    }


def finalize_cohort(
    draft: CohortDraft,
    records: Sequence[ManifestRecord],
    baseline: Baseline | None,
    run_info: Mapping[str, Any],
) -> CohortFiles:
    """Build the cohort's documents from a draft and the attempt's manifest."""
    scope = draft.scope
    cid = draft.cohort_id
    scoring = str(draft.settings.get("scoring_schema_version", DEFAULT_SCORING_SCHEMA))
    metrics_doc = {
        "schema": {"scoring": scoring, "metrics": METRICS_SCHEMA_VERSION},
        **normalize(dict(draft.metrics)),
        "key": normalize(dict(draft.key_metrics)),
    }
    settings_fp = fingerprint(dict(draft.settings))
    common = {
        "cohort_id": cid,
        "target": scope.target,
        "stage": scope.stage,
        "view": scope.view,
        "symbol": scope.symbol,
        "batch": scope.batch,
        "universe_sig": draft.universe_sig,
        "attempt": scope.attempt,
    }
    fingerprints = {
        "data": draft.data_fingerprint,
        "featureset": draft.featureset_fingerprint,
        "settings": settings_fp,
        "identity": fingerprint(draft.identity()),
    }
    snapshot = {
        **common,
        "scoring_schema_version": scoring,
        "outputs": {"metrics": {"schema": dict(metrics_doc["schema"])}},
        "fingerprints": fingerprints,
        "key_metrics": normalize(dict(draft.key_metrics)),
        "features": list(draft.features),
        "excluded": dict(sorted(draft.excluded.items())),
        "artifacts_manifest_sha256": manifest_sha256(records),
        "artifacts": [{"relpath": r.relpath, "size": r.size, "sha256": r.sha256} for r in records],
    }
    metadata = {
        **common,
        "symbols": list(draft.symbols),
        "n_symbols": len(draft.symbols),
        "rows": draft.rows,
        "data_window": {"first": draft.first_bar.isoformat(), "last": draft.last_bar.isoformat()},
        "settings": normalize(dict(draft.settings)),
        "data_fingerprint": draft.data_fingerprint,
        "featureset_fingerprint": draft.featureset_fingerprint,
        "code_version": code_version(),
        "data_profile": normalize(dict(draft.data_profile)),
        "run": dict(run_info),
    }
    documents: dict[str, Any] = {
        "metadata.json": metadata,
        "metrics.json": metrics_doc,
        "snapshot.json": snapshot,
    }
    if baseline is not None:
        with_settings = {**snapshot, "settings_values": metadata["settings"]}
        documents["diff_prev.json"] = build_diff_prev(with_settings, baseline)
        documents["drift.json"] = build_drift(draft, snapshot, baseline)
    return CohortFiles(cid, documents)


def data_profile(frame: pd.DataFrame, columns: Iterable[str]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation per column: the basis of drift.json."""
    cols = list(columns)
    if not cols:
        return {}
    stats = frame[cols].agg(["mean", "std"])
    return {c: {"mean": float(stats.at["mean", c]), "std": float(stats.at["std", c])} for c in cols}


def draft_from_rows(
    scope: Scope,
    rows: pd.DataFrame,
    *,
    universe_sig: str,
    file_hashes: Mapping[str, str],
    features: Sequence[str],
    excluded: Mapping[str, str],
    metrics: Mapping[str, Any],
    key_metrics: Mapping[str, float],
    settings: Mapping[str, Any],
) -> CohortDraft:
    """A draft for the panel rows a cohort was evaluated on (``rows``: panel slice with
    a non-missing target). The data fingerprint covers the bar files of its symbols."""
    symbols = tuple(sorted(rows["symbol"].astype(str).unique()))
    ts = rows["timestamp"]
    profile_cols = [c for c in (*features, scope.target) if c in rows.columns]
    return CohortDraft(
        scope=scope,
        universe_sig=universe_sig,
        symbols=symbols,
        first_bar=pd.Timestamp(ts.min()),
        last_bar=pd.Timestamp(ts.max()),
        rows=int(len(rows)),
        settings=dict(settings),
        data_fingerprint=fingerprint({s: file_hashes[s] for s in symbols}),
        features=tuple(features),
        excluded=dict(excluded),
        metrics=metrics,
        key_metrics=key_metrics,
        data_profile=data_profile(rows, profile_cols),
    )
