"""Which attempt runs, and why (cohortflow.attempts.decide), and the command line living by
it: the same run twice changes nothing; changed settings or bars make attempt n+1 and
leave attempt n byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from cohortflow.attempts import (
    ABSENT,
    AttemptInputs,
    AttemptState,
    AttemptStatus,
    decide,
    leak_chain,
)
from cohortflow.domain import AttemptReason as R
from cohortflow.registry import BatchFile, BatchRecord

FILES = (
    BatchFile("AAA", "AAA.parquet", "a" * 64, 10),
    BatchFile("BBB", "BBB.parquet", "b" * 64, 10),
)
SEALED = AttemptStatus(AttemptState.SEALED, True)
PARTLY = AttemptStatus(AttemptState.INCOMPLETE, True)
STARTED = AttemptStatus(AttemptState.INCOMPLETE, False)


def inputs(files=FILES, settings="s1", code="c1") -> AttemptInputs:
    return AttemptInputs(files, settings, code, {"n_splits": settings})


def record(*attempts: tuple[int, R], **kw) -> BatchRecord:
    base = BatchRecord.from_symbols(("AAA", "BBB"), FILES)
    return BatchRecord(
        base.batch,
        base.universe_sig,
        base.symbols,
        FILES,
        None,
        tuple(inputs(**kw).record(n, reason) for n, reason in attempts),
    )


def test_a_new_batch_starts_attempt_0():
    d = decide(record(), {}, inputs(), {}, 3)
    assert (d.attempt, d.new, d.record.reason) == (0, True, R.REQUESTED)


def test_the_same_inputs_after_a_sealed_attempt_run_nothing():
    d = decide(record((0, R.REQUESTED)), {0: SEALED}, inputs(), {0: False}, 3)
    assert d.attempt is None and "no change since sealed attempt 0" in d.message


@pytest.mark.parametrize(
    ("changed", "reason"),
    [
        ({"files": (FILES[0], BatchFile("BBB", "BBB.parquet", "c" * 64, 10))}, R.BARS_CHANGED),
        ({"settings": "s2"}, R.SETTINGS_CHANGED),
        ({"code": "c2"}, R.CODE_CHANGED),
    ],
)
def test_a_change_after_a_sealed_attempt_makes_the_next(changed, reason):
    d = decide(record((0, R.REQUESTED)), {0: SEALED}, inputs(**changed), {0: False}, 3)
    assert (d.attempt, d.new, d.record.reason) == (1, True, reason)
    assert d.record.changes == (reason.value,)


def test_every_change_is_recorded_and_bars_name_the_reason():
    changed = inputs(files=FILES[:1], settings="s2", code="c2")
    d = decide(record((0, R.REQUESTED)), {0: SEALED}, changed, {0: False}, 3)
    assert d.record.reason is R.BARS_CHANGED
    assert d.record.changes == ("bars_changed", "settings_changed", "code_changed")


def test_an_incomplete_attempt_is_completed_with_the_same_inputs():
    d = decide(record((0, R.REQUESTED)), {0: PARTLY}, inputs(), {}, 3)
    assert (d.attempt, d.new) == (0, False) and "completing it" in d.message


def test_an_incomplete_attempt_with_other_inputs():
    # nothing sealed in it yet: it is rerun with today's inputs
    d = decide(record((0, R.REQUESTED)), {0: STARTED}, inputs(settings="s2"), {}, 3)
    assert (d.attempt, d.new, d.record.settings_fingerprint) == (0, True, "s2")
    # part of it sealed: those folders may not change, so the change goes to attempt 1
    d = decide(record((0, R.REQUESTED)), {0: PARTLY}, inputs(settings="s2"), {}, 3)
    assert (d.attempt, d.record.reason) == (1, R.SETTINGS_CHANGED)


def test_leaks_start_the_next_attempt_within_the_chain_limit():
    d = decide(record((0, R.REQUESTED)), {0: SEALED}, inputs(), {0: True}, 2)
    assert (d.attempt, d.record.reason) == (1, R.LEAKS_FOUND)
    chain = record((0, R.REQUESTED), (1, R.LEAKS_FOUND))
    d = decide(chain, {0: SEALED, 1: SEALED}, inputs(), {1: True}, 2)
    assert d.attempt is None and "limit" in d.message


def test_the_chain_counts_from_the_last_attempt_a_user_started():
    history = record(
        (0, R.REQUESTED), (1, R.LEAKS_FOUND), (2, R.SETTINGS_CHANGED), (3, R.LEAKS_FOUND)
    )
    assert [leak_chain(history, n) for n in range(4)] == [1, 2, 1, 2]
    states = {n: SEALED for n in range(4)}
    assert decide(history, states, inputs(), {3: True}, 3).attempt == 4
    assert decide(history, states, inputs(), {3: True}, 2).attempt is None


def test_attempt_folders_without_a_record_are_someone_elses():
    d = decide(record(), {0: SEALED}, inputs(), {}, 3)  # an older system's attempt 0
    assert (d.attempt, d.record.reason) == (1, R.REQUESTED)
    d = decide(record(), {0: ABSENT}, inputs(), {}, 3)
    assert d.attempt == 0


# --------------------------------------------------------------------------- the command line
def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in ("_locks", "_index", "_registry")
    }


def _attempts(root: Path) -> list[tuple[int, str]]:
    doc = json.loads(next((root / "_registry").iterdir()).read_text())
    return [(a["attempt"], a["reason"]) for a in doc["attempts"]]


@pytest.mark.slow
def test_reruns_change_nothing_and_changes_make_new_attempts(tmp_path: Path, dagster_home, capsys):
    from cohortflow import synthetic
    from cohortflow_dagster.cli.main import main
    from tests.conftest import FAST_SETTINGS

    data, out = tmp_path / "data", tmp_path / "out"
    synthetic.generate(
        data, fmt="parquet", n_symbols=4, n_bars=400, n_noise=2, seed=5, with_leaks=False
    )
    settings = tmp_path / "s.yaml"
    settings.write_text(FAST_SETTINGS.read_text().replace("horizons: [5, 10]", "horizons: [5]"))

    def run(settings_path: Path = settings) -> str:
        argv = ["run", "--data", str(data), "--out", str(out), "--settings", str(settings_path)]
        assert main(argv) == 0
        return capsys.readouterr().out

    run()
    assert _attempts(out) == [(0, "requested")]
    first = _digest(out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    # the same run twice: 0 bytes changed (no file even rewritten), no attempt added
    summary = run()
    assert "nothing to run: no change since sealed attempt 0" in summary
    assert _digest(out) == first and _attempts(out) == [(0, "requested")]
    assert {
        p: p.stat().st_mtime_ns
        for p in out.rglob("*")
        if p.is_file() and "_locks" not in p.parts and "_index" not in p.parts
    } == {p: s for p, s in stamps.items() if "_locks" not in p.parts and "_index" not in p.parts}

    # other settings: attempt 1 (settings_changed); attempt 0 byte-identical
    changed = tmp_path / "s4.yaml"
    changed.write_text(settings.read_text().replace("n_splits: 3", "n_splits: 4"))
    run(changed)
    assert _attempts(out) == [(0, "requested"), (1, "settings_changed")]
    now = _digest(out)
    assert {k: v for k, v in now.items() if k in first} == first
    assert any("/attempt_1/" in k for k in now)

    # a changed bar file: attempt 2 (bars_changed); attempts 0 and 1 byte-identical
    victim = sorted(data.glob("*.parquet"))[0]
    frame = pd.read_parquet(victim)
    frame.loc[frame.index[-1], "close"] *= 1.01
    frame.to_parquet(victim, index=False)
    run(changed)
    assert _attempts(out)[-1] == (2, "bars_changed")
    latest = _digest(out)
    assert {k: v for k, v in latest.items() if k in now} == now
    # `cohorts list` shows why each attempt exists
    assert main(["cohorts", "list", "--root", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["attempt"], r["reason"]) for r in rows} == {
        (0, "requested"),
        (1, "settings_changed"),
        (2, "bars_changed"),
    }
    assert os.environ["DAGSTER_HOME"] == str(dagster_home)
