"""Settings: one frozen, typed model read from a YAML file, with defaults for everything.

Types are strict: ``horizons: "12"``, ``demo_leak: "false"`` or ``n_splits: 2.5`` are
refused, never coerced; bounds are checked; unknown keys are refused. Every problem is one
line naming the settings file and the key (``settings.yaml: horizons: expected a list of
whole bar counts from 1 to 2520, got "12"``), raised as :class:`SettingsError` before
anything is written. Bounds that depend on the data (folds per date, the held-out period)
are checked where the data is known (:func:`cohortflow.intake.check_room`).

Only the fields that change results go into cohort fingerprints (``fingerprint_fields``);
threads and devices change speed, never numbers we compare. The fields are plain JSON
types (whole numbers, numbers, strings, lists, one nested mapping), so the model's JSON
schema can drive a form (Dagster's Launchpad).
"""

from __future__ import annotations

import contextvars
import difflib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from cohortflow.errors import SettingsError

CONFIG_VERSION = 1
# the scoring schema cohorts are written under (metrics.json schema.scoring); readers
# normalise older ones (cohortflow.snapshots.normalize_scoring)
DEFAULT_SCORING_SCHEMA = "1.2"

#: The longest horizon (and embargo) in bars: ten years of daily bars. Longer ones leave no
#: data to train on in any universe we know of, and are usually a typo.
MAX_HORIZON = 2520

#: Set by the Dagster shell from its home's run queue limit (and by ``cohortflow run``):
#: how many runs may fit models at once on this machine.
RUNS_AT_ONCE_ENV = "COHORTFLOW_RUNS_AT_ONCE"


def auto_threads() -> int:
    """Threads per model fit for ``n_threads: 0``: the cores this process may use, shared
    by the runs allowed at once (several runs must not oversubscribe the cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        runs = max(1, int(os.environ.get(RUNS_AT_ONCE_ENV, "1")))
    except ValueError:
        runs = 1
    return max(1, (cores or 1) // runs)


def _a_list(value: Any) -> Any:
    # a list (YAML, JSON) or a tuple (Python); never a string, a set or a mapping, which a
    # lax tuple would take apart
    if not isinstance(value, list | tuple):
        raise PydanticCustomError("list_type", "not a list")
    return value


def _list_of(item: Any) -> Any:
    """A field holding a list of strictly typed items, stored as a tuple (hashable)."""
    return Annotated[tuple[item, ...], Strict(False), BeforeValidator(_a_list)]


_DOTTED = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$"
Horizon = Annotated[int, Field(ge=1, le=MAX_HORIZON)]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]


_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("settings_depth", default=0)
# what errors name as the settings' origin (a file's path); "settings" for code
_SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar("settings_source", default="settings")


class _Frozen(BaseModel):
    """Strict, frozen, closed: the base of both settings models."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    def __init__(self, **values: Any) -> None:
        # pydantic calls this for nested models too: only the outermost call turns the
        # errors into one SettingsError (nested ones keep their keys, "models.n_estimators")
        depth = _DEPTH.get()
        token = _DEPTH.set(depth + 1)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            if depth:
                raise
            raise settings_error(exc, values, _SOURCE.get()) from None
        finally:
            _DEPTH.reset(token)

    def to_dict(self) -> dict[str, Any]:
        """Every field (lists as tuples, ``models`` as a mapping)."""
        return self.model_dump()


class ModelSettings(_Frozen):
    """Gradient-boosting settings shared by LightGBM and XGBoost base models."""

    n_estimators: int = Field(200, ge=1, le=100_000, description="trees per model fit")
    learning_rate: float = Field(0.05, gt=0.0, le=1.0, description="shrinkage per tree")
    max_depth: int = Field(4, ge=1, le=64, description="depth of each tree")
    num_leaves: int = Field(15, ge=2, le=131_072, description="leaves per tree (LightGBM)")
    min_child_samples: int = Field(
        50, ge=1, le=1_000_000, description="rows per leaf at least (XGBoost: weight / 10)"
    )
    subsample: Fraction = Field(0.8, description="share of rows each tree sees")
    colsample: Fraction = Field(0.8, description="share of features each tree sees")
    reg_lambda: float = Field(1.0, ge=0.0, le=1e6, description="L2 penalty on leaf weights")
    extra_sklearn: _list_of(Annotated[str, Field(pattern=_DOTTED)]) = Field(  # type: ignore[valid-type]
        (),
        description="scikit-learn regressors added as base models, by import path "
        "(e.g. sklearn.linear_model.Ridge)",
    )

    @field_validator("extra_sklearn")
    @classmethod
    def _distinct_models(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = [v.rpartition(".")[2].lower() for v in value]
        if len(set(names)) != len(names) or {"lightgbm", "xgboost"} & set(names):
            raise PydanticCustomError("distinct", "model names repeat")
        return value


class Settings(_Frozen):
    """Every setting of a run; the defaults are ``config/default.yaml``'s."""

    horizons: _list_of(Horizon) = Field(  # type: ignore[valid-type]
        (5, 10, 20), min_length=1, max_length=32, description="targets fwd_ret_{h}, h in bars"
    )
    min_rows: int = Field(
        500, ge=10, le=100_000_000, description="symbols with fewer rows are left out"
    )
    attempt_limit: int = Field(3, ge=1, le=100, description="leak-fix attempts in a row at most")
    n_splits: int = Field(5, ge=2, le=100, description="purged folds (and walk-forward blocks)")
    # embargo (AFML 7.4.2, cohortflow/splits.py): each symbol's next `embargo` own bars
    # after the purged span of a test fold (its rows' label windows) leave training too;
    # None means "the horizon" (training resumes 2h bars after the fold), and
    # embargo_for() never goes below the horizon
    embargo: int | None = Field(
        None,
        ge=0,
        le=MAX_HORIZON,
        description="bars kept out of training after each test fold; null = the horizon",
    )
    test_fraction: float = Field(
        0.2, gt=0.0, lt=0.5, description="held-out test period: the last share of the dates"
    )
    # LightGBM's seed is a C int; fits add small offsets to it
    seed: int = Field(7, ge=0, le=2_000_000_000, description="seed of every random choice")
    # threads of each model fit; 0 = auto: the cores shared by the runs allowed at once
    # (the Dagster home's run queue limit)
    n_threads: int = Field(
        0,
        ge=0,
        le=4096,
        validate_default=True,
        description="threads of each fit; 0 = auto (cores / runs allowed at once)",
    )
    # OOF folds fitted at once, sharing the n_threads (n_threads // fold_workers threads a
    # fit, at least 1; oof.py); 1 = one fold after another with n_threads each
    fold_workers: int = Field(
        2,
        ge=1,
        le=256,
        validate_default=True,
        description="OOF folds fitted at once, sharing the threads",
    )
    device: Literal["cpu", "cuda"] = Field("cpu", description="cuda: XGBoost on a GPU")
    lightgbm_device: Literal["auto", "cuda", "gpu", "cpu"] = Field(
        "auto", description="LightGBM under device: cuda (models.py)"
    )
    # leakage
    dominance_rank_ic: Fraction = Field(
        0.3, description="a feature whose |rank IC| with the target exceeds this leaks"
    )
    dominance_ratio: float = Field(
        5.0, ge=1.0, le=1e6, description="... or exceeds this many times the median |IC|"
    )
    name_rules: _list_of(Annotated[str, Field(min_length=1)]) = Field(  # type: ignore[valid-type]
        ("fwd_", "future", "target", "label"),
        description="feature names holding one of these (any case) are leaks",
    )
    lookahead_cuts: int = Field(6, ge=1, le=1000, description="cut points of the look-ahead test")
    # the demo adds one clearly named leaking feature; never on a user's data
    demo_leak: bool = Field(False, description="add the demo's leaking feature")
    # selection
    n_probes: int = Field(3, ge=0, le=100, description="random probe features in selection")
    corr_threshold: Fraction = Field(
        0.95, description="drop a feature this correlated with a kept one"
    )
    permutation_repeats: int = Field(3, ge=1, le=1000, description="shuffles per feature")
    # ranking
    quick_estimators: int = Field(100, ge=1, le=100_000, description="trees of ranking fits")
    # stacking
    meta_learner: Literal["ridge", "logistic"] = Field("ridge", description="the stack's learner")
    # non-negative stack weights: a base model whose OOF predictions anti-correlate by
    # chance would otherwise get a negative weight that does not survive out of sample
    nonneg_weights: bool = Field(True, description="stack weights are never negative")
    tune: bool = Field(False, description="tune the base models (optuna)")
    tune_trials: int = Field(20, ge=1, le=100_000, description="optuna trials")
    models: ModelSettings = Field(default_factory=ModelSettings)
    # SYMBOL_SPECIFIC view for at most this many symbols (the longest histories); 0 = off
    symbol_views: int = Field(
        25, ge=0, le=100_000, description="symbol views for the longest histories; 0 = off"
    )
    max_rows: int = Field(2_000_000, ge=1, le=10**12, description="rows of a cohort at most")
    min_cs: int = Field(1, ge=1, le=100_000, description="symbols per date at least")
    scoring_schema_version: str = Field(
        DEFAULT_SCORING_SCHEMA, pattern=r"^\d+(\.\d+)*$", description="metrics.json scoring"
    )

    @field_validator("horizons")
    @classmethod
    def _distinct_horizons(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(value)) != len(value):
            raise PydanticCustomError("distinct", "horizons repeat")
        return value

    @field_validator("n_threads")
    @classmethod
    def _auto_threads(cls, value: int) -> int:
        return value or auto_threads()

    @field_validator("fold_workers")
    @classmethod
    def _at_most_threads(cls, value: int, info: ValidationInfo) -> int:
        # two fits sharing one thread only wait for each other
        threads = info.data.get("n_threads")
        return min(value, threads) if threads else value

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(f"fwd_ret_{h}" for h in self.horizons)

    def embargo_for(self, horizon: int) -> int:
        """Embargo in bars for a target of ``horizon`` bars: at least the horizon."""
        return max(int(horizon), int(self.embargo or 0))

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings that change results (no threads, no device)."""
        d = self.to_dict()
        for key in ("n_threads", "fold_workers", "device", "lightgbm_device"):
            d.pop(key)
        return d

    def replace(self, *, source: str = "settings", **changes: Any) -> Settings:
        """A copy with ``changes``, validated like any settings (``source`` names where
        the changes come from in an error line)."""
        return _validated(type(self), {**self.to_dict(), **changes}, source)


# what each setting must be, in the words of an error line ("expected ...")
_EXPECTED = {
    "horizons": f"a list of distinct whole bar counts from 1 to {MAX_HORIZON}",
    "min_rows": "a whole number of rows, at least 10",
    "attempt_limit": "a whole number from 1 to 100",
    "n_splits": "a whole number of folds from 2 to 100",
    "embargo": f"null or a whole number of bars from 0 to {MAX_HORIZON}",
    "test_fraction": "a number above 0 and below 0.5",
    "seed": "a whole number from 0 to 2000000000",
    "n_threads": "a whole number of threads, 0 (auto) or more",
    "fold_workers": "a whole number, at least 1",
    "device": "cpu or cuda",
    "lightgbm_device": "auto, cuda, gpu or cpu",
    "dominance_rank_ic": "a number above 0, at most 1",
    "dominance_ratio": "a number, at least 1",
    "name_rules": "a list of non-empty texts",
    "lookahead_cuts": "a whole number from 1 to 1000",
    "demo_leak": "true or false",
    "n_probes": "a whole number from 0 to 100",
    "corr_threshold": "a number above 0, at most 1",
    "permutation_repeats": "a whole number from 1 to 1000",
    "quick_estimators": "a whole number of trees, at least 1",
    "meta_learner": "ridge or logistic",
    "nonneg_weights": "true or false",
    "tune": "true or false",
    "tune_trials": "a whole number, at least 1",
    "models": "a mapping of model settings (n_estimators, learning_rate, ...)",
    "symbol_views": "a whole number, 0 (off) or more",
    "max_rows": "a whole number of rows, at least 1",
    "min_cs": "a whole number of symbols, at least 1",
    "scoring_schema_version": "a version such as 1.2 (text)",
    "models.n_estimators": "a whole number of trees from 1 to 100000",
    "models.learning_rate": "a number above 0, at most 1",
    "models.max_depth": "a whole number from 1 to 64",
    "models.num_leaves": "a whole number from 2 to 131072",
    "models.min_child_samples": "a whole number of rows, at least 1",
    "models.subsample": "a number above 0, at most 1",
    "models.colsample": "a number above 0, at most 1",
    "models.reg_lambda": "a number, 0 or more",
    "models.extra_sklearn": "a list of distinct import paths such as sklearn.linear_model.Ridge "
    "(not lightgbm or xgboost)",
}
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _expected(key: str) -> str:
    return _EXPECTED.get(key) or _EXPECTED.get(f"models.{key}") or "another value"


def _shown(value: Any) -> str:
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _known(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _line(source: str, key: str, error: Any, raw: dict[str, Any]) -> str:
    value: Any = raw
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else error.get("input")
    if error["type"] == "extra_forbidden":
        parent = ModelSettings if key.startswith("models.") else Settings
        name = key.rpartition(".")[2]
        close = difflib.get_close_matches(name, _known(parent), n=1)
        hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(_known(parent))
        return f"{source}: {key}: unknown setting ({hint})"
    line = f"{source}: {key}: expected {_expected(key)}, got {_shown(value)}"
    if isinstance(value, str) and _FLOAT_TEXT.match(value):
        line += f" (YAML reads {value} as text: write it with a dot, e.g. {float(value)!r})"
    return line


def settings_error(exc: ValidationError, raw: Any, source: str) -> SettingsError:
    """One line per setting in error (``{source}: {key}: expected ..., got ...``)."""
    raw = raw if isinstance(raw, dict) else {}
    lines: dict[str, str] = {}
    for error in exc.errors():
        parts = [p for p in error["loc"] if isinstance(p, str)]
        key = ".".join(parts[:2]) if parts[:1] == ["models"] and len(parts) > 1 else parts[0]
        lines.setdefault(key, _line(source, key, error, raw))
    return SettingsError("\n".join(lines.values()), problems=tuple(lines.values()))


def _plain(value: Any) -> Any:
    # YAML mappings and registry records may hold read-only mappings
    if isinstance(value, dict) or hasattr(value, "items") and not isinstance(value, BaseModel):
        return {k: _plain(v) for k, v in dict(value).items()}
    return value


def _validated(model: type[Settings], raw: dict[str, Any], source: str) -> Settings:
    token = _SOURCE.set(source)
    try:
        return model.model_validate(_plain(raw))  # errors: _Frozen.__init__
    finally:
        _SOURCE.reset(token)


def settings_from_dict(raw: Any, source: str = "settings") -> Settings:
    """Settings from a mapping (a YAML file's, a registry record's); ``source`` names it in
    errors."""
    if raw is None:
        raw = {}
    if not hasattr(raw, "items"):
        raise SettingsError(
            f"{source}: expected a mapping of settings (key: value lines), got {_shown(raw)}",
            problems=(f"{source}: not a mapping",),
        )
    return _validated(Settings, dict(raw), source)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice (YAML keeps the last, silently)."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{path}: not valid YAML: {problem}{where}"


def load_settings(path: str | Path | None) -> Settings:
    """Read settings from a YAML file; ``None`` gives the defaults."""
    if path is None:
        return Settings()
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except FileNotFoundError as exc:
        raise SettingsError(f"{path}: settings file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read the settings file: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(_yaml_problem(path, exc)) from exc
    if raw is not None and not isinstance(raw, dict):
        raise SettingsError(
            f"{path}: expected a mapping of settings (key: value lines) at the top level, "
            f"got {_shown(raw)}"
        )
    return settings_from_dict(raw, str(path))


__all__ = [
    "CONFIG_VERSION",
    "DEFAULT_SCORING_SCHEMA",
    "MAX_HORIZON",
    "RUNS_AT_ONCE_ENV",
    "ModelSettings",
    "Settings",
    "auto_threads",
    "load_settings",
    "settings_error",
    "settings_from_dict",
]
