"""fit_efficiency: a run's boosting work per second against one large fit's on this machine.

    python bench/fit_efficiency.py                       # the reference fit alone
    python bench/fit_efficiency.py --rows 100000 --rounds 100

``fit_efficiency`` = row-rounds of a run (every LightGBM and XGBoost fit, rows x rounds
trained, plus permutation predictions, rows x trees: :mod:`cohortflow.fitlog`) / the run's
wall seconds / the row-rounds per second of one single large LightGBM fit (500,000 rows x
60 features x 200 rounds with the settings' model parameters and every core of the
machine), measured in the same bench run. 1.0 means the run kept the machine as busy
fitting as one big fit does; small fits (thread start-up and OpenMP barriers per tree),
Python between fits and work that is not fitting (ranking, I/O) pull it down.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    from cohortflow.fitlog import FitCounts, snapshot  # noqa: E402
except ImportError:  # an older core (stage_times.py --code) counts nothing: row-rounds 0
    from dataclasses import fields

    @dataclass(frozen=True)
    class FitCounts:  # type: ignore[no-redef]  # cohortflow.fitlog.FitCounts' fields
        lightgbm: int = 0
        xgboost: int = 0
        permutation: int = 0
        calls: int = 0

        @property
        def row_rounds(self) -> int:
            return self.lightgbm + self.xgboost + self.permutation

        def __sub__(self, other: FitCounts) -> FitCounts:
            return FitCounts(
                *(getattr(self, f.name) - getattr(other, f.name) for f in fields(self))
            )

        def __add__(self, other: FitCounts) -> FitCounts:
            return FitCounts(
                *(getattr(self, f.name) + getattr(other, f.name) for f in fields(self))
            )

        def to_dict(self) -> dict[str, int]:
            return {**{f.name: getattr(self, f.name) for f in fields(self)}, "row_rounds": 0}

    def snapshot() -> FitCounts:  # type: ignore[misc]
        return FitCounts()


#: run.STAGES (bench/run.py imports this module, so the tuple is repeated here)
STAGES = ("data", "target_ranking", "feature_selection", "training")
FULL_REFERENCE = (500_000, 60, 200)
QUICK_REFERENCE = (100_000, 60, 100)


@dataclass(frozen=True)
class Reference:
    """One large LightGBM fit: its size, seconds and row-rounds per second."""

    rows: int
    features: int
    rounds: int
    threads: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        """Row-rounds per wall second."""
        return self.rows * self.rounds / self.seconds

    def describe(self) -> str:
        return (
            f"reference fit: LightGBM {self.rows:,} rows x {self.features} features x "
            f"{self.rounds} rounds, {self.threads} threads: {self.seconds:.1f} s wall, "
            f"{self.cpu_seconds:.1f} s CPU, {self.rate / 1e6:.2f} M row-rounds/s"
        )


def machine_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def reference_fit(
    rows: int = FULL_REFERENCE[0],
    features: int = FULL_REFERENCE[1],
    rounds: int = FULL_REFERENCE[2],
    settings: Any = None,
) -> Reference:
    """Time one LightGBM fit of ``rows`` x ``features`` (seeded normal float32, a linear
    signal plus noise) for ``rounds`` rounds, the settings' model parameters, every core."""
    import numpy as np

    from cohortflow.models import lightgbm_regressor
    from cohortflow.settings import Settings

    threads = machine_threads()
    settings = (settings or Settings()).replace(n_threads=threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    y = x[:, :5] @ np.linspace(0.05, 0.01, 5) + rng.standard_normal(rows)
    model = lightgbm_regressor(settings, n_estimators=rounds)
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(x, y)
    return Reference(
        rows, features, rounds, threads, time.perf_counter() - t0, time.process_time() - c0
    )


class StageCounts:
    """An ``on_lap`` callback for :func:`run.bare_graph`: the row-rounds of each stage."""

    def __init__(self) -> None:
        self.by_stage: dict[str, FitCounts] = {s: FitCounts() for s in STAGES}
        self._last = snapshot()

    def __call__(self, stage: str) -> None:
        now = snapshot()
        self.by_stage[stage] = self.by_stage.get(stage, FitCounts()) + (now - self._last)
        self._last = now

    @property
    def total(self) -> FitCounts:
        out = FitCounts()
        for counts in self.by_stage.values():
            out = out + counts
        return out


def efficiency(row_rounds: float, seconds: float, reference: Reference) -> float:
    return row_rounds / seconds / reference.rate if seconds > 0 else float("nan")


def per_stage_efficiency(
    counts: Mapping[str, FitCounts], seconds: Mapping[str, float], reference: Reference
) -> dict[str, float]:
    """fit_efficiency of each stage and overall (``"all"``)."""
    out = {s: efficiency(counts[s].row_rounds, seconds[s], reference) for s in counts}
    total = sum(c.row_rounds for c in counts.values())
    out["all"] = efficiency(total, sum(seconds.values()), reference)
    return out


def bench_row(
    row_cls: Callable[..., Any],
    counters: Sequence[StageCounts],
    stage_seconds: Sequence[Mapping[str, float]],
    reference: Reference,
) -> Any:
    """``make bench``'s fit_efficiency row (run.Row): the bare graph's median wall per stage
    and row-rounds (the same every repeat), against the reference fit."""
    import statistics

    counts = counters[-1].by_stage
    med = {s: statistics.median(x[s] for x in stage_seconds) for s in STAGES}
    eff = per_stage_efficiency(counts, med, reference)
    total = sum(c.row_rounds for c in counts.values())
    pairs = {"fit_efficiency": f"{eff['all']:.3f}"}
    pairs.update({f"fit_efficiency_{s}": f"{eff[s]:.3f}" for s in STAGES})
    # training row-rounds only: a permutation prediction's row-tree costs a fraction of a
    # training row-round, so the overall number flatters a run heavy in permutations
    fits = sum(c.lightgbm + c.xgboost for c in counts.values())
    pairs["fit_efficiency_fits"] = f"{efficiency(fits, sum(med.values()), reference):.3f}"
    pairs["row_rounds_M"] = f"{total / 1e6:.1f}"
    pairs["reference_mrr_s"] = f"{reference.rate / 1e6:.2f}"
    return row_cls(
        "fit_efficiency",
        "bare graph, M row-rounds/s",
        total / sum(med.values()) / 1e6,
        "reference fit, M row-rounds/s",
        reference.rate / 1e6,
        eff["all"],
        ">= 0.5",
        reference.describe() + "; per stage: " + ", ".join(f"{s} {eff[s]:.3f}" for s in STAGES),
        pairs,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=FULL_REFERENCE[0])
    parser.add_argument("--features", type=int, default=FULL_REFERENCE[1])
    parser.add_argument("--rounds", type=int, default=FULL_REFERENCE[2])
    args = parser.parse_args(argv)
    ref = reference_fit(args.rows, args.features, args.rounds)
    print(ref.describe())
    print(
        f"reference_mrr_s={ref.rate / 1e6:.3f} seconds={ref.seconds:.2f} load_1m={os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
