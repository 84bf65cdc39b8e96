"""cohortflow.registry: batch records round-trip, and a 12-hex collision fails loudly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from upath import UPath

from cohortflow.canonical import canonical_json
from cohortflow.errors import ArtifactNotFoundError, StoreError
from cohortflow.registry import BatchFile, BatchRecord, BatchRegistry

SIG = hashlib.sha256(b"AAPL,MSFT,NVDA").hexdigest()
BATCH = SIG[:12]  # 958ecb3c3bb6
FILES = (
    {"symbol": "NVDA", "name": "NVDA.csv", "sha256": "b" * 64, "size": 200},
    {"symbol": "AAPL", "name": "AAPL.csv", "sha256": "a" * 64, "size": 100},
    {"symbol": "MSFT", "name": "MSFT.parquet", "sha256": "c" * 64, "size": 300},
)


def _record(**changes: object) -> BatchRecord:
    base = BatchRecord.from_symbols(["nvda", "AAPL", "MSFT", "AAPL"], FILES, "f" * 64)
    return BatchRecord.from_dict({**base.to_dict(), **changes})


def test_from_symbols_computes_signature_and_batch() -> None:
    record = _record()
    assert record.universe_sig == SIG and record.batch == BATCH == "958ecb3c3bb6"
    assert record.symbols == ("AAPL", "MSFT", "NVDA")
    assert [f.name for f in record.files] == ["AAPL.csv", "MSFT.parquet", "NVDA.csv"]
    assert record.files[0] == BatchFile("AAPL", "AAPL.csv", "a" * 64, 100)


def test_register_get_list_round_trip(tmp_path: Path) -> None:
    registry = BatchRegistry(tmp_path)
    record = _record()
    assert registry.register(record) == record
    path = tmp_path / "_registry" / "batch_958ecb3c3bb6.json"
    assert path.read_bytes() == canonical_json(record.to_dict()).encode()
    assert json.loads(path.read_text())["universe_sig"] == SIG
    assert registry.get(BATCH) == record
    assert BatchRegistry(tmp_path).list() == [record]
    assert BatchRecord.from_dict(record.to_dict()) == record
    assert registry.check(BATCH, SIG) == record


def test_same_universe_with_changed_files_overwrites(tmp_path: Path) -> None:
    registry = BatchRegistry(tmp_path)
    registry.register(_record())
    changed_files = [dict(FILES[0], sha256="d" * 64, size=201), *FILES[1:]]
    changed = _record(files=changed_files, settings_fingerprint=None)
    assert registry.register(changed) == changed
    assert registry.get(BATCH) == changed
    assert registry.get(BATCH).files[2].sha256 == "d" * 64
    assert len(registry.list()) == 1


def test_collision_of_two_universes_fails_loudly(tmp_path: Path) -> None:
    registry = BatchRegistry(tmp_path)
    first = registry.register(_record())
    # A different universe whose signature shares the first 12 hex chars.
    other_sig = BATCH + "0" * 52
    assert other_sig != SIG
    intruder = BatchRecord(BATCH, other_sig, ("ZZZ",), (), None)
    before = (tmp_path / "_registry" / f"batch_{BATCH}.json").read_bytes()
    with pytest.raises(StoreError) as info:
        registry.register(intruder)
    message = str(info.value)
    assert message.startswith(
        f"universe signature collision: batch {BATCH} is universe {SIG} but {other_sig} maps to "
        "the same 12 hex"
    )
    assert (tmp_path / "_registry" / f"batch_{BATCH}.json").read_bytes() == before
    assert registry.get(BATCH) == first
    with pytest.raises(StoreError, match="universe signature collision"):
        registry.check(BATCH, other_sig)


def test_unknown_batch_lists_the_known_ones(tmp_path: Path) -> None:
    registry = BatchRegistry(tmp_path)
    with pytest.raises(ArtifactNotFoundError, match="known batches: none"):
        registry.get("000000000000")
    registry.register(_record())
    with pytest.raises(ArtifactNotFoundError, match="known batches: 958ecb3c3bb6"):
        registry.get("000000000000")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch": "000000000000"}, "does not match universe signature"),
        ({"universe_sig": SIG[:40], "batch": BATCH}, "full 64-hex signature"),
        ({"files": [{"symbol": "AAPL", "name": "AAPL.csv", "sha256": "xyz", "size": 1}]}, "sha256"),
        (
            {"files": [{"symbol": "AAPL", "name": "../AAPL.csv", "sha256": "a" * 64, "size": 1}]},
            "invalid file name",
        ),
        ({"files": [{"symbol": "AAPL", "name": "", "sha256": "a" * 64, "size": 1}]}, "file name"),
        ({"files": [{"symbol": "AAPL", "name": "A.csv", "sha256": "a" * 64}]}, "lacks"),
    ],
)
def test_invalid_records_are_refused(changes: dict, message: str) -> None:
    with pytest.raises((StoreError, ValueError), match=message):
        _record(**changes)


def test_register_refuses_symbols_that_do_not_hash_to_the_signature(tmp_path: Path) -> None:
    lying = BatchRecord(BATCH, SIG, ("AAPL", "MSFT"), (), None)
    with pytest.raises(StoreError, match="do not hash to universe signature"):
        BatchRegistry(tmp_path).register(lying)
    assert BatchRegistry(tmp_path).list() == []


def test_registry_on_a_memory_root() -> None:
    registry = BatchRegistry(UPath("memory://registry-test/out"))
    record = registry.register(_record())
    assert registry.get(BATCH) == record and registry.list() == [record]
