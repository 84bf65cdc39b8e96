"""cohortflow.fsio: a write killed at any step leaves the old file or none, never a part;
``exclusive_lock`` really excludes another process."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cohortflow.fsio import TMP_PREFIX, atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
OLD = b"old-" * 5_000  # 20 kB
NEW = b"NEW!" * 25_000  # 100 kB: a half write is visibly different from both

# Runs one atomic write in a fresh interpreter, with one step of it replaced by SIGKILL.
_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import cohortflow.fsio as fsio

    target, step = sys.argv[1], sys.argv[2]
    new = sys.stdin.buffer.read()

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if step == "open":
        fsio.open = die  # a module global shadows the builtin, for fsio only
    elif step == "write":
        real_open = open

        class HalfWriter:
            # writes half the bytes to disk, then dies: a real partial temporary file
            def __init__(self, fh):
                self.fh = fh
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                return self.fh.__exit__(*exc)
            def write(self, data):
                self.fh.write(data[: len(data) // 2])
                self.fh.flush()
                os.fsync(self.fh.fileno())
                die()
            def flush(self):
                self.fh.flush()
            def fileno(self):
                return self.fh.fileno()

        fsio.open = lambda *a, **k: HalfWriter(real_open(*a, **k))
    elif step == "fsync_file":
        fsio.os.fsync = die
    elif step == "replace":
        fsio.os.replace = die
    elif step == "fsync_dir":
        fsio.fsync_dir = die
    else:
        raise SystemExit(f"unknown step {step}")
    fsio.atomic_write_bytes(target, new)
    raise SystemExit(3)  # only reached if the step was never hit
    """
)

STEPS = ("open", "write", "fsync_file", "replace", "fsync_dir")


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("had_old", [True, False], ids=["old_file", "no_file"])
@pytest.mark.parametrize("step", STEPS)
def test_killed_write_leaves_old_or_nothing(tmp_path: Path, step: str, had_old: bool) -> None:
    folder = tmp_path / "attempt_0"
    target = folder / "metrics.json"
    if had_old:
        atomic_write_bytes(target, OLD)
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, str(target), step],
        input=NEW,
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()

    if step == "fsync_dir":  # killed after os.replace: the new file is already complete
        assert target.read_bytes() == NEW
    elif had_old:
        assert target.read_bytes() == OLD
    else:
        assert not target.exists()
    # never a partial visible file, never a visible extra file; leftovers are hidden temps
    assert _visible(folder) == (["metrics.json"] if had_old or step == "fsync_dir" else [])
    leftovers = [p for p in folder.iterdir() if p.name.startswith(".")]
    assert all(p.name.startswith(f"{TMP_PREFIX}metrics.json.") for p in leftovers)
    if step == "write":  # the half-written bytes exist, but only in a hidden temp file
        (partial,) = leftovers
        assert partial.read_bytes() == NEW[: len(NEW) // 2]

    atomic_write_bytes(target, NEW)  # a rerun completes
    assert target.read_bytes() == NEW
    assert _visible(folder) == ["metrics.json"]


# Holds the lock (or, for the control, no lock) for 0.4 s and prints when it held it.
_HOLDER = textwrap.dedent(
    """
    import contextlib, sys, time
    from cohortflow.fsio import exclusive_lock
    lock_path, start, use_lock = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "lock"
    while time.time() < start:
        time.sleep(0.002)
    with exclusive_lock(lock_path) if use_lock else contextlib.nullcontext():
        t0 = time.time()
        time.sleep(0.4)
        t1 = time.time()
    print(t0, t1)
    """
)


def _hold_twice(lock_path: Path, mode: str) -> list[tuple[float, float]]:
    start = time.time() + 1.5  # both processes ask at the same moment, after their imports
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(lock_path), str(start), mode],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e.decode() for _, e in outs]
    return sorted(tuple(map(float, out.split())) for out, _ in outs)


def _overlap(windows: list[tuple[float, float]]) -> bool:
    (a0, a1), (b0, b1) = windows
    return max(a0, b0) < min(a1, b1)


@pytest.mark.slow
def test_exclusive_lock_excludes_another_process(tmp_path: Path) -> None:
    lock_path = tmp_path / "_locks" / "partition.lock"
    assert not _overlap(_hold_twice(lock_path, "lock"))
    # control: the same two processes without the lock do overlap, so the check can fail
    assert _overlap(_hold_twice(lock_path, "none"))
