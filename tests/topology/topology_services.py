"""Throwaway services on 127.0.0.1 for the topology test: a PostgreSQL cluster (Dagster's
instance storage), a Redis server (the Celery broker and result backend), a moto S3
server (the output root) and Celery workers running Dagster steps.

Each is a context manager that starts the real program on a free port in a temporary
folder, waits until it answers, and stops it (and only it, by its own process id or
process group) afterwards. Shared by tests/topology/test_topology.py and
tests/topology/bench_workers.py; the Debian packages come from .ci/run, the Python ones
from the ``topology`` extra (``make test-topology``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
HOST = "127.0.0.1"
PG_USER = "cohortflow"  # the cluster's superuser (trust auth on 127.0.0.1 only)
PG_DB = "dagster"
BUCKET = "cohortflow-topology"
S3_ENV = {  # fake credentials: moto accepts any; nothing leaves 127.0.0.1
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class Missing(RuntimeError):
    """A program the topology needs is not installed (the test skips, saying which)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it listened")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {HOST}:{port} within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen, group: bool = False, timeout_s: float = 20) -> None:
    """SIGTERM (the process group when ``group``), then SIGKILL after ``timeout_s``."""
    if proc.poll() is not None:
        return
    send = (lambda sig: os.killpg(proc.pid, sig)) if group else proc.send_signal
    with contextlib.suppress(ProcessLookupError):
        send(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            send(signal.SIGKILL)
        proc.wait(10)


# ----------------------------------------------------------------------------- PostgreSQL
def pg_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if not found:
        raise Missing(f"{name} not found (Debian: apt-get install postgresql; .ci/run does it)")
    return found


def _as_user() -> tuple[list[str], int | None, int | None]:
    """initdb refuses to run as root: as root, run the server programs as Debian's
    ``postgres`` system user (created by the postgresql package) through ``runuser``."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise Missing("running as root and there is no `postgres` user for initdb") from None
    runuser = shutil.which("runuser")
    if not runuser:
        raise Missing("running as root and `runuser` (util-linux) is missing")
    return [runuser, "-u", "postgres", "--"], user.pw_uid, user.pw_gid


@dataclass(frozen=True)
class Postgres:
    port: int
    folder: Path

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@{HOST}:{self.port}/{PG_DB}"

    def storage_yaml(self) -> dict:
        """The ``storage:`` block of dagster.yaml for this cluster (docs/scaling.md §4)."""
        return {
            "postgres": {
                "postgres_db": {
                    "hostname": HOST,
                    "port": self.port,
                    "username": PG_USER,
                    "password": "unused-trust-auth",
                    "db_name": PG_DB,
                    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which
                    # dagster-postgres does not install; it ships psycopg2
                    "scheme": "postgresql+psycopg2",
                }
            }
        }


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """A fresh cluster (initdb) in a temporary folder, served by pg_ctl on a free port."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    prefix, uid, gid = _as_user()
    folder = Path(tempfile.mkdtemp(prefix="cohortflow-pg-"))
    if uid is not None:
        os.chown(folder, uid, gid)
    data, log, port = folder / "data", folder / "server.log", free_port()
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8",
         "--no-sync", "--no-instructions"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    options = f"-c listen_addresses={HOST} -p {port} -k {folder} -c max_connections=200"
    started = subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
         "start"],
        capture_output=True, timeout=90,
    )  # fmt: skip
    try:
        if started.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.decode()}{_tail(log)}")
        import psycopg2

        con = psycopg2.connect(host=HOST, port=port, user=PG_USER, dbname="postgres")
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute(f"CREATE DATABASE {PG_DB}")
        con.close()
        yield Postgres(port, folder)
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True, timeout=90,
        )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return "\n" + path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# ----------------------------------------------------------------------------- Redis
@dataclass(frozen=True)
class Redis:
    port: int

    def url(self, db: int) -> str:
        return f"redis://{HOST}:{self.port}/{db}"


@contextlib.contextmanager
def redis() -> Iterator[Redis]:
    """Debian's redis-server on a free port, no persistence (a broker for one test)."""
    binary = shutil.which("redis-server")
    if not binary:
        raise Missing("redis-server not found (Debian: apt-get install redis-server; .ci/run)")
    folder = Path(tempfile.mkdtemp(prefix="cohortflow-redis-"))
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, proc, "redis-server")
        yield Redis(port)
    finally:
        stop(proc)
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- S3 (moto)
@dataclass(frozen=True)
class S3:
    endpoint: str
    pid: int  # the moto server's process

    @property
    def env(self) -> dict[str, str]:
        """The usual AWS variables; botocore (hence s3fs) reads AWS_ENDPOINT_URL."""
        return {**S3_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def root(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}"


@contextlib.contextmanager
def moto_s3() -> Iterator[S3]:
    """moto's S3 API server on a free port, with the test bucket."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        raise Missing("moto[server] not installed (the `topology` extra)") from None
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, proc, "moto server")
        s3 = S3(f"http://{HOST}:{port}", proc.pid)
        with patched_env(s3.env):
            import s3fs

            s3fs.S3FileSystem(skip_instance_cache=True).mkdir(BUCKET)
        yield s3
    finally:
        stop(proc)


# ----------------------------------------------------------------------------- Celery
def celery_config(redis_: Redis) -> dict:
    """The celery_executor's config: broker and result backend on Redis (db 0 and 1);
    a step's message is acknowledged when it ends, so a busy worker reserves no second
    step while an idle one waits (with the CLI's --prefetch-multiplier=1)."""
    return {
        "broker": redis_.url(0),
        "backend": redis_.url(1),
        "config_source": {"task_acks_late": True},
    }


@dataclass(frozen=True)
class Workers:
    names: list[str]  # Celery node names before the "@host"
    pids: list[int]  # the `dagster-celery worker start` processes (each a process group)


@contextlib.contextmanager
def celery_workers(
    n: int, redis_: Redis, env: Mapping[str, str], folder: Path
) -> Iterator[Workers]:
    """``n`` Dagster Celery workers (``dagster-celery worker start``), one task at a time
    each, listening on the ``dagster`` queue, the code location imported before the pool
    forks (``-i``); yields once all answer a ping."""
    cli = Path(sys.executable).parent / "dagster-celery"
    config = folder / "celery.yaml"
    config.write_text(yaml.safe_dump({"execution": {"config": celery_config(redis_)}}))
    procs, names = [], [f"w{i + 1}-{os.getpid()}" for i in range(n)]
    # `dagster-celery worker start` runs `celery` from PATH: this environment's
    path = f"{cli.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    worker_env = {**os.environ, **env, "PATH": path}
    try:
        for name in names:
            log = open(folder / f"{name}.log", "wb")  # noqa: SIM115 (closed with the worker)
            procs.append(
                (
                    subprocess.Popen(
                        [
                            str(cli),
                            "worker",
                            "start",
                            "-A",
                            "dagster_celery.app",
                            "-y",
                            str(config),
                            "-n",
                            name,
                            "-q",
                            "dagster",
                            "-l",
                            "WARNING",
                            "-i",
                            "cohortflow_dagster.definitions",
                            "--",
                            "--concurrency=1",
                            "--without-gossip",
                            "--without-mingle",
                        ],
                        env=worker_env,
                        cwd=PROJECT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    ),  # fmt: skip
                    log,
                )
            )
        _wait_for_workers(redis_, names, [p for p, _ in procs], folder)
        yield Workers(names, [p.pid for p, _ in procs])
    finally:
        for proc, log in procs:
            stop(proc, group=True)
            log.close()


def _wait_for_workers(
    redis_: Redis, names: list[str], procs: list[subprocess.Popen], folder: Path
) -> None:
    from celery import Celery

    app = Celery("cohortflow-topology-ping", broker=redis_.url(0), backend=redis_.url(1))
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            for proc in procs:
                if proc.poll() is not None:
                    logs = "".join(_tail(p, 1500) for p in folder.glob("w*.log"))
                    raise RuntimeError(f"a Celery worker exited with {proc.returncode}{logs}")
            answered = {name.split("@")[0] for r in app.control.ping(timeout=1.0) for name in r}
            if set(names) <= answered:
                return
        raise RuntimeError(f"Celery workers {names} did not answer within 180 s")
    finally:
        app.close()


# ----------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def patched_env(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block, restoring the old values after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def dagster_home(folder: Path, pg: Postgres) -> Path:
    """A DAGSTER_HOME whose dagster.yaml is docs/scaling.md §3.2's: runs, events and
    schedules in ``pg``, Dagster's default run launcher, the queued run coordinator."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "storage": pg.storage_yaml(),
        "run_launcher": {"module": "dagster", "class": "DefaultRunLauncher"},
        "run_coordinator": {
            "module": "dagster",
            "class": "QueuedRunCoordinator",
            "config": {
                "max_concurrent_runs": 4,
                "tag_concurrency_limits": [{"key": "cohortflow/reason", "limit": 2}],
            },
        },
        "telemetry": {"enabled": False},
        "python_logs": {"managed_python_loggers": ["cohortflow"], "python_log_level": "INFO"},
    }
    (folder / "dagster.yaml").write_text(yaml.safe_dump(doc, sort_keys=True))
    return folder
