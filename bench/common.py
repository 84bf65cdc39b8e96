"""What every benchmark script shares: the machine's description, alternating timed
repeats, the result table and where results are kept (``bench/results/``)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PACKAGES = ("dagster", "pandas", "numpy", "pyarrow", "lightgbm", "xgboost", "scikit-learn")


# --------------------------------------------------------------------------- machine
def machine_info() -> dict[str, str]:
    """Cores, CPU model, load, Python and package versions: what the numbers ran on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cores": str(usable),
        "cpu": cpu,
        "load_1m": f"{os.getloadavg()[0]:.2f}",
        "python": platform.python_version(),
    }
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[name] = metadata.version(name)
    return info


# --------------------------------------------------------------------------- timing
def median_s(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def alternate(
    sides: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: bool = True,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Wall seconds of each side, ``repeats`` times, the order flipped every repeat (so load
    drifts on a shared machine hit both sides alike); one untimed warm-up each first.
    ``cpu``, when given, gets each call's CPU seconds of the process (all threads) too."""
    names = list(sides)
    if warmup:
        for name in names:
            sides[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            sides[name]()
            out[name].append(time.perf_counter() - t0)
            if cpu is not None:
                cpu.setdefault(name, []).append(time.process_time() - c0)
    return out


def last_line_pairs(text: str) -> dict[str, str]:
    """The ``key=value`` pairs of the last non-empty line of a colleague script's output."""
    line = [ln for ln in text.splitlines() if ln.strip()][-1]
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


def captured(fn: Callable[[], Any]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn()
    return buf.getvalue()


@dataclass
class Row:
    measure: str
    a_label: str
    a_s: float
    b_label: str
    b_s: float
    value: float
    goal: str
    note: str = ""
    pairs: dict[str, str] = dataclasses.field(default_factory=dict)  # for the last line


def format_table(rows: list[Row]) -> list[str]:
    head = (
        f"{'measure':<26}{'value':>9}  {'goal':<11}{'side A':<28}{'s':>9}  {'side B':<26}{'s':>9}"
    )
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(
            f"{r.measure:<26}{r.value:>9.3f}  {r.goal:<11}{r.a_label:<28}{r.a_s:>9.3f}  "
            f"{r.b_label:<26}{r.b_s:>9.3f}"
        )
        if r.note:
            out.append(f"{'':<26}  {r.note}")
    return out


def save(lines: list[str]) -> None:
    from cohortflow.fsio import atomic_write_text

    text = "\n".join(lines) + "\n"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    atomic_write_text(RESULTS / f"bench_{stamp}.txt", text)
    atomic_write_text(RESULTS / "latest.txt", text)
