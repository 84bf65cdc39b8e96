"""The ``DAGSTER_HOME`` that cohortflow runs into, and how many runs it lets run at once.

A home cohortflow creates gets a ``dagster.yaml`` with Dagster's documented settings: no
telemetry, no first-visit dialog, the project's loggers in the run logs at INFO (so the
UI's run page shows each stage, model and fold as it happens), and a run queue that
starts at most ``runs_at_once()`` runs together. Fit threads are derived from the same
number (:func:`export_runs_at_once`), so several runs never oversubscribe the cores. An existing
``dagster.yaml`` is left as it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from cohortflow.fsio import atomic_write_text, exclusive_lock
from cohortflow.layout import dagster_yaml


def cores() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_runs_at_once() -> int:
    """Runs a new home lets run together: one per two cores (each fits on two threads)."""
    return max(1, cores() // 2)


def new_home_yaml(max_concurrent_runs: int | None = None) -> str:
    runs = max_concurrent_runs or default_runs_at_once()
    doc = {
        "telemetry": {"enabled": False},
        "nux": {"enabled": False},
        "python_logs": {"managed_python_loggers": ["cohortflow"], "python_log_level": "INFO"},
        "concurrency": {"runs": {"max_concurrent_runs": runs}},
        "run_queue": {"dequeue_interval_seconds": 2},
    }
    return "# written by cohortflow for a new DAGSTER_HOME (docs: README, 'Dagster home')\n" + (
        yaml.safe_dump(doc, sort_keys=True)
    )


def runs_at_once(home: str | Path | None = None) -> int:
    """``concurrency.runs.max_concurrent_runs`` of the home's dagster.yaml (1 if unset)."""
    home = home or os.environ.get("DAGSTER_HOME")
    if not home:
        return 1
    try:
        doc = yaml.safe_load(dagster_yaml(Path(home)).read_text()) or {}
        value = doc.get("concurrency", {}).get("runs", {}).get("max_concurrent_runs")
        if value is None:
            value = doc.get("run_queue", {}).get("max_concurrent_runs")
        return max(1, int(value)) if value is not None else 1
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        return 1


def export_runs_at_once(home: str | Path | None = None) -> int:
    """Tell the core how many runs may fit at once (``n_threads: 0`` divides the cores by
    it: :func:`cohortflow.settings.auto_threads`); returns the number."""
    from cohortflow.settings import RUNS_AT_ONCE_ENV

    runs = runs_at_once(home)
    os.environ[RUNS_AT_ONCE_ENV] = str(runs)
    return runs


def open_instance(home: Path) -> Any:
    """The home's Dagster instance, created under a lock on the home: a new sqlite home
    makes its schema on first open, and runs started together into a fresh home would
    otherwise race on it (``UNIQUE constraint failed: alembic_version``)."""
    from dagster import DagsterInstance

    with exclusive_lock(home / ".cohortflow-open.lock"):
        return DagsterInstance.get()


def ensure_dagster_home() -> Path:
    """``DAGSTER_HOME`` when set, else ``.dagster_home`` in the working folder (sqlite), so
    runs started here show in ``make ui``."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = dagster_yaml(home)
    if not config.exists():
        atomic_write_text(config, new_home_yaml())
    os.environ["DAGSTER_HOME"] = str(home)
    return home
