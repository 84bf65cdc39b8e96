"""Settings: one frozen dataclass, read from a YAML file, with defaults for everything.

Only the fields that change results go into cohort fingerprints (``fingerprint_fields``);
threads and devices change speed, never numbers we compare.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cohortflow.errors import SettingsError
from cohortflow.names import validate_name

CONFIG_VERSION = 1
# the scoring schema cohorts are written under (metrics.json schema.scoring); readers
# normalise older ones (cohortflow.snapshots.normalize_scoring)
DEFAULT_SCORING_SCHEMA = "1.2"


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


@dataclass(frozen=True)
class ModelSettings:
    """Gradient-boosting settings shared by LightGBM and XGBoost base models."""

    n_estimators: int = 200
    learning_rate: float = 0.05
    max_depth: int = 4
    num_leaves: int = 15
    min_child_samples: int = 50
    subsample: float = 0.8
    colsample: float = 0.8
    reg_lambda: float = 1.0
    # "ridge" or "linear" models named here by scikit-learn import path are added as base models
    extra_sklearn: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    horizons: tuple[int, ...] = (5, 10, 20)
    min_rows: int = 500
    attempt_limit: int = 3
    n_splits: int = 5
    # embargo (AFML 7.4.2, cohortflow/splits.py): each symbol's next `embargo` own bars
    # after the purged span of a test fold (its rows' label windows) leave training too;
    # None means "the horizon" (training resumes 2h bars after the fold), and
    # embargo_for() never goes below the horizon
    embargo: int | None = None
    test_fraction: float = 0.2
    seed: int = 7
    # threads of each model fit; 0 = auto: the cores shared by the runs allowed at once
    # (the Dagster home's run queue limit)
    n_threads: int = 0
    # OOF folds fitted at once, sharing the n_threads (n_threads // fold_workers threads a
    # fit, at least 1; oof.py); 1 = one fold after another with n_threads each
    fold_workers: int = 2
    device: str = "cpu"  # "cpu" or "cuda"
    # LightGBM under device: cuda: "auto" | "cuda" | "gpu" (OpenCL) | "cpu" (models.py)
    lightgbm_device: str = "auto"
    # leakage
    dominance_rank_ic: float = 0.3
    dominance_ratio: float = 5.0
    name_rules: tuple[str, ...] = ("fwd_", "future", "target", "label")
    lookahead_cuts: int = 6
    # the demo adds one clearly named leaking feature; never on a user's data
    demo_leak: bool = False
    # selection
    n_probes: int = 3
    corr_threshold: float = 0.95
    permutation_repeats: int = 3
    # ranking
    quick_estimators: int = 100
    # stacking
    meta_learner: str = "ridge"  # "ridge" | "logistic"
    # non-negative stack weights: a base model whose OOF predictions anti-correlate by
    # chance would otherwise get a negative weight that does not survive out of sample
    nonneg_weights: bool = True
    tune: bool = False
    tune_trials: int = 20
    models: ModelSettings = field(default_factory=ModelSettings)
    # SYMBOL_SPECIFIC view for at most this many symbols (the longest histories); 0 = off
    symbol_views: int = 25
    max_rows: int = 2_000_000
    min_cs: int = 1
    scoring_schema_version: str = DEFAULT_SCORING_SCHEMA

    def __post_init__(self) -> None:
        if not self.horizons or any(int(h) < 1 for h in self.horizons):
            raise SettingsError(f"horizons must be positive bar counts, got {self.horizons!r}")
        if len(set(self.horizons)) != len(self.horizons):
            raise SettingsError(f"horizons must be distinct, got {self.horizons!r}")
        if self.min_rows < 10:
            raise SettingsError(f"min_rows must be at least 10, got {self.min_rows}")
        if self.attempt_limit < 1:
            raise SettingsError(f"attempt_limit must be at least 1, got {self.attempt_limit}")
        if self.n_splits < 2:
            raise SettingsError(f"n_splits must be at least 2, got {self.n_splits}")
        if not 0.0 < self.test_fraction < 0.5:
            raise SettingsError(f"test_fraction must be in (0, 0.5), got {self.test_fraction}")
        if self.n_threads < 0 or self.fold_workers < 1:
            raise SettingsError(
                f"n_threads must be 0 (auto) or more and fold_workers at least 1, got "
                f"{self.n_threads} and {self.fold_workers}"
            )
        if self.n_threads == 0:
            object.__setattr__(self, "n_threads", auto_threads())
        # two fits sharing one thread only wait for each other
        object.__setattr__(self, "fold_workers", min(self.fold_workers, self.n_threads))
        if self.device not in ("cpu", "cuda"):
            raise SettingsError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.lightgbm_device not in ("auto", "cuda", "gpu", "cpu"):
            raise SettingsError(
                "lightgbm_device must be 'auto', 'cuda', 'gpu' or 'cpu', "
                f"got {self.lightgbm_device!r}"
            )
        if self.meta_learner not in ("ridge", "logistic"):
            raise SettingsError(
                f"meta_learner must be 'ridge' or 'logistic', got {self.meta_learner!r}"
            )
        for target in self.targets:
            validate_name("target", target)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(f"fwd_ret_{h}" for h in self.horizons)

    def embargo_for(self, horizon: int) -> int:
        """Embargo in bars for a target of ``horizon`` bars: at least the horizon."""
        return max(int(horizon), int(self.embargo or 0))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings that change results (no threads, no device)."""
        d = self.to_dict()
        for key in ("n_threads", "fold_workers", "device", "lightgbm_device"):
            d.pop(key)
        return d

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _coerce(cls: type, raw: dict[str, Any], source: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise SettingsError(f"{source}: unknown setting(s) {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "models":
            if not isinstance(value, dict):
                raise SettingsError(f"{source}: 'models' must be a mapping")
            values[key] = _coerce(ModelSettings, value, source)
        elif isinstance(value, list):
            values[key] = tuple(value)
        else:
            values[key] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise SettingsError(f"{source}: {exc}") from exc


def settings_from_dict(raw: dict[str, Any] | None, source: str = "settings") -> Settings:
    return _coerce(Settings, dict(raw or {}), source)


def load_settings(path: str | Path | None) -> Settings:
    """Read settings from a YAML file; ``None`` gives the defaults."""
    if path is None:
        return Settings()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SettingsError(f"{path}: settings file not found") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML ({exc})") from exc
    if raw is not None and not isinstance(raw, dict):
        raise SettingsError(f"{path}: expected a mapping of settings at the top level")
    return settings_from_dict(raw, str(path))
