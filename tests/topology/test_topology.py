"""One partition of the whole graph on a production-shaped topology, all on 127.0.0.1
(``make test-topology``; ``make test`` leaves it out: marker ``topology``):

- instance storage: PostgreSQL (dagster-postgres), a throwaway cluster made by
  initdb/pg_ctl in a temporary folder on a free port;
- executor: dagster-celery, Redis as broker and result backend, two Celery workers
  (separate processes, one step at a time each);
- output root: S3, a moto server reached through universal-pathlib / s3fs
  (``s3://cohortflow-topology/...``): IO manager, index, registry, locks and markers there.

Afterwards the tree on S3 is compared file by file with the same partition run locally
with the in-process executor: byte-identical except each metadata.json's ``run`` key.
Two writers of one partition on S3 both succeed and leave a whole tree that verifies;
the S3 lock excludes a second process and outlives no killed holder longer than its lease.

``COHORTFLOW_TOPOLOGY_REPORT=path`` writes what was compared and measured to ``path``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import topology_job as tj
import topology_services as ts
import yaml

pytestmark = [
    pytest.mark.topology,
    pytest.mark.timeout(1800),
    # dagster-celery registers its task once per submitted step; Celery 5.7 warns from the
    # second on (same callable, so nothing changes)
    pytest.mark.filterwarnings("ignore:Task name 'execute_plan' is already registered"),
]

FAST = ts.PROJECT / "config" / "fast.yaml"
NOT_TREE = ("_index", "_locks")  # caches and locks: each root keeps its own kind
REPORT: list[str] = []
# attempt folders of one target: ranking and selection (cross-sectional + 4 symbols), training
FOLDERS = 2 * (1 + 4) + 1


# --------------------------------------------------------------------------- fixtures
@dataclass(frozen=True)
class Topology:
    pg: ts.Postgres
    redis: ts.Redis
    s3: ts.S3
    home: Path
    folder: Path
    data: Path
    settings: Path

    @property
    def env(self) -> dict[str, str]:
        """What every process of the deployment shares: S3 endpoint and credentials,
        the Dagster home (PostgreSQL), quiet OpenMP threads."""
        return {**self.s3.env, "DAGSTER_HOME": str(self.home), "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    pytest.importorskip("dagster_celery", reason="the `topology` extra: make test-topology")
    pytest.importorskip("dagster_postgres", reason="the `topology` extra: make test-topology")
    pytest.importorskip("s3fs", reason="the `topology` extra: make test-topology")
    from cohortflow.synthetic import generate

    folder = tmp_path_factory.mktemp("topology")
    data, settings = folder / "data", folder / "settings.yaml"
    generate(data, fmt="parquet", n_symbols=4, n_bars=400, n_noise=4, seed=3)
    raw = yaml.safe_load(FAST.read_text())
    raw["horizons"] = [5]  # one target: the graph stays a few minutes on 2 cores
    settings.write_text(yaml.safe_dump(raw, sort_keys=True))
    t0 = time.perf_counter()
    try:
        with ts.postgres() as pg, ts.redis() as redis, ts.moto_s3() as s3:
            home = ts.dagster_home(folder / "dagster_home", pg)
            REPORT.append(
                f"services up in {time.perf_counter() - t0:.1f} s: PostgreSQL {pg.url}, "
                f"Redis {redis.url(0)}, S3 (moto) {s3.endpoint}"
            )
            topo = Topology(pg, redis, s3, home, folder, data, settings)
            with ts.patched_env(topo.env):
                yield topo
    except ts.Missing as exc:
        pytest.skip(f"topology not available: {exc}")
    finally:
        _write_report()


@pytest.fixture(scope="module")
def instance(topology: Topology) -> Iterator[Any]:
    from dagster import DagsterInstance

    with DagsterInstance.get() as inst:
        yield inst


@pytest.fixture(scope="module")
def local_reference(topology: Topology, instance: Any) -> tuple[Path, tj.PartitionRun]:
    """The same partition on a local folder with the in-process executor."""
    root = topology.folder / "local"
    batch, decision = tj.register_attempt(str(topology.data), str(root), str(topology.settings))
    run = tj.run_attempt(
        "in_process_graph_job",
        str(topology.data),
        str(root),
        str(topology.settings),
        batch,
        decision,
        instance,
    )
    assert run.success, run.failure
    assert set(run.step_pids.values()) == {os.getpid()}  # in process, for the comparison
    REPORT.append(f"local reference (in-process executor): {run.seconds:.1f} s, run {run.run_id}")
    return root, run


# --------------------------------------------------------------------------- the tree
def tree_files(root: Any) -> dict[str, bytes]:
    """Every file of the tree under ``root`` (local Path or s3:// URL) by relative path,
    without the caches and locks (``_index``, ``_locks``)."""
    if isinstance(root, Path):
        files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
        return {
            rel: p.read_bytes() for rel, p in files.items() if rel.split("/")[0] not in NOT_TREE
        }
    from upath import UPath

    base = UPath(root)
    fs, prefix = base.fs, base.path.rstrip("/")
    out = {}
    for key in fs.find(prefix):
        rel = key[len(prefix) + 1 :]
        if rel.split("/")[0] not in NOT_TREE:
            out[rel] = fs.cat_file(key)
    return out


@dataclass(frozen=True)
class Comparison:
    identical: list[str]  # byte for byte
    metadata: list[str]  # metadata.json equal without its `run` key
    differ: list[str]
    only_left: list[str]
    only_right: list[str]

    def lines(self, left: str, right: str) -> list[str]:
        by_top: dict[str, int] = {}
        for rel in self.identical + self.metadata:
            top = "/".join(rel.split("/")[:2]) if rel.startswith("targets/") else rel.split("/")[0]
            by_top[top] = by_top.get(top, 0) + 1
        return [
            f"compared {left} with {right}: {len(self.identical) + len(self.metadata)} files; "
            f"{len(self.identical)} byte-identical, {len(self.metadata)} metadata.json identical "
            f"but for the `run` key, {len(self.differ)} different, "
            f"{len(self.only_left)} only in {left}, {len(self.only_right)} only in {right}",
            "  files compared, by folder: "
            + ", ".join(f"{k} {v}" for k, v in sorted(by_top.items())),
            *(f"  DIFFERENT {rel}" for rel in self.differ),
            *(f"  ONLY IN {left}: {rel}" for rel in self.only_left),
            *(f"  ONLY IN {right}: {rel}" for rel in self.only_right),
        ]


def compare_trees(left: dict[str, bytes], right: dict[str, bytes]) -> Comparison:
    from cohortflow.canonical import canonical_json_bytes

    identical, metadata, differ = [], [], []
    for rel in sorted(set(left) & set(right)):
        a, b = left[rel], right[rel]
        if a == b:
            identical.append(rel)
        elif rel.endswith("/metadata.json"):
            doc_a, doc_b = json.loads(a), json.loads(b)
            doc_a.pop("run"), doc_b.pop("run")
            (
                metadata if canonical_json_bytes(doc_a) == canonical_json_bytes(doc_b) else differ
            ).append(rel)
        else:
            differ.append(rel)
    return Comparison(
        identical,
        metadata,
        differ,
        sorted(set(left) - set(right)),
        sorted(set(right) - set(left)),
    )


def assert_whole_on_s3(root: str, local_root: Path, what: str, listing: bool = False) -> None:
    """The S3 tree verifies, no attempt is left in progress, no lock object is left,
    its index lists the same complete cohorts as the local run's, and every file but
    each metadata.json's `run` key is byte-identical to the local tree."""
    from upath import UPath

    from cohortflow.index import CohortIndex
    from cohortflow.layout import walk_cohorts
    from cohortflow.verify import verify_root

    report = verify_root(root)
    assert report.folders == FOLDERS and report.problems == [], [p.line() for p in report.problems]
    base = UPath(root)
    assert [k for k in base.fs.find(base.path) if k.endswith("/_IN_PROGRESS")] == []
    assert base.fs.find(f"{base.path}/_locks") == []  # every lock object was released
    indexed = CohortIndex(root).list(include_incomplete=True)
    assert [r.path for r in indexed] == [r.path for r in CohortIndex(local_root).list()]
    assert [r.path for r in indexed] == [r.path for r in walk_cohorts(root)]
    assert len(indexed) == report.folders  # one cohort per attempt folder

    left, right = tree_files(local_root), tree_files(root)
    result = compare_trees(left, right)
    REPORT.append(f"{what}: verify_root: {report.folders} attempt folders, 0 problems; "
                  f"index: {len(indexed)} cohorts, as the tree and the local index")  # fmt: skip
    REPORT.extend(result.lines("local", root))
    if listing:
        REPORT.append(f"  every file compared ({what}; metadata.json: all but its `run` key):")
        REPORT.extend(f"    {rel}" for rel in sorted(result.identical + result.metadata))
    assert (result.differ, result.only_left, result.only_right) == ([], [], [])
    assert len(result.metadata) == report.folders  # one metadata.json per cohort
    assert len(result.identical) > 80


# --------------------------------------------------------------------------- tests
def test_partition_on_postgres_celery_and_s3_matches_the_local_run(
    topology: Topology, instance: Any, local_reference: tuple[Path, tj.PartitionRun]
) -> None:
    import psycopg2
    from dagster_postgres import PostgresRunStorage

    local_root, _ = local_reference
    root = topology.s3.root("celery")
    executor = {"execution": {"config": ts.celery_config(topology.redis)}}
    t0 = time.perf_counter()
    with ts.celery_workers(2, topology.redis, topology.env, topology.folder) as workers:
        started = time.perf_counter() - t0
        batch, decision = tj.register_attempt(str(topology.data), root, str(topology.settings))
        run = tj.run_attempt(
            "celery_graph_job",
            str(topology.data),
            root,
            str(topology.settings),
            batch,
            decision,
            instance,
            executor,
        )
    assert run.success, run.failure
    REPORT.append(
        f"celery run on S3: {run.seconds:.1f} s (+{started:.1f} s to start 2 workers), "
        f"run {run.run_id}, steps by worker: "
        + ", ".join(f"{step} -> {worker}" for step, worker in sorted(run.workers.items()))
    )

    # every step ran in a Celery worker, spread over both of them, none in this process
    assert set(run.workers) == set(run.step_pids) and len(run.step_pids) == 5
    assert {w.split("@")[0] for w in run.workers.values()} == set(workers.names)
    assert len(set(run.step_pids.values())) == 2 and os.getpid() not in run.step_pids.values()

    # the run and its events are in PostgreSQL
    assert isinstance(instance.run_storage, PostgresRunStorage)
    with psycopg2.connect(topology.pg.url) as con, con.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_id = %s", (run.run_id,))
        assert cur.fetchall() == [("SUCCESS",)]
        cur.execute("SELECT count(*) FROM event_logs WHERE run_id = %s", (run.run_id,))
        (events,) = cur.fetchone()
    assert events > 50
    REPORT.append(f"PostgreSQL: run {run.run_id} SUCCESS with {events} events in event_logs")

    assert_whole_on_s3(root, local_root, "celery run on S3", listing=True)


WRITER = textwrap.dedent(
    """
    import json, logging, sys, time, warnings
    from pathlib import Path
    warnings.filterwarnings("ignore")
    import topology_job
    from dagster import DagsterInstance
    from cohortflow_dagster.partitions import attempt_key
    data, root, settings, batch, attempt, ready, go = sys.argv[1:8]
    waits, takeovers = [], []

    class Locks(logging.Handler):
        def emit(self, record):
            if "waited" in record.msg:
                waits.append(record.args[1])
            elif "took over" in record.msg:
                takeovers.append(record.getMessage())

    lock_log = logging.getLogger("cohortflow.fsio")
    lock_log.setLevel(logging.INFO)
    lock_log.addHandler(Locks())
    job = topology_job.in_process_graph_job(data, root, settings)
    instance = DagsterInstance.get()  # PostgreSQL (DAGSTER_HOME)
    instance.add_dynamic_partitions("universe_batch", [batch])
    instance.add_dynamic_partitions("attempt", [attempt])
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.005)
    t0 = time.time()
    result = job.execute_in_process(
        partition_key=attempt_key(batch, int(attempt)),
        instance=instance,
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
        raise_on_error=False,
    )
    print(json.dumps({"success": result.success, "seconds": time.time() - t0,
                      "waits": waits, "takeovers": takeovers}))
    """
)


def test_two_writers_of_one_partition_on_s3(
    topology: Topology, local_reference: tuple[Path, tj.PartitionRun]
) -> None:
    local_root, _ = local_reference
    root = topology.s3.root("two-writers")
    batch, decision = tj.register_attempt(str(topology.data), root, str(topology.settings))
    go = topology.folder / "go"
    env = {**os.environ, **topology.env, "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = f"{ts.HERE}{os.pathsep}{env.get('PYTHONPATH', '')}"
    procs = []
    for i in range(2):
        ready = topology.folder / f"ready_{i}"
        args = [str(topology.data), root, str(topology.settings), batch, str(decision.attempt)]
        procs.append(
            (
                ready,
                subprocess.Popen(
                    [sys.executable, "-c", WRITER, *args, str(ready), str(go)],
                    cwd=ts.PROJECT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    deadline = time.monotonic() + 300
    while not all(ready.exists() for ready, _ in procs):
        for _, proc in procs:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "writers did not load the code location"
        time.sleep(0.05)
    go.touch()  # both materialize the same batch x attempt now
    outcomes = []
    for _, proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-3000:]
        outcomes.append(json.loads(stdout.strip().splitlines()[-1]))
    REPORT.append(
        "two writers of one partition on S3: "
        + "; ".join(
            f"writer {i + 1}: success {o['success']}, {o['seconds']:.1f} s, waited for a lock "
            f"{len(o['waits'])} times ({sum(o['waits']):.1f} s)"
            for i, o in enumerate(outcomes)
        )
    )
    assert [o["success"] for o in outcomes] == [True, True]
    assert [o["takeovers"] for o in outcomes] == [[], []]  # no lease ran out
    assert_whole_on_s3(root, local_root, "two writers on S3")


HOLDER = textwrap.dedent(
    """
    import contextlib, sys, time
    from cohortflow.fsio import exclusive_lock
    lock, start, mode, hold = sys.argv[1], float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    while time.time() < start:
        time.sleep(0.002)
    with exclusive_lock(lock, lease_s=2.0) if mode == "lock" else contextlib.nullcontext():
        t0 = time.time()
        print("held", flush=True)
        time.sleep(hold)
        t1 = time.time()
    print(t0, t1, flush=True)
    """
)


def _holder(lock: str, start: float, mode: str, hold_s: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, lock, str(start), mode, str(hold_s)],
        cwd=ts.PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _windows(lock: str, mode: str) -> list[tuple[float, float]]:
    start = time.time() + 3.0  # both ask at the same moment, after their imports
    procs = [_holder(lock, start, mode, 0.4) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    return sorted(tuple(map(float, out.split()[-2:])) for out, _ in outs)


def _overlap(windows: list[tuple[float, float]]) -> bool:
    (a0, a1), (b0, b1) = windows
    return max(a0, b0) < min(a1, b1)


def test_s3_lock_excludes_another_process(topology: Topology) -> None:
    lock = topology.s3.root("locks/_locks/partition.lock")
    locked = _windows(lock, "lock")
    assert not _overlap(locked), locked
    # control: the same two processes without the lock do overlap, so the check can fail
    assert _overlap(_windows(lock, "none"))
    REPORT.append(
        f"S3 lock, two processes at once: held {locked[0][1] - locked[0][0]:.2f} s and "
        f"{locked[1][1] - locked[1][0]:.2f} s, the second from {locked[1][0] - locked[0][1]:+.3f} "
        "s after the first let go; without the lock they overlap"
    )


def test_s3_lock_of_a_dead_or_stalled_holder_is_taken_over_after_its_lease(
    topology: Topology,
) -> None:
    from upath import UPath

    from cohortflow.fsio import S3Lock

    lock = topology.s3.root("locks/_locks/killed.lock")
    # a live holder renews its 2 s lease: a waiter waits the 4 s it holds, takes nothing over
    holder = _holder(lock, time.time(), "lock", 4.0)
    assert holder.stdout.readline().strip() == "held"
    live = S3Lock(UPath(lock), lease_s=2.0)
    live.acquire()
    live.release()
    holder.communicate(timeout=30)
    assert live.waited_s > 3.0 and not live.took_over, live.waited_s

    # a holder killed while it holds the lock leaves the object; after 2 s it is taken over
    holder = _holder(lock, time.time(), "lock", 60.0)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    assert UPath(lock).exists()  # the dead holder's lock object
    orphan = S3Lock(UPath(lock), lease_s=2.0)
    orphan.acquire()
    assert orphan.took_over and 1.0 < orphan.waited_s < 8.0, orphan.waited_s
    assert orphan.release() is False
    assert not UPath(lock).exists()

    # a holder stopped (SIGSTOP) past its lease loses the lock; resumed, its block ends in
    # LockLostError instead of passing over files another writer may have rewritten
    holder = _holder(lock, time.time(), "lock", 8.0)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGSTOP)
    thief = S3Lock(UPath(lock), lease_s=2.0)
    thief.acquire()
    assert thief.took_over
    assert thief.release() is False
    holder.send_signal(signal.SIGCONT)
    _, stderr = holder.communicate(timeout=60)
    assert holder.returncode != 0 and "LockLostError" in stderr, stderr[-2000:]
    REPORT.append(
        f"S3 lock lease (2 s): a live holder is waited for ({live.waited_s:.1f} s, no takeover); "
        f"a SIGKILLed holder's lock is taken over after {orphan.waited_s:.1f} s; a holder "
        f"stopped past its lease is taken over after {thief.waited_s:.1f} s and, resumed, "
        "fails with LockLostError"
    )


def _write_report() -> None:
    path = os.environ.get("COHORTFLOW_TOPOLOGY_REPORT")
    if path and REPORT:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("\n".join(REPORT) + "\n")
