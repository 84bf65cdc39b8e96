"""The whole graph of one partition on 1 Celery worker against 2, on the topology of
test_topology.py (PostgreSQL, Redis, moto S3, all on 127.0.0.1), alternating.

    .venv/bin/python tests/topology/bench_workers.py [--repeats 2] [--symbols 4] [--bars 400]

Each run: a fresh output prefix on S3, the workers started (and their code imported)
before the clock starts, the run's wall time, the CPU seconds of the worker processes, the
machine's load before and after, and each step's seconds from its events. Targets come
from fast.yaml (horizons 5 and 10: two per-target chains that can run side by side).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import topology_job as tj  # noqa: E402
import topology_services as ts  # noqa: E402


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their waited-for children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / tick


def tree_pids(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def step_seconds(instance, run_id: str) -> dict[str, float]:
    from dagster import DagsterEventType

    starts, out = {}, {}
    kinds = {DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS}
    for rec in instance.all_logs(run_id, of_type=kinds):
        if rec.dagster_event.event_type == DagsterEventType.STEP_START:
            starts[rec.step_key] = rec.timestamp
        else:
            out[rec.step_key] = rec.timestamp - starts[rec.step_key]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument("--bars", type=int, default=400)
    args = parser.parse_args()
    from cohortflow.synthetic import generate

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # dagster-celery registers its task once per submitted step; Celery 5.7 warns each time
    warnings.filterwarnings("ignore", message="Task name 'execute_plan' is already registered")
    folder = Path(tempfile.mkdtemp(prefix="cohortflow-bench-workers-"))
    data, settings = folder / "data", folder / "settings.yaml"
    generate(data, fmt="parquet", n_symbols=args.symbols, n_bars=args.bars, n_noise=4, seed=3)
    raw = yaml.safe_load((ts.PROJECT / "config" / "fast.yaml").read_text())
    settings.write_text(yaml.safe_dump(raw, sort_keys=True))
    print(f"universe {args.symbols} symbols x {args.bars} bars, horizons {raw['horizons']}")
    results: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    with ts.postgres() as pg, ts.redis() as redis, ts.moto_s3() as s3:
        home = ts.dagster_home(folder / "dagster_home", pg)
        env = {**s3.env, "DAGSTER_HOME": str(home), "OMP_WAIT_POLICY": "PASSIVE"}
        with ts.patched_env(env):
            from dagster import DagsterInstance

            instance = DagsterInstance.get()
            executor = {"execution": {"config": ts.celery_config(redis)}}
            for repeat in range(args.repeats):
                for n in (1, 2) if repeat % 2 == 0 else (2, 1):
                    root = s3.root(f"bench-{repeat}-{n}")
                    with ts.celery_workers(n, redis, env, folder) as started:
                        workers = [p for pid in started.pids for p in tree_pids(pid)]
                        cpu0, load0 = cpu_seconds(workers), os.getloadavg()[0]
                        moto0 = cpu_seconds([s3.pid])
                        batch, decision = tj.register_attempt(str(data), root, str(settings))
                        run = tj.run_attempt(
                            "celery_graph_job",
                            str(data),
                            root,
                            str(settings),
                            batch,
                            decision,
                            instance,
                            executor,
                        )
                        cpu = cpu_seconds(workers) - cpu0
                        moto = cpu_seconds([s3.pid]) - moto0
                        load1 = os.getloadavg()[0]
                    assert run.success, run.failure
                    steps = step_seconds(instance, run.run_id)
                    results[n].append((run.seconds, cpu))
                    print(
                        f"repeat {repeat} workers {n}: {run.seconds:.1f} s wall, worker CPU "
                        f"{cpu:.1f} s, moto CPU {moto:.1f} s, load {load0:.2f} -> {load1:.2f}; steps "
                        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(steps.items()))
                        + f"; sum of steps {sum(steps.values()):.1f} s; by worker "
                        + ", ".join(
                            f"{k}->{v.split('-')[0]}" for k, v in sorted(run.workers.items())
                        ),
                        flush=True,
                    )
            instance.dispose()
    shutil.rmtree(folder, ignore_errors=True)
    one = statistics.median(s for s, _ in results[1])
    two = statistics.median(s for s, _ in results[2])
    pairs = [a / b for (a, _), (b, _) in zip(results[1], results[2], strict=True)]
    print(
        f"median wall: 1 worker {one:.1f} s, 2 workers {two:.1f} s, speedup {one / two:.2f}x; "
        f"per repeat {', '.join(f'{r:.2f}x' for r in pairs)} "
        f"(cores {os.cpu_count()}, load now {os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    main()
