"""A real ``dagster dev`` (webserver + daemon) for the UI tests, and GraphQL to talk to it.

Used by ``test_ui_backfill.py`` and ``test_ui_browser.py``. Everything lives in temporary
folders: a synthetic universe (``data/``), the canonical tree (``output/``) and a
``DAGSTER_HOME`` whose ``dagster.yaml`` disables telemetry and lets the daemon's run queue
start at most ``max_concurrent_runs`` runs (the test machines have 2 shared cores).

``dagster dev`` is started in its own session so that its process group holds the
webserver, the daemon, the code servers and every run worker; :meth:`DagsterDev.stop`
ends that group and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cohortflow_dagster.resources.home import new_home_yaml

REPO = Path(__file__).resolve().parents[1]
FAST_SETTINGS = REPO / "config" / "fast.yaml"
DAGSTER = Path(sys.executable).with_name("dagster")
TEST_OUTPUT = REPO / "test-output"

# 4 symbols x 400 bars: small, and every symbol stays above fast.yaml's min_rows=200
# (SYN01 and SYN03 start later: 334 and 267 rows).
N_SYMBOLS = 4
N_BARS = 400
N_NOISE = 3
SEED = 11


@dataclass(frozen=True)
class UiWorkspace:
    """The temporary folders of one UI test."""

    data_dir: Path
    output_root: Path
    dagster_home: Path
    settings_path: Path = FAST_SETTINGS

    def env(self) -> dict[str, str]:
        """The environment of ``dagster dev`` and of in-process runs: this workspace only."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "COHORTFLOW_"))}
        env.update(
            DAGSTER_HOME=str(self.dagster_home),
            COHORTFLOW_DATA_DIR=str(self.data_dir),
            COHORTFLOW_OUTPUT_ROOT=str(self.output_root),
            COHORTFLOW_SETTINGS=str(self.settings_path),
            PYTHONUNBUFFERED="1",
            # the tests drive runs themselves; a data sensor would start duplicates
            COHORTFLOW_SENSORS="stopped",
        )
        return env


def make_workspace(tmp: Path, max_concurrent_runs: int = 2, with_leaks: bool = True) -> UiWorkspace:
    """A synthetic universe of N_SYMBOLS x N_BARS bars and an empty instance under ``tmp``.

    ``with_leaks=False`` leaves out the planted leaking columns, so attempt 0 normally
    finds no leak and ``cohortflow run`` stops after one attempt.
    """
    from cohortflow import synthetic

    ws = UiWorkspace(tmp / "data", tmp / "output", tmp / "dagster_home")
    synthetic.generate(
        ws.data_dir,
        fmt="parquet",
        n_symbols=N_SYMBOLS,
        n_bars=N_BARS,
        n_noise=N_NOISE,
        seed=SEED,
        with_leaks=with_leaks,
    )
    ws.output_root.mkdir()
    ws.dagster_home.mkdir()
    # the dagster.yaml `cohortflow` writes into a new home (no telemetry, no first-visit
    # dialog, the project's logs at INFO, a run queue limit)
    (ws.dagster_home / "dagster.yaml").write_text(new_home_yaml(max_concurrent_runs))
    return ws


def register_batches(ws: UiWorkspace, subsets: Sequence[Sequence[str]]) -> list[str]:
    """Register one batch per subset of the data folder's symbols; return the batch keys.

    Each subset is copied into its own folder and taken in from there, so the registry
    records the same file names and sha256 as the data folder, where ``universe_bars``
    then reads them.
    """
    from cohortflow.intake import take_in
    from cohortflow.settings import load_settings

    settings = load_settings(str(ws.settings_path))
    batches = []
    for i, symbols in enumerate(subsets):
        folder = ws.data_dir.parent / f"subset_{i}"
        folder.mkdir()
        for symbol in symbols:
            shutil.copy2(ws.data_dir / f"{symbol}.parquet", folder / f"{symbol}.parquet")
        intake = take_in(folder, str(ws.output_root), settings)
        assert intake.record.symbols == tuple(sorted(symbols))
        batches.append(intake.record.batch)
    return batches


def add_partitions(ws: UiWorkspace, batches: Sequence[str], attempts: Sequence[int] = (0,)) -> None:
    """Add the batch and attempt keys to the instance, as the data sensor would."""
    from dagster import DagsterInstance

    from cohortflow_dagster.partitions import attempt_dim_partitions, batch_partitions

    with DagsterInstance.from_config(str(ws.dagster_home)) as instance:
        instance.add_dynamic_partitions(batch_partitions.name, list(batches))
        instance.add_dynamic_partitions(attempt_dim_partitions.name, [str(a) for a in attempts])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GraphQLError(AssertionError):
    pass


@dataclass
class DagsterDev:
    """A running ``dagster dev``: its process (a group leader), URL and log file."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """POST one query to ``/graphql``; the ``data`` of the answer (errors raise)."""
        body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        if answer.get("errors"):
            raise GraphQLError(json.dumps(answer["errors"], indent=1)[:4000])
        return answer["data"]

    def log_tail(self, chars: int = 6000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-chars:]

    def wait_until_loaded(self, timeout_s: float) -> float:
        """Wait until the webserver answers and the code location is loaded; seconds taken."""
        t0 = time.monotonic()
        last = "no answer yet"
        while time.monotonic() - t0 < timeout_s:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"dagster dev exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                data = self.graphql(WORKSPACE_QUERY)
            except (urllib.error.URLError, ConnectionError, TimeoutError, GraphQLError) as exc:
                last = repr(exc)
            else:
                entries = data["workspaceOrError"].get("locationEntries", [])
                for entry in entries:
                    loc = entry.get("locationOrLoadError") or {}
                    if loc.get("__typename") == "PythonError":
                        raise AssertionError(f"code location failed to load: {loc['message']}")
                    if (
                        entry["loadStatus"] == "LOADED"
                        and loc.get("__typename") == "RepositoryLocation"
                    ):
                        return time.monotonic() - t0
                last = json.dumps(entries)
            time.sleep(1.0)
        raise AssertionError(
            f"dagster dev not ready after {timeout_s:.0f} s ({last}):\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 30.0) -> None:
        stop_group(self.process, grace_s)


def stop_group(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """End a process started with ``start_new_session=True`` and everything in its group:
    SIGTERM, then SIGKILL for whatever is left after ``grace_s`` (children included)."""
    pgid = process.pid  # a session leader's pid is its group id
    _signal_group(pgid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    # the leader may exit before its children (run workers, Chromium helpers) do
    deadline = time.monotonic() + grace_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout=10)


def _signal_group(pgid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
    ... on PythonError { message stack }
  }
}
"""
RUNS = "query { runsOrError { ... on Runs { results { runId status tags { key value } } } } }"
REPOSITORY = {"repositoryName": "__repository__", "repositoryLocationName": "cohortflow"}
ADD_PARTITION = """
mutation Add($selector: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on Error { message }
  }
}
"""
WORKSPACE_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""


@contextmanager
def dagster_dev(
    ws: UiWorkspace,
    log_name: str,
    ready_timeout_s: float = 300.0,
    env: Mapping[str, str] | None = None,
) -> Iterator[DagsterDev]:
    """``dagster dev -w workspace.yaml`` on a free port of 127.0.0.1, stopped on exit
    (``env``: the environment, by default the workspace's, sensors stopped)."""
    port = free_port()
    log_path = ws.dagster_home / f"{log_name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(DAGSTER), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=dict(env) if env is not None else ws.env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dev = DagsterDev(process, f"http://127.0.0.1:{port}", log_path)
    try:
        dev.wait_until_loaded(ready_timeout_s)
        yield dev
    finally:
        dev.stop()
        keep = TEST_OUTPUT / "logs"
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy2(log_path, keep / log_path.name)
