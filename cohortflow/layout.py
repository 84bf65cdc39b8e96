"""The canonical directory tree (DESIGN §2): the one place that builds and parses paths.

Every path below the output root is built here (``Scope``) and every older layout is
parsed here (``parse_cohort_path``, ``walk_cohorts``), so no other module joins path
strings. Roots may be ``pathlib.Path`` or ``upath.UPath``; results keep the root's type
because paths are only ever extended with ``/``.

Layouts read (DESIGN §2, the table), relative to ``targets/{t}/reproducibility/stage={S}/{VIEW}/``::

    current                 [symbol={S}/]batch_{sig12}/attempt_{n}/cohort={id}
    batch_without_attempt   [symbol={S}/]batch_{sig12}/cohort={id}                (attempt 0)
    legacy_universe         [symbol={S}/]universe={sig64}/[attempt_{n}/]cohort={id}
    flat                    cohort={id}                                          (attempt 0)
    symbol_older            symbol={S}/[attempt_{n}/]cohort={id}                 (SYMBOL_SPECIFIC)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import operator
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, TypeVar

from upath import UPath

from cohortflow.canonical import fingerprint
from cohortflow.domain import Stage, View
from cohortflow.errors import CorruptFileError, InvalidNameError, StoreError
from cohortflow.fsio import is_local, local_path
from cohortflow.names import validate_name, validate_symbol

logger = logging.getLogger(__name__)

STAGES = tuple(Stage)
VIEWS = tuple(View)
CROSS_SECTIONAL, SYMBOL_SPECIFIC = View.CROSS_SECTIONAL, View.SYMBOL_SPECIFIC
# Written last into an attempt folder: its files are complete and will never change.
COMPLETE_MARKER = "_COMPLETE"
# Written first into an attempt folder cohortflow writes; removed once it is sealed. An
# attempt folder with neither marker was written by something else (an older system): it
# is read as complete, with origin "external".
PROGRESS_MARKER = "_IN_PROGRESS"
ORIGIN_COHORTFLOW = "cohortflow"
ORIGIN_EXTERNAL = "external"
(
    LAYOUT_CURRENT,
    LAYOUT_BATCH_NO_ATTEMPT,
    LAYOUT_LEGACY_UNIVERSE,
    LAYOUT_FLAT,
    LAYOUT_SYMBOL_OLDER,
) = ("current", "batch_without_attempt", "legacy_universe", "flat", "symbol_older")
LAYOUTS = (
    LAYOUT_CURRENT,
    LAYOUT_BATCH_NO_ATTEMPT,
    LAYOUT_LEGACY_UNIVERSE,
    LAYOUT_FLAT,
    LAYOUT_SYMBOL_OLDER,
)

# Folders that hold one attempt's artifacts next to its cohort folders.
ATTEMPT_ARTIFACT_DIRS = (
    "feature_importances",
    "featureset_artifacts",
    "feature_exclusions",
    "oof",
    "stacking",
    "evaluation",
    "tuning",
)
METADATA_FILE = "metadata.json"
COHORT_FILES = ("metadata.json", "metrics.json", "snapshot.json", "diff_prev.json", "drift.json")
LOCKS_DIR = "_locks"
WORK_DIR = "_work"
REPORTS_DIR = "reports"
REGISTRY_DIR = "_registry"
INDEX_DIR = "_index"

_BATCH_RE = re.compile(r"[0-9a-f]{12}")
_SIG_RE = re.compile(r"[0-9a-f]{12,64}")
_FULL_SIG_RE = re.compile(r"[0-9a-f]{64}")
_BATCH_DIR_RE = re.compile(r"batch_([0-9a-f]{12})")
_ATTEMPT_DIR_RE = re.compile(r"attempt_(0|[1-9][0-9]{0,8})")  # canonical decimals only
_UNIVERSE_DIR_RE = re.compile(r"universe=([0-9a-f]{64})")
# Cohort ids written by older versions need not follow today's format; they only have to be
# a safe single path part.
_COHORT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}")

_STAGE_ORDER = {s: i for i, s in enumerate(STAGES)}
_VIEW_ORDER = {v: i for i, v in enumerate(VIEWS)}
_LAYOUT_ORDER = {name: i for i, name in enumerate(LAYOUTS)}

P = TypeVar("P", Path, UPath)


# --------------------------------------------------------------------------- names and ids


def as_root(root: Any) -> Any:
    """``root`` as a Path or UPath: strings with ``://`` become UPaths, other strings Paths."""
    if isinstance(root, Path | UPath):
        return root
    if isinstance(root, str) and "://" in root:
        return UPath(root)
    if isinstance(root, str | os.PathLike):
        return Path(root)
    raise TypeError(f"expected a path for the output root, got {type(root).__name__}")


def universe_signature(symbols: Iterable[str]) -> str:
    """sha256 hex of the sorted, de-duplicated, upper-cased symbols joined by ``,``.

    Every symbol must be a valid name (so none contains ``,``); an empty universe is refused.
    """
    if isinstance(symbols, str | bytes):
        raise TypeError("universe_signature takes an iterable of symbols, not one string")
    cleaned = sorted({validate_symbol(s) for s in symbols})
    if not cleaned:
        raise InvalidNameError("empty universe: at least one symbol is needed for a signature")
    return hashlib.sha256(",".join(cleaned).encode("utf-8")).hexdigest()


def batch_of(universe_sig: str) -> str:
    """The batch id of a universe: the first 12 hex chars of its signature."""
    if not isinstance(universe_sig, str) or not _SIG_RE.fullmatch(universe_sig):
        raise InvalidNameError(
            f"invalid universe signature {universe_sig!r}: expected 12-64 lowercase hex chars"
        )
    return universe_sig[:12]


def validate_batch(batch: str) -> str:
    """Return ``batch`` if it is exactly 12 lowercase hex chars, else raise InvalidNameError."""
    if not isinstance(batch, str) or not _BATCH_RE.fullmatch(batch):
        raise InvalidNameError(
            f"invalid batch {batch!r}: expected exactly 12 lowercase hex chars "
            "(the first 12 of the universe signature, without 'batch_')"
        )
    return batch


def validate_cohort_id(cohort_id: str) -> str:
    """Return ``cohort_id`` if it is a safe single path part (any layout's ids), else raise."""
    if (
        not isinstance(cohort_id, str)
        or ".." in cohort_id
        or not _COHORT_ID_RE.fullmatch(cohort_id)
    ):
        raise InvalidNameError(
            f"invalid cohort id {cohort_id!r}: use letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, without '..' or path separators"
        )
    return cohort_id


def new_run_id(now: datetime | None = None) -> str:
    """``YYYYMMDD_HHMMSS_ffffff_`` + 6 hex from :mod:`secrets` (never the seeded generator).

    ``now`` defaults to the current UTC time; the random suffix keeps ids unique even when
    two runs start in the same microsecond.
    """
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d_%H%M%S_%f")
    return f"{stamp}_{secrets.token_hex(3)}"


def unique_run_dir(parent: P, name: str | None = None) -> P:
    """Create and return ``parent/name`` (or ``parent/<new run id>``); never reuse a folder.

    The folder is claimed with a plain ``mkdir`` (no ``exist_ok``), which fails if another
    process got there first, so two runs can never share it.
    """
    parent = as_root(parent)
    run = validate_name("run", name) if name is not None else new_run_id()
    path = parent / run
    parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError as exc:
        raise StoreError(f"run folder {path} already exists; refusing to reuse it") from exc
    return path


def marker_file(folder: P, name: str) -> P:
    """A marker of a folder that holds cohort folders (``_COMPLETE``, ``_IN_PROGRESS``)."""
    if name not in (COMPLETE_MARKER, PROGRESS_MARKER):
        raise InvalidNameError(f"invalid marker {name!r}")
    return folder / name


def cohort_file(cohort_dir: P, name: str) -> P:
    """One of a cohort folder's files (:data:`COHORT_FILES`), any layout."""
    if name not in COHORT_FILES:
        raise InvalidNameError(f"invalid cohort file {name!r}: expected one of {COHORT_FILES}")
    return cohort_dir / name


def run_file(folder: P, name: str) -> P:
    """A file of a run folder (an export, a stack run) by its base name."""
    return folder / validate_name("file", name)


def stack_runs_dir(root: P, batch: str, attempt: int, target: str) -> P:
    """``stacks/batch_{b}/attempt_{n}/{target}/``: the run folders of ``cohortflow stack``
    (outside ``targets/``: they are fits made later from a sealed attempt's OOF dataset)."""
    return (
        as_root(root)
        / "stacks"
        / f"batch_{validate_batch(batch)}"
        / f"attempt_{_non_negative_int('attempt', attempt)}"
        / validate_name("target", target)
    )


def _quarter(last_bar: Any) -> str:
    if isinstance(last_bar, str):
        last_bar = datetime.fromisoformat(last_bar)
    if not isinstance(last_bar, date):
        raise TypeError(f"last_bar must be a timestamp, got {type(last_bar).__name__}")
    year, month = last_bar.year, last_bar.month
    if not isinstance(year, int) or not isinstance(month, int):  # pandas NaT
        raise ValueError(f"last_bar must be a real timestamp, got {last_bar!r}")
    return f"{year:04d}Q{(month - 1) // 3 + 1}"


def _non_negative_int(kind: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidNameError(f"{kind} must be a non-negative integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidNameError(f"{kind} must be a non-negative integer, got {value!r}") from None
    if number < 0:
        raise InvalidNameError(f"{kind} must be a non-negative integer, got {value!r}")
    return number


def cohort_id(
    view: str,
    last_bar: datetime,
    universe_sig: str,
    min_cs: int,
    max_rows: int,
    cfg_version: int,
    identity: Mapping[str, Any],
) -> str:
    """``{cs|sy}_{YYYYQn}_{sig12}_min_cs{min_cs}_max{max_rows}_v{cfg_version}_{hash8}``.

    ``YYYYQn`` is the quarter of ``last_bar`` (the last bar in the window); ``hash8`` is the
    first 8 hex of :func:`cohortflow.canonical.fingerprint` of ``identity`` (everything that
    defines the cohort). ``min_cs`` is in symbols, ``max_rows`` in rows.
    """
    if view not in VIEWS:
        raise InvalidNameError(f"invalid view {view!r}: expected one of {VIEWS}")
    if not isinstance(identity, Mapping):
        raise TypeError(f"identity must be a mapping, got {type(identity).__name__}")
    prefix = "cs" if view == CROSS_SECTIONAL else "sy"
    min_cs = _non_negative_int("min_cs", min_cs)
    max_rows = _non_negative_int("max_rows", max_rows)
    cfg_version = _non_negative_int("cfg_version", cfg_version)
    hash8 = fingerprint(identity)[:8]
    return (
        f"{prefix}_{_quarter(last_bar)}_{batch_of(universe_sig)}"
        f"_min_cs{min_cs}_max{max_rows}_v{cfg_version}_{hash8}"
    )


# --------------------------------------------------------------------------- building paths


def _join(root: P, parts: Iterable[str]) -> P:
    return functools.reduce(operator.truediv, parts, root)


@dataclass(frozen=True)
class Scope:
    """Where one attempt's artifacts of one (target, stage, view[, symbol]) live.

    ``symbol`` is required for SYMBOL_SPECIFIC and refused for CROSS_SECTIONAL; it is
    upper-cased (as in the universe signature). ``attempt`` counts reruns from 0.
    """

    target: str
    stage: str
    view: str
    batch: str
    attempt: int
    symbol: str | None = None

    def __post_init__(self) -> None:
        validate_name("target", self.target)
        if self.stage not in STAGES:
            raise InvalidNameError(f"invalid stage {self.stage!r}: expected one of {STAGES}")
        if self.view not in VIEWS:
            raise InvalidNameError(f"invalid view {self.view!r}: expected one of {VIEWS}")
        validate_batch(self.batch)
        object.__setattr__(self, "attempt", _non_negative_int("attempt", self.attempt))
        if self.view == SYMBOL_SPECIFIC:
            if self.symbol is None:
                raise InvalidNameError("a SYMBOL_SPECIFIC scope needs a symbol")
            object.__setattr__(self, "symbol", validate_symbol(self.symbol))
        elif self.symbol is not None:
            raise InvalidNameError(
                f"a CROSS_SECTIONAL scope has no symbol, got symbol={self.symbol!r}"
            )

    def view_parts(self) -> tuple[str, ...]:
        return ("targets", self.target, "reproducibility", f"stage={self.stage}", self.view)

    def attempt_parts(self) -> tuple[str, ...]:
        """Parts of the attempt folder relative to the root."""
        middle = (f"symbol={self.symbol}",) if self.view == SYMBOL_SPECIFIC else ()
        return (*self.view_parts(), *middle, f"batch_{self.batch}", f"attempt_{self.attempt}")

    def attempt_relpath(self) -> str:
        """The attempt folder relative to the root, posix."""
        return "/".join(self.attempt_parts())

    def view_dir(self, root: P) -> P:
        return _join(as_root(root), self.view_parts())

    def attempt_dir(self, root: P) -> P:
        return _join(as_root(root), self.attempt_parts())

    def cohort_dir(self, root: P, cohort_id: str) -> P:
        return self.attempt_dir(root) / f"cohort={validate_cohort_id(cohort_id)}"

    def cohort_file(self, root: P, cohort_id: str, name: str) -> P:
        if name not in COHORT_FILES:
            raise InvalidNameError(f"invalid cohort file {name!r}: expected one of {COHORT_FILES}")
        return self.cohort_dir(root, cohort_id) / name

    def importances_dir(self, root: P) -> P:
        return self.attempt_dir(root) / "feature_importances"

    def importances_path(self, root: P, model: str) -> P:
        model = validate_name("model", model)
        return self.importances_dir(root) / f"{model}_importances.csv"

    def featureset_path(self, root: P) -> P:
        return self.attempt_dir(root) / "featureset_artifacts" / "featureset_post_prune.json"

    def exclusions_path(self, root: P) -> P:
        return self.attempt_dir(root) / "feature_exclusions" / f"{self.target}_exclusions.yaml"

    def oof_path(self, root: P) -> P:
        return self.attempt_dir(root) / "oof" / "oof_predictions.parquet"

    def oof_metrics_path(self, root: P) -> P:
        return self.attempt_dir(root) / "oof" / "oof_metrics.json"

    def fold_plan_path(self, root: P, folder: str) -> P:
        """``fold_plan.json`` beside what a fold plan produced (``oof``)."""
        return self.attempt_dir(root) / validate_name("folder", folder) / "fold_plan.json"

    def stacking_dir(self, root: P) -> P:
        return self.attempt_dir(root) / "stacking"

    def stacking_file(self, root: P, name: str) -> P:
        return self.stacking_dir(root) / validate_name("stacking file", name)

    def evaluation_path(self, root: P) -> P:
        return self.attempt_dir(root) / "evaluation" / "evaluation.json"

    def portfolio_path(self, root: P) -> P:
        return self.attempt_dir(root) / "evaluation" / "portfolio.json"

    def tuning_path(self, root: P) -> P:
        return self.attempt_dir(root) / "tuning" / "tuned_params.json"

    def artifact_path(self, root: P, relpath: str) -> P:
        """A file of the attempt folder by its manifest relpath (``oof/fold_plan.json``)."""
        return _join(self.attempt_dir(root), _safe_relpath(relpath))

    def complete_marker(self, root: P) -> P:
        return self.attempt_dir(root) / COMPLETE_MARKER

    def progress_marker(self, root: P) -> P:
        return self.attempt_dir(root) / PROGRESS_MARKER

    def lock_path(self, root: P) -> P:
        """A lock file for this attempt, kept outside the tree so readers never see it."""
        digest = hashlib.sha256(self.attempt_relpath().encode("utf-8")).hexdigest()[:16]
        return lock_path(root, digest)

    def record(
        self, cohort_id: str, universe_sig: str | None = None, complete: bool = True
    ) -> CohortRecord:
        """The index record of a cohort written under this scope (current layout)."""
        cid = validate_cohort_id(cohort_id)
        return CohortRecord(
            cohort_id=cid,
            target=self.target,
            stage=self.stage,
            view=self.view,
            batch=self.batch,
            universe_sig=universe_sig,
            symbol=self.symbol,
            attempt=self.attempt,
            layout=LAYOUT_CURRENT,
            path="/".join((*self.attempt_parts(), f"cohort={cid}")),
            complete=complete,
        )


# --------------------------------------------------------------------------- other paths


def _safe_relpath(relpath: str) -> tuple[str, ...]:
    """The parts of a posix path relative to a folder; refuses absolute paths and ``..``."""
    parts = tuple(p for p in str(relpath).split("/") if p not in ("", "."))
    if not parts or str(relpath).startswith("/") or any(p == ".." for p in parts):
        raise InvalidNameError(f"invalid relative path {relpath!r}")
    return parts


def resolve(root: P, relpath: str) -> P:
    """``root``/``relpath`` for a posix path relative to the root (as the index stores them)."""
    return _join(as_root(root), _safe_relpath(relpath))


def lock_path(root: P, name: str) -> P:
    """A lock file under ``_locks/`` (outside the tree readers walk)."""
    return as_root(root) / LOCKS_DIR / f"{validate_name('lock', name)}.lock"


def work_dir(root: P, batch: str, attempt: int) -> P:
    """The attempt's working data (validated bars, the feature panel)."""
    return (
        as_root(root)
        / WORK_DIR
        / f"batch_{validate_batch(batch)}"
        / f"attempt_{_non_negative_int('attempt', attempt)}"
    )


def work_file(root: P, batch: str, attempt: int, name: str, suffix: str) -> P:
    """``_work/batch_{b}/attempt_{n}/{name}.{suffix}`` (``bars``/``panel``; parquet/json)."""
    return work_dir(root, batch, attempt) / f"{validate_name('artifact', name)}.{suffix}"


def report_path(root: P, batch: str, attempt: int, name: str) -> P:
    """``reports/batch_{b}/attempt_{n}/{name}.csv``: tables across targets."""
    return (
        as_root(root)
        / REPORTS_DIR
        / f"batch_{validate_batch(batch)}"
        / f"attempt_{_non_negative_int('attempt', attempt)}"
        / f"{validate_name('report', name)}.csv"
    )


def registry_dir(root: P) -> P:
    return as_root(root) / REGISTRY_DIR


def registry_path(root: P, batch: str) -> P:
    """``_registry/batch_{b}.json``: what the batch is and why each attempt exists."""
    return registry_dir(root) / f"batch_{validate_batch(batch)}.json"


def index_path(root: P, name: str) -> P:
    """``_index/{name}``: the cohort index (a cache of the tree, rebuildable from it)."""
    return as_root(root) / INDEX_DIR / validate_name("index file", name)


def targets_dir(root: P) -> P:
    return as_root(root) / "targets"


def batch_dir(root: P, target: str, stage: str, batch: str, symbol: str | None = None) -> P:
    """The folder that holds a batch's ``attempt_{n}`` folders in one view."""
    view = SYMBOL_SPECIFIC if symbol is not None else CROSS_SECTIONAL
    return Scope(target, stage, view, batch, 0, symbol).attempt_dir(root).parent


def data_file(data_dir: P, name: str) -> P:
    """A bar file of the data folder by its base name (no separators)."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise InvalidNameError(f"invalid file name {name!r}: expected a base file name")
    return as_root(data_dir) / name


def dagster_yaml(home: P) -> P:
    return as_root(home) / "dagster.yaml"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class CohortRecord:
    """One cohort found in the tree, in any layout. ``path`` is relative to the root, posix."""

    cohort_id: str
    target: str
    stage: str
    view: str
    batch: str | None
    universe_sig: str | None
    symbol: str | None
    attempt: int
    layout: str
    path: str
    complete: bool = True
    origin: str = ORIGIN_COHORTFLOW

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CohortRecord:
        return cls(
            cohort_id=data["cohort_id"],
            target=data["target"],
            stage=data["stage"],
            view=data["view"],
            batch=data.get("batch"),
            universe_sig=data.get("universe_sig"),
            symbol=data.get("symbol"),
            attempt=int(data["attempt"]),
            layout=data["layout"],
            path=data["path"],
            complete=bool(data.get("complete", True)),
            origin=str(data.get("origin") or ORIGIN_COHORTFLOW),
        )

    def dir(self, root: P) -> P:
        """The cohort folder under ``root``."""
        return _join(as_root(root), self.path.split("/"))

    def file(self, root: P, name: str) -> P:
        """One of the cohort's files (:data:`COHORT_FILES`)."""
        if name not in COHORT_FILES:
            raise InvalidNameError(f"invalid cohort file {name!r}: expected one of {COHORT_FILES}")
        return self.dir(root) / name

    def container_path(self) -> str:
        """The folder that holds the cohort folder (the attempt dir in the current layout)."""
        return self.path.rsplit("/", 1)[0]


def sort_key(record: CohortRecord) -> tuple[Any, ...]:
    """Listing order: target, stage, view, symbol, batch, attempt newest first, cohort id.

    Stages and views sort in pipeline order (STAGES, VIEWS); layout and path break the
    remaining ties so that the order is total and deterministic.
    """
    return (
        record.target,
        _STAGE_ORDER.get(record.stage, len(STAGES)),
        record.stage,
        _VIEW_ORDER.get(record.view, len(VIEWS)),
        record.symbol or "",
        record.batch or "",
        -record.attempt,
        record.cohort_id,
        _LAYOUT_ORDER.get(record.layout, len(LAYOUTS)),
        record.path,
    )


def newest_first_key(record: CohortRecord) -> tuple[Any, ...]:
    """Order of several records of one cohort id: newest attempt, complete, current layout."""
    return (
        -record.attempt,
        not record.complete,
        _LAYOUT_ORDER.get(record.layout, len(LAYOUTS)),
        record.path,
    )


# --------------------------------------------------------------------------- parsing


def _is_name(kind: str, value: str) -> bool:
    try:
        validate_name(kind, value)
    except InvalidNameError:
        return False
    return True


def _parse_parts(parts: tuple[str, ...]) -> CohortRecord | None:
    """Structure of a cohort folder from its parts relative to the root; None if not one."""
    if len(parts) < 6 or parts[0] != "targets" or parts[2] != "reproducibility":
        return None
    target, stage_part, view, last = parts[1], parts[3], parts[4], parts[-1]
    stage = stage_part.removeprefix("stage=")
    if stage == stage_part or stage not in STAGES or view not in VIEWS:
        return None
    if not _is_name("target", target) or not last.startswith("cohort="):
        return None
    cid = last.removeprefix("cohort=")
    if ".." in cid or not _COHORT_ID_RE.fullmatch(cid):
        return None
    middle = list(parts[5:-1])

    symbol = None
    if middle and middle[0].startswith("symbol="):
        if view != SYMBOL_SPECIFIC:
            return None
        raw = middle.pop(0).removeprefix("symbol=")
        if not _is_name("symbol", raw):
            return None
        symbol = validate_symbol(raw)
    elif view == SYMBOL_SPECIFIC and middle:
        return None  # a SYMBOL_SPECIFIC container without symbol= is no known layout

    attempt = 0
    if middle and (m := _ATTEMPT_DIR_RE.fullmatch(middle[-1])):
        attempt = int(m.group(1))
        middle.pop()
        has_attempt = True
    else:
        has_attempt = False

    batch = universe_sig = None
    if not middle:
        if has_attempt and symbol is None:
            return None  # {VIEW}/attempt_n/cohort= was never written
        layout = LAYOUT_SYMBOL_OLDER if symbol is not None else LAYOUT_FLAT
    elif len(middle) == 1 and (m := _BATCH_DIR_RE.fullmatch(middle[0])):
        batch = m.group(1)
        layout = LAYOUT_CURRENT if has_attempt else LAYOUT_BATCH_NO_ATTEMPT
    elif len(middle) == 1 and (m := _UNIVERSE_DIR_RE.fullmatch(middle[0])):
        universe_sig = m.group(1)
        batch = universe_sig[:12]
        layout = LAYOUT_LEGACY_UNIVERSE
    else:
        return None
    # what the path alone says; _record adds the markers' state and the metadata's signature
    return CohortRecord(
        cohort_id=cid,
        target=target,
        stage=stage,
        view=view,
        batch=batch,
        universe_sig=universe_sig,
        symbol=symbol,
        attempt=attempt,
        layout=layout,
        path="/".join(parts),
    )


def _rel_parts(root: Any, path: Any) -> tuple[str, ...] | None:
    if isinstance(path, str) and "://" not in path:
        pure = PurePosixPath(path)
        if not pure.is_absolute():
            return pure.parts
        path = Path(path)
    elif isinstance(path, str):
        path = UPath(path)
    try:
        rel = path.relative_to(root)
    except (ValueError, TypeError):
        return None
    parts = tuple(PurePath(str(rel)).parts) if not hasattr(rel, "parts") else tuple(rel.parts)
    return parts if parts and parts != (".",) else None


class _Tree:
    """Folders of one root by their parts; local roots as plain strings (a walk joins
    hundreds of thousands of paths, and pathlib objects cost more than the disk)."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.local = is_local(root)
        self.base = str(local_path(root)) if self.local else root

    def at(self, parts: Iterable[str]) -> Any:
        return os.path.join(self.base, *parts) if self.local else self.root.joinpath(*parts)


def _exists(path: Any) -> bool:
    if isinstance(path, str):
        return os.path.exists(path)
    if is_local(path):
        return os.path.exists(local_path(path))
    return path.exists()


def _read_json(path: Any) -> Any:
    """A JSON document (None if absent); CorruptFileError naming the file if malformed."""
    try:
        if isinstance(path, str) or is_local(path):
            with open(path if isinstance(path, str) else local_path(path), encoding="utf-8") as fh:
                return json.load(fh)
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise CorruptFileError(
            path, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (OSError, ValueError) as exc:
        raise CorruptFileError(path, f"unreadable: {exc}") from None


def _metadata_sig(metadata_path: Any) -> str | None:
    meta = _read_json(metadata_path)
    if not isinstance(meta, Mapping):
        return None
    sig = meta.get("universe_sig")
    if isinstance(sig, str) and _FULL_SIG_RE.fullmatch(sig):
        return sig
    if sig is not None:
        logger.warning("%s: universe_sig %r is not 64 hex; ignored", metadata_path, sig)
    return None


def attempt_state(exists: Callable[[str], bool]) -> tuple[bool, str]:
    """(complete, origin) of a folder that holds cohort folders, from its markers;
    ``exists(name)`` tells whether the folder holds a file of that name.

    ``_COMPLETE``: complete, written by cohortflow. ``_IN_PROGRESS`` alone: cohortflow is
    writing it, or was killed while it did: incomplete. Neither: written by something
    else (an older system, a copy): read as complete, origin ``external``.
    """
    if exists(COMPLETE_MARKER):
        return True, ORIGIN_COHORTFLOW
    if exists(PROGRESS_MARKER):
        return False, ORIGIN_COHORTFLOW
    return True, ORIGIN_EXTERNAL


def folder_state(folder: Any) -> tuple[bool, str]:
    """:func:`attempt_state` of a folder on disk."""
    return attempt_state(lambda name: _exists(folder / name))


def _attempt_state(
    tree: _Tree, parsed: CohortRecord, cache: dict[tuple[str, ...], tuple[bool, str]]
) -> tuple[bool, str]:
    container = tuple(parsed.container_path().split("/"))
    if container not in cache:
        cache[container] = attempt_state(lambda name: _exists(tree.at((*container, name))))
    return cache[container]


def _record(
    tree: _Tree,
    parsed: CohortRecord,
    state: tuple[bool, str],
    problems: list[str] | None = None,
) -> CohortRecord | None:
    """The record of a parsed cohort folder. A malformed metadata.json is named in
    ``problems`` and the cohort left out when a list is given; else it is logged and the
    cohort kept without the universe signature its metadata would give."""
    universe_sig = parsed.universe_sig
    try:
        meta_sig = _metadata_sig(tree.at((*parsed.path.split("/"), METADATA_FILE)))
    except CorruptFileError as exc:
        if problems is not None:
            problems.append(str(exc))
            return None
        logger.warning("%s", exc)
        meta_sig = None
    if universe_sig is None:
        universe_sig = meta_sig
    elif meta_sig is not None and meta_sig != universe_sig:
        logger.warning(
            "%s: metadata universe_sig %s differs from the folder's; the folder wins",
            parsed.path,
            meta_sig,
        )
    if universe_sig is not None and parsed.batch is not None and universe_sig[:12] != parsed.batch:
        logger.warning(
            "%s: universe_sig %s does not start with batch %s",
            parsed.path,
            universe_sig,
            parsed.batch,
        )
    return replace(parsed, universe_sig=universe_sig, complete=state[0], origin=state[1])


def parse_cohort_path(root: Any, cohort_dir: Any) -> CohortRecord | None:
    """The record of the cohort folder ``cohort_dir`` (any layout), or None if it is none.

    ``cohort_dir`` may be absolute (under ``root``) or a string relative to ``root``.
    ``complete`` is False for a current-layout attempt without its ``_COMPLETE`` marker.
    """
    root = as_root(root)
    parts = _rel_parts(root, cohort_dir)
    if parts is None:
        return None
    parsed = _parse_parts(parts)
    if parsed is None:
        return None
    tree = _Tree(root)
    return _record(tree, parsed, _attempt_state(tree, parsed, {}))


# --------------------------------------------------------------------------- walking


def _subdirs(folder: Any) -> list[str]:
    """Sorted names of the sub-folders of ``folder`` ([] if it does not exist).

    Symbolic links are not followed: the tree is never read through a link that could
    point outside it.
    """
    if isinstance(folder, str) or is_local(folder):
        try:
            with os.scandir(folder if isinstance(folder, str) else local_path(folder)) as entries:
                return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return []
    try:
        return sorted(p.name for p in folder.iterdir() if p.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _descend(name: str) -> bool:
    return name.startswith(("symbol=", "batch_", "universe=", "attempt_"))


def _cohort_parts(tree: _Tree, view_parts: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """Parts of every ``cohort=`` folder at most three levels below a view folder."""
    stack = [view_parts]
    while stack:
        parts = stack.pop()
        for name in _subdirs(tree.at(parts)):
            if name.startswith("cohort="):
                yield (*parts, name)
            elif _descend(name) and len(parts) - len(view_parts) < 3:
                stack.append((*parts, name))


def walk_cohorts(
    root: Any,
    *,
    include_incomplete: bool = False,
    target: str | None = None,
    problems: list[str] | None = None,
) -> Iterator[CohortRecord]:
    """Every cohort under ``root`` in every layout, by walking the tree (the slow path).

    Cohorts of current-layout attempts without ``_COMPLETE`` are skipped unless
    ``include_incomplete``. ``target`` limits the walk to one target's folder. Order:
    :func:`sort_key` (target, stage, view, symbol, batch, attempt newest first, cohort id).
    """
    root = as_root(root)
    tree = _Tree(root)
    targets = [validate_name("target", target)] if target is not None else None
    for name in targets if targets is not None else _subdirs(tree.at(("targets",))):
        if not _is_name("target", name):
            logger.warning("skipping %s: not a valid target name", name)
            continue
        present = set(_subdirs(tree.at(("targets", name, "reproducibility"))))
        for stage in STAGES:
            if f"stage={stage}" not in present:
                continue
            for view in VIEWS:
                view_parts = ("targets", name, "reproducibility", f"stage={stage}", view)
                cache: dict[tuple[str, ...], tuple[bool, str]] = {}
                records = []
                for parts in _cohort_parts(tree, view_parts):
                    parsed = _parse_parts(parts)
                    if parsed is None:
                        logger.debug("not a cohort layout: %s", "/".join(parts))
                        continue
                    state = _attempt_state(tree, parsed, cache)
                    if state[0] or include_incomplete:
                        record = _record(tree, parsed, state, problems)
                        if record is not None:
                            records.append(record)
                yield from sorted(records, key=sort_key)


def sorted_attempts(folder: Any) -> list[int]:
    """Numbers of the ``attempt_N`` sub-folders of ``folder``, ascending (2 before 10)."""
    numbers = []
    for name in _subdirs(as_root(folder)):
        if m := _ATTEMPT_DIR_RE.fullmatch(name):
            numbers.append(int(m.group(1)))
    return sorted(numbers)


def attempt_scopes(
    root: Any, batch: str | None = None, targets: Iterable[str] | None = None
) -> Iterator[Scope]:
    """Every current-layout attempt folder under ``root`` (of one batch, of some targets),
    in target, stage, view, symbol, batch, attempt order (attempts numerically)."""
    root = as_root(root)
    tree = _Tree(root)
    names = list(targets) if targets is not None else _subdirs(tree.at(("targets",)))
    for target in names:
        if not _is_name("target", target):
            continue
        for stage in STAGES:
            base = ("targets", target, "reproducibility", f"stage={stage}")
            holders: list[tuple[View, str | None, tuple[str, ...]]] = [
                (CROSS_SECTIONAL, None, (*base, CROSS_SECTIONAL))
            ]
            for name in _subdirs(tree.at((*base, SYMBOL_SPECIFIC))):
                symbol = name.removeprefix("symbol=")
                if name.startswith("symbol=") and _is_name("symbol", symbol):
                    holders.append((SYMBOL_SPECIFIC, symbol, (*base, SYMBOL_SPECIFIC, name)))
            for view, symbol, parts in holders:
                for name in _subdirs(tree.at(parts)):
                    m = _BATCH_DIR_RE.fullmatch(name)
                    if m is None or (batch is not None and m.group(1) != batch):
                        continue
                    for n in sorted_attempts(tree.at((*parts, name))):
                        yield Scope(target, stage, view, m.group(1), n, symbol)


def is_readable(root: Any, record: CohortRecord) -> bool:
    """Is the cohort of an index record on disk now, in a complete attempt? (The index is
    a cache: it may run behind the tree, and a folder may have been removed since.)"""
    folder = record.dir(root)
    return _exists(folder) and folder_state(folder.parent)[0]


def latest_complete_attempt(
    root: Any, batch: str, target: str | None = None, stage: str | None = None
) -> int | None:
    """Highest attempt of ``batch`` with a ``_COMPLETE`` marker (None if there is none).

    Looks in both views (every ``symbol=`` folder) of the given target and stage, or of all
    of them when not given. Only the current layout has attempts with markers.
    """
    root = as_root(root)
    batch = validate_batch(batch)
    if stage is not None and stage not in STAGES:
        raise InvalidNameError(f"invalid stage {stage!r}: expected one of {STAGES}")
    targets = [validate_name("target", target)] if target else _subdirs(root / "targets")
    best: int | None = None
    for name in targets:
        for st in [stage] if stage else STAGES:
            base = root / "targets" / name / "reproducibility" / f"stage={st}"
            folders = [base / CROSS_SECTIONAL / f"batch_{batch}"]
            folders += [
                base / SYMBOL_SPECIFIC / sym / f"batch_{batch}"
                for sym in _subdirs(base / SYMBOL_SPECIFIC)
                if sym.startswith("symbol=")
            ]
            for folder in folders:
                for n in reversed(sorted_attempts(folder)):
                    if best is not None and n <= best:
                        break
                    if _exists(folder / f"attempt_{n}" / COMPLETE_MARKER):
                        best = n
                        break
    return best
