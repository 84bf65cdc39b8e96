"""What the data sensor and ``cohortflow run`` share: look at a data folder, load the
universe it holds, register it as a batch, and decide which attempt to run next."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cohortflow.bars import Universe, load_universe
from cohortflow.canonical import fingerprint
from cohortflow.errors import DataError
from cohortflow.layout import Scope, sorted_attempts
from cohortflow.leakage import Exclusions, next_attempt
from cohortflow.registry import BatchRecord, BatchRegistry
from cohortflow.settings import Settings

BAR_SUFFIXES = (".csv", ".parquet")


def folder_signature(data_dir: str | Path) -> str:
    """A cheap change detector: names, sizes and mtimes of the folder's files (no reads).
    The sensor compares it with its cursor before doing any real work."""
    folder = Path(data_dir)
    if not folder.is_dir():
        return "missing"
    h = hashlib.sha256()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        st = entry.stat()
        h.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def batch_record(universe: Universe, settings: Settings) -> BatchRecord:
    return BatchRecord.from_symbols(
        universe.symbols,
        files=[
            {"symbol": f.symbol, "name": f.path.name, "sha256": f.sha256, "size": f.size}
            for f in universe.files
        ],
        settings_fingerprint=fingerprint(settings.fingerprint_fields()),
    )


@dataclass(frozen=True)
class Intake:
    """A universe found in a data folder and what the registry knew of it before."""

    universe: Universe
    record: BatchRecord
    previous: BatchRecord | None

    @property
    def is_new(self) -> bool:
        return self.previous is None

    @property
    def changed(self) -> bool:
        return self.previous is not None and self.previous.files != self.record.files


def take_in(data_dir: str | Path, root: Any, settings: Settings) -> Intake:
    """Load and validate the folder's universe and register its batch (raises DataError)."""
    universe = load_universe(data_dir, settings)
    registry = BatchRegistry(root)
    previous = next((r for r in registry.list() if r.batch == universe.batch), None)
    record = registry.register(batch_record(universe, settings))
    return Intake(universe, record, previous)


def load_registered(data_dir: str | Path, record: BatchRecord) -> Universe:
    """The universe of a registered batch, read from exactly its files in ``data_dir``.

    The folder may hold more files (a later universe); each of the batch's files must be
    there with the content it had when the batch was registered.
    """
    from types import MappingProxyType

    from cohortflow.bars import SymbolFile, read_bars
    from cohortflow.canonical import sha256_file

    folder = Path(data_dir)
    bars, files = {}, []
    for f in record.files:
        path = folder / f.name
        if not path.is_file():
            raise DataError(
                path, f"file of batch {record.batch} is gone; restore it or drop the batch"
            )
        digest = sha256_file(path)
        if digest != f.sha256:
            raise DataError(
                path,
                f"changed since batch {record.batch} was registered (sha256 {digest[:12]} != "
                f"{f.sha256[:12]}); the data sensor re-registers changed files",
            )
        bars[f.symbol] = read_bars(path)
        files.append(SymbolFile(f.symbol, path, f.sha256, f.size))
    return Universe(
        symbols=tuple(record.symbols),
        files=tuple(files),
        bars=MappingProxyType(bars),
        skipped=(),
        data_dir=folder,
    )


def attempts_on_disk(root: Any, batch: str, targets: tuple[str, ...]) -> list[int]:
    """Attempts of a batch that have exclusions written, for any target."""
    from upath import UPath

    found: set[int] = set()
    for target in targets:
        folder = (
            Scope(target, "TARGET_RANKING", "CROSS_SECTIONAL", batch, 0)
            .attempt_dir(UPath(root))
            .parent
        )
        if folder.exists():
            found.update(sorted_attempts(folder))
    return sorted(found)


def decide_next_attempt(
    exclusions_by_target: Mapping[str, Exclusions], attempt: int, attempt_limit: int
) -> int | None:
    """Attempt n+1 when any target's attempt n found leaks and the limit allows; else None.
    The one decision function of the sensor and the command line."""
    for excl in exclusions_by_target.values():
        if excl.attempt != attempt:
            raise DataError("exclusions", f"expected attempt {attempt}, got {excl.attempt}")
    choices = [next_attempt(e, attempt_limit) for e in exclusions_by_target.values()]
    return attempt + 1 if any(c is not None for c in choices) else None
