"""The IO manager's shared panel: one decode per process while the files are unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohortflow.domain import ArtifactKind
from cohortflow.errors import ArtifactNotFoundError
from cohortflow.features import Panel
from cohortflow.store import AttemptKey, Store
from cohortflow_dagster.io_managers.canonical_store import LastPanel

BATCH = "ab12cd34ef56"
KEY = AttemptKey(BATCH, 0)
PANEL = ArtifactKind.FEATURE_PANEL


def panel(seed: int) -> Panel:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "timestamp": pd.date_range("2020-01-01", periods=50).repeat(2),
            "symbol": ["A", "B"] * 50,
            "f1": rng.normal(size=100),
            "fwd_ret_5": rng.normal(size=100),
        }
    )
    return Panel(frame, ("f1",), (), (5,))


def test_the_panel_is_decoded_once_while_its_files_are_unchanged(tmp_path: Path) -> None:
    store = Store(tmp_path / "out")
    store.write(PANEL, KEY, panel(0))
    cache = LastPanel()
    first = cache.get(store, KEY)
    assert cache.get(store, KEY) is first
    assert cache.reads == 1
    pd.testing.assert_frame_equal(first.frame, store.read(PANEL, KEY).frame)


def test_a_rewritten_panel_is_read_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "out")
    store.write(PANEL, KEY, panel(0))
    cache = LastPanel()
    old = cache.get(store, KEY)
    store.write(PANEL, KEY, panel(1))  # atomic rename: a new inode
    new = cache.get(store, KEY)
    assert cache.reads == 2
    assert not np.array_equal(old.frame["f1"].to_numpy(), new.frame["f1"].to_numpy())
    pd.testing.assert_frame_equal(new.frame, store.read(PANEL, KEY).frame)


def test_a_missing_panel_raises_the_stores_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFoundError, match="panel not found"):
        LastPanel().get(Store(tmp_path / "out"), KEY)


def test_remote_roots_are_read_every_time() -> None:
    store = Store("memory://cohortflow-last-panel")
    store.write(PANEL, KEY, panel(0))
    cache = LastPanel()
    cache.get(store, KEY)
    cache.get(store, KEY)
    assert cache.reads == 2


def test_a_forked_child_can_still_write_large_files(tmp_path: Path) -> None:
    """The store hashes large files on a worker thread; a child forked after the parent
    used it must get a working one (else it would wait forever for a thread it lacks)."""
    import multiprocessing

    store = Store(tmp_path / "out")
    big = panel(0)
    big = Panel(pd.concat([big.frame] * 20_000, ignore_index=True), ("f1",), (), (5,))
    store.write(PANEL, KEY, big)  # the parent's hashing thread has run
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=store.write, args=(PANEL, AttemptKey("cd34ef56ab12", 0), big))
    child.start()
    child.join(timeout=20)
    assert child.exitcode == 0
    assert (tmp_path / "out" / "_work" / "batch_cd34ef56ab12" / "attempt_0" / "panel.json").exists()
