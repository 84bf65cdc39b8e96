"""Fault injection, one section per numbered item of issue 21 ("Nothing lost, nothing
silently wrong"): 1 a corrupt index, 2 the index against the disk (kill -9, a rerun with
other files), 3 silent wrong data, 4 typed settings, 5 late failures, 6 debris.

A complete root is built once (a small synthetic universe without leaks, fast settings,
one horizon: one attempt); each test works on a copy of it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohortflow.errors import DataError
from cohortflow.fsio import exclusive_lock
from cohortflow.index import CohortIndex
from cohortflow.intake import prepare_attempt, take_in
from cohortflow.layout import lock_path
from cohortflow.settings import load_settings
from cohortflow_dagster.cli.main import main

PROJECT = Path(__file__).resolve().parent.parent
# the Dagster event log in memory: its SQLite file costs half the wall time of a small run
IN_MEMORY_HOME = (
    "telemetry:\n  enabled: false\n"
    "event_log_storage:\n  module: dagster._core.storage.event_log\n"
    "  class: InMemoryEventLogStorage\n"
)
NOT_ARTIFACTS = ("_index", "_locks")
SYMBOLS = ("AAA", "BBB", "CCC")
# tests on a complete root pay for the run that makes it (~20 s, once per module)
needs_a_run = pytest.mark.slow
KILL_POINTS: list[tuple[int, str]] = []  # the kill loop's (new files, outcome), for reports
N_BARS = 300


# --------------------------------------------------------------------------- helpers
def bars(seed: int, n: int = N_BARS, start: str = "2015-01-02") -> dict[str, pd.DataFrame]:
    """OHLCV random walks of SYMBOLS on business days, one noise column; no leaks."""
    rng = np.random.default_rng(seed)
    ts = pd.bdate_range(start, periods=n)
    out = {}
    for symbol in SYMBOLS:
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
        open_ = close * np.exp(rng.normal(0, 0.003, n))
        out[symbol] = pd.DataFrame(
            {
                "timestamp": ts,
                "open": open_,
                "high": np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.004, n))),
                "low": np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.004, n))),
                "close": close,
                "volume": rng.integers(1000, 5000, n).astype(float),
                "noise": rng.normal(0, 1, n),
            }
        )
    return out


def write_data(folder: Path, frames: dict[str, pd.DataFrame]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for symbol, frame in frames.items():
        frame.to_parquet(folder / f"{symbol}.parquet", index=False)
    # older than anything a run records (the registry tells a changed file by its mtime)
    for path in folder.iterdir():
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    return folder


def settings_file(folder: Path, extra: str = "") -> Path:
    text = (PROJECT / "config" / "fast.yaml").read_text()
    text = text.replace("horizons: [5, 10]", "horizons: [5]").replace(
        "attempt_limit: 2", "attempt_limit: 1"
    )
    path = folder / "settings.yaml"
    path.write_text(text + extra)
    return path


def copy_root(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder`` (absent folder: {})."""
    if not folder.exists():
        return {}
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def markers(root: Path) -> dict[str, str]:
    return {k: v for k, v in snapshot(root / "targets").items() if k.endswith("_COMPLETE")}


def cli(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, str, list[str]]:
    """``cohortflow ARGS`` in this process: exit code, stdout, stderr lines."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def listing(root: Path, capsys: pytest.CaptureFixture) -> list[dict]:
    code, out, err = cli("cohorts", "list", "--root", str(root), "--json", capsys=capsys)
    assert code == 0, err
    return json.loads(out)


def disagreements(root: Path, rows: list[dict]) -> list[str]:
    """Rows listed complete whose cohort folder is gone or whose attempt folder is being
    written (``_IN_PROGRESS``, no ``_COMPLETE``), and sealed cohort folders on disk that
    are not listed. (A folder with neither marker is another system's: complete.)"""
    listed = {row["path"] for row in rows}
    wrong = []
    for row in rows:
        folder = root / row["path"]
        sealed = (folder.parent / "_COMPLETE").exists()
        writing = (folder.parent / "_IN_PROGRESS").exists()
        if row["complete"] and (not folder.is_dir() or (writing and not sealed)):
            wrong.append(f"listed complete, not on disk as such: {row['path']}")
    for marker in (root / "targets").rglob("_COMPLETE"):
        for cohort in marker.parent.glob("cohort=*"):
            rel = cohort.relative_to(root).as_posix()
            if rel not in listed:
                wrong.append(f"sealed, not listed: {rel}")
    return wrong


def artifacts(root: Path) -> dict[str, bytes]:
    """Every artifact's bytes (metadata.json without its ``run`` key); no index, no locks."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or rel.parts[0] in NOT_ARTIFACTS:
            continue
        data = p.read_bytes()
        if p.name == "metadata.json":
            doc = json.loads(data)
            doc.pop("run", None)
            data = json.dumps(doc, sort_keys=True).encode()
        out[rel.as_posix()] = data
    return out


def registry_doc(root: Path) -> dict:
    return json.loads(next((root / "_registry").glob("batch_*.json")).read_text())


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("dagster_home")
    (folder / "dagster.yaml").write_text(IN_MEMORY_HOME)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(folder))
        yield folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, home: Path) -> dict[str, Path]:
    """Data folders d1 and d2 (the same symbols, other bars) and the settings."""
    base = tmp_path_factory.mktemp("inputs")
    return {
        "d1": write_data(base / "d1", bars(1)),
        "d2": write_data(base / "d2", bars(2)),
        "settings": settings_file(base),
    }


@pytest.fixture(scope="module")
def world(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The inputs, and a root complete after one run of d1 (one attempt, ~20 s)."""
    root = tmp_path_factory.mktemp("world") / "root"
    code = main(
        [
            "run",
            "--data",
            str(inputs["d1"]),
            "--out",
            str(root),
            "--settings",
            str(inputs["settings"]),
        ]
    )
    assert code == 0
    return {**inputs, "root": root}


@pytest.fixture(scope="module")
def other_files_root(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The complete root after a clean rerun with d2: other files for the same symbols."""
    root = copy_root(world["root"], tmp_path_factory.mktemp("other") / "root")
    args = ["--data", str(world["d2"]), "--out", str(root), "--settings", str(world["settings"])]
    assert main(["run", *args]) == 0
    return root


@pytest.fixture
def root(world: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the complete root, for one test to damage."""
    return copy_root(world["root"], tmp_path / "root")


# =========================================================================== 1 corrupt index
def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage, not a database" * 200)


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:3000])


def _other_schema(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    con.commit()
    con.close()


def _no_meta_table(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("DROP TABLE meta")
    con.commit()
    con.close()


def _empty_file(path: Path) -> None:
    path.write_bytes(b"")


def _stale_rows(path: Path) -> None:
    """A readable index that lies: every row says 'incomplete', and one cohort is gone."""
    con = sqlite3.connect(path)
    con.execute("UPDATE cohorts SET complete = 0")
    con.execute("DELETE FROM cohorts WHERE rowid = (SELECT min(rowid) FROM cohorts)")
    con.commit()
    con.close()


DAMAGE = {
    "garbage": _garbage,
    "truncated": _truncated,
    "other schema": _other_schema,
    "no meta table": _no_meta_table,
    "empty file": _empty_file,
    "stale rows": _stale_rows,
}


@needs_a_run
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_1_a_damaged_index_never_costs_a_marker(
    root: Path, damage: str, capsys: pytest.CaptureFixture, world: dict[str, Path]
) -> None:
    """Issue 21.1: a corrupt index made a rerun withdraw every _COMPLETE and `reindex` crash.
    Now: the rerun is a no-op that touches no marker, the listing is the disk's, and
    `reindex` survives any index file."""
    before, truth = markers(root), listing(root, capsys)
    index = root / "_index" / "cohorts.sqlite"
    DAMAGE[damage](index)
    code, out, err = cli(
        "run", "--data", str(world["d1"]), "--out", str(root), "--settings",
        str(world["settings"]), capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "nothing to run" in out
    assert markers(root) == before
    rows = listing(root, capsys)
    assert disagreements(root, rows) == []
    if damage != "stale rows":  # a lying but readable index: `cohorts list` corrects it
        assert rows == truth
    code, out, err = cli("reindex", "--root", str(root), capsys=capsys)
    assert code == 0, err
    assert out.strip() == f"indexed {len(truth)} cohorts under {root}"
    assert listing(root, capsys) == truth
    assert markers(root) == before
    if damage in ("garbage", "truncated", "other schema"):
        assert list(index.parent.glob("cohorts.sqlite.corrupt-*")), "kept aside for a look"


@needs_a_run
def test_1_reindex_with_the_index_deleted_finds_every_cohort(
    root: Path, capsys: pytest.CaptureFixture
) -> None:
    truth = listing(root, capsys)
    shutil.rmtree(root / "_index")
    code, out, _ = cli("reindex", "--root", str(root), capsys=capsys)
    assert code == 0 and out.strip() == f"indexed {len(truth)} cohorts under {root}"
    assert len(truth) > 0 and listing(root, capsys) == truth


# =========================================================================== 2 index vs disk
@needs_a_run
def test_2_rows_the_disk_contradicts_are_not_listed(root: Path, capsys) -> None:
    """The index says complete; the disk says one folder is being written again and
    another cohort is gone: `cohorts list` shows what the disk holds."""
    rows = listing(root, capsys)
    writing = (root / rows[0]["path"]).parent
    (writing / "_COMPLETE").rename(writing / "_IN_PROGRESS")
    gone = next(r for r in rows if not r["path"].startswith(writing.relative_to(root).as_posix()))
    shutil.rmtree(root / gone["path"])
    raw = {r.path for r in CohortIndex(root).list()}
    assert {rows[0]["path"], gone["path"]} <= raw  # the index itself still says so
    after = listing(root, capsys)
    assert disagreements(root, after) == []
    shown = {r["path"] for r in after}
    assert rows[0]["path"] not in shown and gone["path"] not in shown
    assert len(after) == len(rows) - 2


@needs_a_run
def test_2_sealed_but_not_indexed_cohorts_are_listed(root: Path, capsys) -> None:
    """A process killed between sealing a folder and indexing it: the listing (and the
    next run) index what is sealed."""
    rows = listing(root, capsys)
    con = sqlite3.connect(root / "_index" / "cohorts.sqlite")
    con.execute("DELETE FROM cohorts WHERE stage = 'TRAINING'")
    con.commit()
    con.close()
    assert len(CohortIndex(root).list()) < len(rows)
    assert listing(root, capsys) == rows


@needs_a_run
def test_2_rerun_with_other_files_is_a_new_attempt_and_history_stays_true(
    world: dict[str, Path], other_files_root: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 21.2: a rerun with other files for the same symbols left the old cohorts
    listed with stale metadata, and stacking-data labelled the new OOF with a stale
    cohort id. Now the rerun is attempt 1, attempt 0 is untouched history, and each
    attempt's OOF comes with its own cohort."""
    root = other_files_root
    attempts = [(a["attempt"], a["reason"]) for a in registry_doc(root)["attempts"]]
    assert attempts == [(0, "requested"), (1, "bars_changed")]
    assert snapshot(root / "targets") | snapshot(world["root"] / "targets") == snapshot(
        root / "targets"
    )  # every file of attempt 0 is there, byte for byte
    rows = listing(root, capsys)
    assert disagreements(root, rows) == []
    assert {r["attempt"] for r in rows} == {0, 1}
    batch = registry_doc(root)["batch"]
    for attempt in (0, 1):
        code, out, err = cli(
            "stacking-data", "--root", str(root), "--batch", batch, "--attempt", str(attempt),
            "--target", "fwd_ret_5", capsys=capsys,
        )  # fmt: skip
        assert code == 0, err
        meta = json.loads(out[: out.index("\n}") + 2])
        assert meta["complete"] is True
        assert meta["cohort_id"] in {r["cohort_id"] for r in rows if r["attempt"] == attempt}
        assert f"/attempt_{attempt}/" in meta["path"]
        assert err[-1] == f"{meta['rows']} rows"
    code, out, _ = cli("reindex", "--root", str(root), capsys=capsys)
    assert code == 0 and listing(root, capsys) == rows


# A process that imports what `cohortflow run` imports, once, then forks one child per
# "run" line: the child runs the CLI's main() exactly as the console script does (stdout
# to /dev/null, stderr appended to $KILL_LOOP_LOG, its own session); "kill" SIGKILLs it if it still runs, "wait"
# waits for it; either answers how the child ended. Forking skips a start-up that costs
# more than the graph itself on a loaded 2-core machine (10 kills: minutes).
FORK_SERVER = r"""
import os, signal, sys
import cohortflow_dagster.cli.runner, cohortflow_dagster.definitions
from cohortflow_dagster.cli.main import main
print("ready", flush=True)
while (line := sys.stdin.readline().strip()) == "run":
    pid = os.fork()
    if pid == 0:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        log = os.open(os.environ["KILL_LOOP_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        for fd, to in ((0, null), (1, null), (2, log)):
            os.dup2(to, fd)
        code = 1
        try:
            code = main(sys.argv[1:])
        finally:
            os._exit(code)
    print(pid, flush=True)
    if sys.stdin.readline().strip() == "kill":
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    status = os.waitpid(pid, 0)[1]
    print("killed" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}", flush=True)
"""


@pytest.mark.slow
def test_2_kill_9_loop_then_a_rerun_is_byte_identical(
    world: dict[str, Path], other_files_root: Path, tmp_path: Path, capsys
) -> None:
    """Issue 21.2, "must show": 10 kill -9 at random (seeded) points of a rerun into a
    complete root (other files: a new attempt with work to do). After each kill the
    listing agrees with the markers on disk; a final rerun completes the attempt, and the
    tree is then byte-identical to a clean run's (metadata.json's `run` key aside)."""
    root = copy_root(world["root"], tmp_path / "root")
    args = [
        "run",
        "--data",
        str(world["d2"]),
        "--out",
        str(root),
        "--settings",
        str(world["settings"]),
    ]
    server = subprocess.Popen(
        [sys.executable, "-c", FORK_SERVER, *args],
        cwd=PROJECT,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "KILL_LOOP_LOG": str(tmp_path / "log")},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip

    def ask(line: str) -> str:
        server.stdin.write(line + "\n")
        server.stdin.flush()
        return server.stdout.readline().strip()

    def files(folder: Path) -> int:
        return sum(1 for p in folder.rglob("*") if p.parts[len(folder.parts)] not in NOT_ARTIFACTS)

    def finished(pid: int) -> bool:  # the child is a zombie of the server: it has exited
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
        except (FileNotFoundError, IndexError):
            return True

    # kill points: when the tree holds a random share of the files a clean rerun adds (10
    # shares, ascending: they spread over the whole rerun, its last seal included, while
    # each rerun resumes where the last one was killed), plus a few random ms (some land
    # inside a write); a child that is past its point when it starts dies at once
    rng = random.Random(21)
    start = files(root)
    new = files(other_files_root) - start
    points = sorted(start + max(1, round(rng.random() * new)) for _ in range(10))
    kills = []
    try:
        assert server.stdout.readline().strip() == "ready"
        for point in points:
            pid = int(ask("run"))
            while files(root) < point and not finished(pid):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.05))
            kills.append((files(root) - start, ask("kill")))
            assert kills[-1][1] in ("killed", "exit 0"), (tmp_path / "log").read_text()[-3000:]
            rows = listing(root, capsys)
            assert disagreements(root, rows) == [], kills
            assert {r["attempt"] for r in rows} >= {0}
        assert int(ask("run")) > 0
        final = ask("wait")
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    KILL_POINTS[:] = kills
    print(f"kill points (new files of {new}, outcome): {kills}", file=sys.__stderr__)
    assert sum(outcome == "killed" for _, outcome in kills) >= 5, kills
    assert final == "exit 0", (tmp_path / "log").read_text()[-3000:]
    rows = listing(root, capsys)
    assert disagreements(root, rows) == []
    assert rows == listing(other_files_root, capsys)
    got, want = artifacts(root), artifacts(other_files_root)
    assert sorted(got) == sorted(want)
    assert [rel for rel in want if got[rel] != want[rel]] == []
    code, out, _ = cli("verify", "--root", str(root), capsys=capsys)
    assert code == 0, out


# =========================================================================== 3 silent wrong data
def _parquet_with_times(path: Path, frame: pd.DataFrame, stamps: list) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame.drop(columns="timestamp"), preserve_index=False)
    pq.write_table(table.add_column(0, "timestamp", pa.array(stamps, pa.timestamp("us"))), path)


@pytest.mark.parametrize("year", [1500, 1677, 2262, 2300])
def test_3_dates_outside_pandas_clock_are_refused_not_wrapped(
    tmp_path: Path, year: int, inputs: dict[str, Path]
) -> None:
    import datetime as dt

    frames = bars(1)
    data = write_data(tmp_path / "data", frames)
    # 1677 and 2262: the run starts inside the clock's year but leaves it (before
    # 1677-09-22, after 2262-04-10)
    start = {1500: "1500-01-02", 1677: "1677-01-04", 2262: "2262-01-02", 2300: "2300-01-02"}
    first = dt.datetime.fromisoformat(start[year])
    stamps = [first + dt.timedelta(days=i) for i in range(N_BARS)]
    _parquet_with_times(data / "AAA.parquet", frames["AAA"], stamps)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="is outside the dates pandas can hold") as err:
        take_in(data, out, load_settings(inputs["settings"]))
    assert err.value.path == str(data / "AAA.parquet")
    assert not out.exists()


def test_3_the_last_days_of_the_clock_are_kept(tmp_path: Path) -> None:
    from cohortflow.bars import read_bars

    frame = bars(1, n=12)["AAA"]
    for first in ("1677-09-22", "2262-03-30"):
        stamps = list(pd.date_range(first, periods=12, freq="D").to_pydatetime())
        _parquet_with_times(tmp_path / "X.parquet", frame, stamps)
        assert read_bars(tmp_path / "X.parquet")["timestamp"].iloc[0] == pd.Timestamp(first)


@pytest.mark.parametrize("aware", [["BBB"], ["AAA", "BBB"]])
def test_3_files_with_and_without_zones_are_refused_naming_the_odd_one(
    tmp_path: Path, aware: list[str], inputs: dict[str, Path]
) -> None:
    """Issue 21.3: one tz-aware file among naive ones split the cross-section (3,210 dates
    with one symbol) and every check passed."""
    frames = bars(1)
    for symbol in aware:
        frames[symbol]["timestamp"] = frames[symbol]["timestamp"].dt.tz_localize("America/New_York")
    data = write_data(tmp_path / "data", frames)
    odd = "BBB" if aware == ["BBB"] else "CCC"  # the minority: zoned BBB, or naive CCC
    with pytest.raises(DataError) as err:
        take_in(data, tmp_path / "out", load_settings(inputs["settings"]))
    assert err.value.path == str(data / f"{odd}.parquet")
    assert ("carry a time zone (America/New_York)" if odd == "BBB" else "have no time zone") in str(
        err.value
    )
    assert not (tmp_path / "out").exists()


def test_3_zoned_files_are_converted_to_utc_and_the_user_is_told(
    tmp_path: Path, inputs: dict[str, Path]
) -> None:
    frames = bars(1)
    for symbol in SYMBOLS:  # the same instants, written in three zones
        utc = frames[symbol]["timestamp"].dt.tz_localize("UTC")
        zone = {"AAA": "UTC", "BBB": "Asia/Tokyo", "CCC": "America/New_York"}[symbol]
        frames[symbol]["timestamp"] = utc.dt.tz_convert(zone)
    data = write_data(tmp_path / "data", frames)
    intake = take_in(data, tmp_path / "out", load_settings(inputs["settings"]))
    assert intake.universe.notes == (
        "timestamps of 3 file(s) with time zones (America/New_York, Asia/Tokyo, UTC) "
        "converted to UTC",
    )
    stamps = {s: intake.universe.bars[s]["timestamp"] for s in SYMBOLS}
    assert all(stamps[s].equals(stamps["AAA"]) for s in SYMBOLS)  # one cross-section
    assert stamps["AAA"].iloc[0] == pd.Timestamp("2015-01-02")


def test_3_files_on_different_clocks_are_refused(tmp_path: Path, inputs: dict[str, Path]) -> None:
    """Daily bars stamped at local midnight in two zones: both carry their zone, both
    become UTC, and never meet (05:00 against 00:00): refused, not split."""
    frames = bars(1)
    frames["AAA"]["timestamp"] = frames["AAA"]["timestamp"].dt.tz_localize("UTC")
    frames["BBB"]["timestamp"] = frames["BBB"]["timestamp"].dt.tz_localize("UTC")
    frames["CCC"]["timestamp"] = frames["CCC"]["timestamp"].dt.tz_localize("America/New_York")
    data = write_data(tmp_path / "data", frames)
    with pytest.raises(DataError, match=r"only 0 of its \d+ timestamps .* different clocks") as err:
        take_in(data, tmp_path / "out", load_settings(inputs["settings"]))
    assert err.value.path == str(data / "CCC.parquet")
    assert "05:00:00 here, the nearest 2015-01-02 00:00:00 in the others" in str(err.value)


def test_3_staggered_histories_and_holidays_still_load(tmp_path: Path) -> None:
    """The clock check judges only where histories overlap: a late listing, a gap of
    holidays and a few odd dates pass."""
    from cohortflow.bars import load_universe
    from cohortflow.settings import Settings

    frames = bars(1, n=400)
    frames["BBB"] = frames["BBB"].iloc[250:].reset_index(drop=True)  # listed later
    frames["CCC"] = frames["CCC"].drop(index=range(100, 110)).reset_index(drop=True)
    data = write_data(tmp_path / "data", frames)
    assert load_universe(data, Settings(min_rows=100)).symbols == SYMBOLS


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (
            lambda f: f.__setitem__("high", f["high"].where(f.index != 150, f["close"] * 49)),
            "the bar spans",
        ),
        (
            lambda f: f.__setitem__("high", f["high"].where(f.index != 150, f["close"] * 0.9)),
            "high .* is below max\\(open, close\\)",
        ),
        (
            lambda f: f.__setitem__("low", f["low"].where(f.index != 150, f["close"] * 1.1)),
            "low .* is above min\\(open, close\\)",
        ),
        (
            lambda f: f.__setitem__("close", f["close"].where(f.index != 150, f["close"] * 30)),
            "high .* is below max\\(open, close\\)",
        ),
    ],
    ids=["bit-flipped high (49x close)", "high below close", "low above open", "close 30x"],
)
def test_3_contradicting_prices_are_refused(tmp_path: Path, edit, words: str, inputs) -> None:
    """Issue 21.3: a bit-flipped parquet with high 3,683 against close 75 was accepted."""
    frames = bars(1)
    edit(frames["CCC"])
    data = write_data(tmp_path / "data", frames)
    with pytest.raises(
        DataError, match=f"prices contradict each other at row 151 .*{words}"
    ) as err:
        take_in(data, tmp_path / "out", load_settings(inputs["settings"]))
    assert err.value.path == str(data / "CCC.parquet")


def test_3_close_only_spike_is_refused_and_the_tolerance_holds(tmp_path: Path) -> None:
    from cohortflow.bars import OHLC_TOLERANCE, read_bars

    frame = bars(1)["AAA"][["timestamp", "close"]].copy()
    frame.loc[40, "close"] *= 20
    frame.to_parquet(tmp_path / "A.parquet", index=False)
    with pytest.raises(DataError, match="row 41 .* jumps from .* and back"):
        read_bars(tmp_path / "A.parquet")
    ohlc = bars(1)["BBB"]
    ohlc.loc[7, "high"] = ohlc.loc[7, ["open", "close"]].max() * (1 - OHLC_TOLERANCE * 0.9)
    ohlc.to_parquet(tmp_path / "B.parquet", index=False)
    assert len(read_bars(tmp_path / "B.parquet")) == N_BARS  # rounding noise passes


# =========================================================================== 4 typed settings
ISSUE_SETTINGS = {
    'horizons: "12"': ('horizons: "12"', "horizons"),
    'demo_leak: "false"': ('demo_leak: "false"', "demo_leak"),
    "horizons: [5.5]": ("horizons: [5.5]", "horizons"),
    "horizons: {a: 1}": ("horizons: {a: 1}", "horizons"),
    "horizons: [true]": ("horizons: [true]", "horizons"),
    "horizons: [5000]": ("horizons: [5000]", "horizons"),
    "n_estimators: -5": ("models: {n_estimators: -5}", "models.n_estimators"),
    'learning_rate: "fast"': ('models: {learning_rate: "fast"}', "models.learning_rate"),
    'seed: "abc"': ('seed: "abc"', "seed"),
    "n_splits: 2.5": ("n_splits: 2.5", "n_splits"),
    "n_splits: 1000": ("n_splits: 1000", "n_splits"),
    "n_splits: 40 (the data fits 17)": ("n_splits: 40", "n_splits"),
    "test_fraction: 0.01 (2 dates)": ("test_fraction: 0.01", "test_fraction"),
}


@pytest.mark.parametrize("case", sorted(ISSUE_SETTINGS))
def test_4_bad_settings_stop_in_one_line_before_anything_is_written(
    tmp_path: Path, case: str, inputs: dict[str, Path], capsys
) -> None:
    """Issue 21.4: these gave other targets with exit 0, the demo leak on user data, or
    tracebacks mid-graph after files were written; n_splits: 1000 ran for minutes."""
    text, key = ISSUE_SETTINGS[case]
    path = tmp_path / "settings.yaml"
    base = settings_file(tmp_path).read_text()
    # the case's key replaces the file's own (a YAML key given twice is an error itself)
    first = text.split(":")[0]
    kept = [line for line in base.splitlines() if not line.startswith(f"{first}:")]
    if first == "models":
        kept = [line for line in kept if not line.startswith("  ")]
    path.write_text("\n".join(kept) + "\n" + text + "\n")
    out = tmp_path / "out"
    t0 = time.monotonic()
    code, _, err = cli(
        "run", "--data", str(inputs["d1"]), "--out", str(out), "--settings", str(path),
        capsys=capsys,
    )  # fmt: skip
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"cohortflow: error: {path}: {key}: ")
    assert not out.exists()
    assert time.monotonic() - t0 < 60


# =========================================================================== 5 late failures
@needs_a_run
def test_5_a_column_named_like_a_target_is_refused_before_any_write(
    root: Path, tmp_path: Path, capsys, world: dict[str, Path]
) -> None:
    """Issue 21.5: a user column named fwd_ret_5 was refused only inside the graph, after
    _registry/ and _work/ had been overwritten."""
    frames = bars(1)
    frames["AAA"]["fwd_ret_5"] = 0.0
    data = write_data(tmp_path / "data", frames)
    before = snapshot(root)
    code, _, err = cli(
        "run", "--data", str(data), "--out", str(root), "--settings", str(world["settings"]),
        capsys=capsys,
    )  # fmt: skip
    assert code == 2
    assert err[-1] == (
        f"cohortflow: error: {data / 'AAA.parquet'}: user column 'fwd_ret_5' collides with a "
        "target column name; rename the column"
    )
    after = snapshot(root)
    assert {k: v for k, v in after.items() if not k.startswith("_locks/")} == {
        k: v for k, v in before.items() if not k.startswith("_locks/")
    }


def _fail_writes(monkeypatch: pytest.MonkeyPatch, where: str, error: int) -> list[str]:
    """Make cohortflow.fsio's writes of files whose path holds ``where`` fail with OSError
    ``error`` (a full disk, a read-only file system) the way the kernel reports it."""
    import cohortflow.fsio as fsio

    hit: list[str] = []
    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        if "w" in mode and where in str(path):
            hit.append(str(path))
            raise OSError(error, os.strerror(error), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(fsio, "open", fake_open, raising=False)
    return hit


@needs_a_run
def test_5_a_full_disk_mid_graph_names_the_cause_and_the_file_and_loses_nothing(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys, world: dict[str, Path]
) -> None:
    """Issue 21.5: the last line dropped the cause (Dagster's step wrapper) and a full disk's
    message dropped "No space left on device". The attempt fails at its training step;
    the sealed attempt 0, its working data and its records are untouched."""
    hit = _fail_writes(monkeypatch, "stage=TRAINING", errno.ENOSPC)
    before = snapshot(root)
    registry_before = registry_doc(root)
    code, _, err = cli(
        "run", "--data", str(world["d2"]), "--out", str(root), "--settings",
        str(world["settings"]), capsys=capsys,
    )  # fmt: skip
    assert code == 2 and hit
    last = err[-1]
    assert last.startswith("cohortflow: error: attempt 1 of batch ")
    assert "step fwd_ret_5__training: " in last
    assert "No space left on device" in last
    assert "/stage=TRAINING/" in last and ".tmp-" not in last  # the file, not its temp twin
    after = snapshot(root)
    for rel, digest in before.items():
        if "attempt_0" in rel or rel.startswith("_work/"):
            assert after.get(rel) == digest, rel
    registry_after = registry_doc(root)
    assert registry_after["attempts"][0] == registry_before["attempts"][0]
    # the failed attempt is recorded (a rerun completes it), nothing else changed there
    assert [a["attempt"] for a in registry_after["attempts"]] == [0, 1]
    assert disagreements(root, listing(root, capsys)) == []


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            errno.ENOSPC,
            "No space left on device; free some space there and run again (a rerun "
            "completes the attempt)",
        ),
        (
            errno.EROFS,
            "Read-only file system; the output root must be on a writable file system (--out)",
        ),
        (errno.EACCES, "Permission denied; the output root must be writable by this user (--out)"),
    ],
)
def test_5_an_unwritable_root_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, error: int, words: str, inputs
) -> None:
    """Issue 21.5: a read-only root gave a traceback (and a full disk lost its words)."""
    out = tmp_path / "out"
    _fail_writes(monkeypatch, str(out), error)
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(out)):
            raise OSError(error, os.strerror(error), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, _, err = cli(
        "run", "--data", str(inputs["d1"]), "--out", str(out), "--settings",
        str(inputs["settings"]), capsys=capsys,
    )  # fmt: skip
    assert code == 2
    assert err == [f"cohortflow: error: {out}/_locks: {words}"]


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def read_only_root(tmp_path: Path) -> Iterator[Path]:
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    if os.geteuid() != 0 or not _mount("--bind", str(src), str(ro)):
        pytest.skip("needs root and mount to make a read-only file system")
    try:
        if not _mount("-o", "remount,bind,ro", str(ro)):
            pytest.skip("cannot remount read-only here")
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_5_a_real_read_only_file_system_is_one_line(
    read_only_root: Path, capsys, inputs: dict[str, Path]
) -> None:
    code, _, err = cli(
        "run", "--data", str(inputs["d1"]), "--out", str(read_only_root), "--settings",
        str(inputs["settings"]), capsys=capsys,
    )  # fmt: skip
    assert code == 2
    assert err == [
        f"cohortflow: error: {read_only_root}/_locks: Read-only file system; the output "
        "root must be on a writable file system (--out)"
    ]


def test_5_concurrent_runs_of_other_files_name_what_differs(
    tmp_path: Path, inputs: dict[str, Path]
) -> None:
    """Issue 21.6: two concurrent runs with different files for the same symbols failed
    with "changed since ... registered", naming a file that never changed. Here run 1
    records attempt 0 from d1, run 2 records it again from d2 before run 1's data step."""
    from cohortflow.intake import batch_files, inputs_of, plan_attempt, record_decision

    out = tmp_path / "out"
    settings = load_settings(inputs["settings"])
    for data in (inputs["d1"], inputs["d2"]):  # run 1 decides, then run 2 decides
        intake = take_in(data, out, settings)
        files = inputs_of(batch_files(intake.universe), settings)
        decision = plan_attempt(out, intake.record, files, settings)
        assert decision.attempt == 0
        record_decision(out, intake.record.batch, decision)
    with pytest.raises(DataError) as err:  # run 1's data step
        prepare_attempt(out, inputs["d1"], intake.record.batch, 0, settings)
    text = str(err.value)
    assert err.value.path == str(inputs["d1"])
    assert "is now recorded with other files than this folder's" in text
    assert "another run recorded the same symbols from other files" in text
    for symbol in SYMBOLS:
        assert f"{symbol}.parquet: " in text
    prepare_attempt(out, inputs["d2"], intake.record.batch, 0, settings)  # run 2 goes on


def test_5_a_file_changed_after_its_record_says_so(tmp_path: Path, inputs) -> None:
    data = copy_root(inputs["d1"], tmp_path / "data")
    out = tmp_path / "out"
    settings = load_settings(inputs["settings"])
    from cohortflow.intake import batch_files, inputs_of, plan_attempt, record_decision

    intake = take_in(data, out, settings)
    files = inputs_of(batch_files(intake.universe), settings)
    record_decision(out, intake.record.batch, plan_attempt(out, intake.record, files, settings))
    time.sleep(0.05)
    frame = pd.read_parquet(data / "BBB.parquet")
    frame.loc[5, "noise"] = 1.0
    frame.to_parquet(data / "BBB.parquet", index=False)
    with pytest.raises(
        DataError,
        match=r"1 file\(s\) changed since batch \w+ attempt 0 was "
        r"recorded \(BBB\.parquet: ",
    ):
        prepare_attempt(out, data, intake.record.batch, 0, settings)


# =========================================================================== 6 debris
@needs_a_run
def test_6_killed_writes_debris_is_swept_by_the_next_run(
    root: Path, world: dict[str, Path]
) -> None:
    """Issue 21.6: a killed write's 10 MB _work/…/.tmp-bars.parquet.* was never cleaned."""
    batch = registry_doc(root)["batch"]
    debris = [
        root / "_work" / f"batch_{batch}" / "attempt_0" / ".tmp-bars.parquet.0123456789ab",
        root / "_registry" / f".tmp-batch_{batch}.json.0123456789ab",
        root / "reports" / f"batch_{batch}" / "attempt_0" / ".tmp-target_ranking.csv.abcdef",
    ]
    for path in debris:
        path.write_bytes(os.urandom(1024))
    settings = load_settings(world["settings"])
    with exclusive_lock(lock_path(root, f"work-{batch}-0")):  # a live writer of attempt 0
        take_in(world["d1"], root, settings)
    assert [p.exists() for p in debris] == [True, False, True]  # its files are spared
    take_in(world["d1"], root, settings)
    assert [p.exists() for p in debris] == [False, False, False]


def test_6_a_seal_whose_progress_marker_survived_a_kill_loses_the_marker(
    root: Path, world: dict[str, Path]
) -> None:
    """Found by the kill loop: killed between writing _COMPLETE and removing _IN_PROGRESS,
    a sealed folder kept both markers for good (nothing writes into it again)."""
    from cohortflow.layout import Scope

    batch = registry_doc(root)["batch"]
    scope = Scope("fwd_ret_5", "TRAINING", "CROSS_SECTIONAL", batch, 0)
    marker = scope.progress_marker(root)
    assert scope.complete_marker(root).exists() and not marker.exists()
    marker.write_bytes(b"")
    settings = load_settings(world["settings"])
    with exclusive_lock(scope.lock_path(root)):  # a live writer of that folder: spared
        take_in(world["d1"], root, settings)
    assert marker.exists()
    take_in(world["d1"], root, settings)
    assert not marker.exists() and scope.complete_marker(root).exists()


def test_6_listing_a_missing_root_creates_nothing(tmp_path: Path, capsys) -> None:
    code, _, err = cli("cohorts", "list", "--root", str(tmp_path / "nope"), capsys=capsys)
    assert code == 2 and err == [f"cohortflow: error: {tmp_path / 'nope'}: no such output root"]
    assert not (tmp_path / "nope").exists()


@needs_a_run
def test_6_stacking_data_without_its_fold_plan_is_not_complete(root: Path, capsys) -> None:
    batch = registry_doc(root)["batch"]
    plan = next(p for p in root.rglob("fold_plan.json") if "stage=TRAINING" in str(p))
    plan.unlink()
    code, out, err = cli(
        "stacking-data", "--root", str(root), "--batch", batch, "--attempt", "0", "--target",
        "fwd_ret_5", capsys=capsys,
    )  # fmt: skip
    meta = json.loads(out[: out.index("\n}") + 2])
    assert code == 0 and meta["complete"] is False


@needs_a_run
def test_6_the_seal_covers_every_cohort_file_metrics_json_included(root: Path, capsys) -> None:
    metrics = next(root.rglob("metrics.json"))
    seal = json.loads((metrics.parent.parent / "_COMPLETE").read_text())
    cohort_files = {p.name for p in metrics.parent.iterdir() if p.is_file()}
    sealed = seal["cohorts"][metrics.parent.name.removeprefix("cohort=")]
    assert {"metrics.json", "metadata.json", "snapshot.json"} <= cohort_files
    assert set(sealed) == cohort_files
    metrics.write_text(metrics.read_text().replace("0", "1", 1))
    code, out, _ = cli("verify", "--root", str(root), capsys=capsys)
    assert code == 1
    assert any("metrics.json" in line for line in out.splitlines()[:-1])
