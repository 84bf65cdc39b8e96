"""The batch registry: what each universe batch is and why each of its attempts exists,
under ``root/_registry/``.

A batch is named by the first 12 hex chars of its universe signature. Two different
universes whose signatures share those 12 chars would write into the same folders, so
the registry keeps the full signature of each batch and refuses a second universe for
the same batch loudly instead of mixing their artifacts.

Each attempt of a batch has a record: the reason it exists (``requested``,
``leaks_found``, ``bars_changed``, ``settings_changed``, ``code_changed``) and the inputs
it runs on (the bar files with their sha256, the settings fingerprint, the code version).
Records are appended, never rewritten once their attempt is sealed.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cohortflow.canonical import fingerprint
from cohortflow.domain import AttemptReason
from cohortflow.errors import ArtifactNotFoundError, CorruptFileError, StoreError
from cohortflow.fsio import exclusive_lock, write_json
from cohortflow.layout import (
    as_root,
    batch_of,
    lock_path,
    registry_dir,
    registry_path,
    universe_signature,
    validate_batch,
)
from cohortflow.names import validate_symbol

logger = logging.getLogger(__name__)

_FULL_SIG_RE = re.compile(r"[0-9a-f]{64}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_RECORD_RE = re.compile(r"batch_([0-9a-f]{12})\.json")


@dataclass(frozen=True)
class BatchFile:
    """One bar file of a batch: its symbol, file name, sha256 and size in bytes."""

    symbol: str
    name: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "symbol", validate_symbol(self.symbol))
        # a base name in the data folder (not a path part of the store): no separators
        if (
            not isinstance(self.name, str)
            or self.name in ("", ".", "..")
            or any(c in self.name for c in "/\\\0")
        ):
            raise StoreError(f"invalid file name {self.name!r}: expected a base file name")
        if not isinstance(self.sha256, str) or not _SHA256_RE.fullmatch(self.sha256):
            raise StoreError(f"file {self.name!r}: sha256 must be 64 lowercase hex chars")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise StoreError(f"file {self.name!r}: size must be a byte count, got {self.size!r}")

    @classmethod
    def of(cls, value: BatchFile | Mapping[str, Any]) -> BatchFile:
        if isinstance(value, BatchFile):
            return value
        try:
            return cls(
                symbol=value["symbol"],
                name=value["name"],
                sha256=value["sha256"],
                size=int(value["size"]),
            )
        except KeyError as exc:
            raise StoreError(f"batch file entry {dict(value)!r} lacks {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "name": self.name, "sha256": self.sha256, "size": self.size}


def bars_fingerprint(files: Iterable[BatchFile]) -> str:
    """The identity of a set of bar files: their symbols and sha256, nothing else (names,
    sizes and times do not change what the graph computes)."""
    return fingerprint({f.symbol: f.sha256 for f in files})


@dataclass(frozen=True)
class AttemptRecord:
    """Why one attempt of a batch exists and the inputs it runs on."""

    attempt: int
    reason: AttemptReason
    files: tuple[BatchFile, ...]
    settings_fingerprint: str
    code_version: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    changes: tuple[str, ...] = ()  # every input that differed from the attempt before

    def __post_init__(self) -> None:
        if isinstance(self.attempt, bool) or int(self.attempt) < 0:
            raise StoreError(f"attempt must be a non-negative integer, got {self.attempt!r}")
        object.__setattr__(self, "attempt", int(self.attempt))
        object.__setattr__(self, "reason", AttemptReason(self.reason))
        files = tuple(
            sorted((BatchFile.of(f) for f in self.files), key=lambda f: (f.symbol, f.name))
        )
        object.__setattr__(self, "files", files)
        object.__setattr__(self, "changes", tuple(self.changes))

    @property
    def bars_fingerprint(self) -> str:
        return bars_fingerprint(self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "reason": self.reason.value,
            "changes": list(self.changes),
            "bars_fingerprint": self.bars_fingerprint,
            "settings_fingerprint": self.settings_fingerprint,
            "code_version": self.code_version,
            "files": [f.to_dict() for f in self.files],
            "settings": dict(self.settings),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttemptRecord:
        try:
            return cls(
                attempt=data["attempt"],
                reason=data["reason"],
                files=tuple(data.get("files", ())),
                settings_fingerprint=data["settings_fingerprint"],
                code_version=data["code_version"],
                settings=dict(data.get("settings") or {}),
                changes=tuple(data.get("changes") or ()),
            )
        except KeyError as exc:
            raise StoreError(f"attempt record lacks {exc}") from None
        except ValueError as exc:
            raise StoreError(f"attempt record: {exc}") from None


@dataclass(frozen=True)
class BatchRecord:
    """What one batch is: its full universe signature, symbols and files.

    ``files`` accepts :class:`BatchFile` values or mappings with keys symbol, name, sha256,
    size; they are kept sorted by (symbol, name): the files last seen for the batch.
    ``symbols`` are kept sorted, upper-cased. ``attempts``: one record per attempt, by number.
    """

    batch: str
    universe_sig: str
    symbols: tuple[str, ...]
    files: tuple[BatchFile, ...] = field(default=())
    settings_fingerprint: str | None = None
    attempts: tuple[AttemptRecord, ...] = field(default=())

    def __post_init__(self) -> None:
        validate_batch(self.batch)
        if not isinstance(self.universe_sig, str) or not _FULL_SIG_RE.fullmatch(self.universe_sig):
            raise StoreError(
                f"batch {self.batch}: universe_sig must be the full 64-hex signature, "
                f"got {self.universe_sig!r}"
            )
        if batch_of(self.universe_sig) != self.batch:
            raise StoreError(
                f"batch {self.batch} does not match universe signature {self.universe_sig} "
                f"(whose batch is {batch_of(self.universe_sig)})"
            )
        if isinstance(self.symbols, str):
            raise StoreError(f"batch {self.batch}: symbols must be a sequence, not one string")
        object.__setattr__(
            self, "symbols", tuple(sorted({validate_symbol(s) for s in self.symbols}))
        )
        files = tuple(
            sorted((BatchFile.of(f) for f in self.files), key=lambda f: (f.symbol, f.name))
        )
        object.__setattr__(self, "files", files)
        if self.settings_fingerprint is not None and not isinstance(self.settings_fingerprint, str):
            raise StoreError(f"batch {self.batch}: settings_fingerprint must be a string or None")
        attempts = tuple(
            sorted(
                (
                    a if isinstance(a, AttemptRecord) else AttemptRecord.from_dict(a)
                    for a in self.attempts
                ),
                key=lambda a: a.attempt,
            )
        )
        numbers = [a.attempt for a in attempts]
        if len(set(numbers)) != len(numbers):
            raise StoreError(f"batch {self.batch}: attempt recorded twice in {numbers}")
        object.__setattr__(self, "attempts", attempts)

    def attempt(self, n: int) -> AttemptRecord | None:
        """The record of attempt ``n`` (None if the batch has none)."""
        return next((a for a in self.attempts if a.attempt == int(n)), None)

    @property
    def latest(self) -> AttemptRecord | None:
        return self.attempts[-1] if self.attempts else None

    @classmethod
    def from_symbols(
        cls,
        symbols: Iterable[str],
        files: Iterable[BatchFile | Mapping[str, Any]] = (),
        settings_fingerprint: str | None = None,
    ) -> BatchRecord:
        """The record of the universe ``symbols`` (signature and batch computed here)."""
        symbols = tuple(symbols)
        sig = universe_signature(symbols)
        return cls(batch_of(sig), sig, symbols, tuple(files), settings_fingerprint)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "universe_sig": self.universe_sig,
            "symbols": list(self.symbols),
            "files": [f.to_dict() for f in self.files],
            "settings_fingerprint": self.settings_fingerprint,
            "attempts": [a.to_dict() for a in self.attempts],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchRecord:
        try:
            return cls(
                batch=data["batch"],
                universe_sig=data["universe_sig"],
                symbols=tuple(data.get("symbols", ())),
                files=tuple(data.get("files", ())),
                settings_fingerprint=data.get("settings_fingerprint"),
                attempts=tuple(data.get("attempts") or ()),
            )
        except KeyError as exc:
            raise StoreError(f"batch record lacks {exc}") from None
        except (TypeError, AttributeError) as exc:
            raise StoreError(f"batch record is malformed: {exc}") from None


def _collision(batch: str, known: str, other: str) -> StoreError:
    return StoreError(
        f"universe signature collision: batch {batch} is universe {known} but {other} maps to "
        f"the same 12 hex chars; refusing to mix two universes in one batch folder "
        f"(move one universe's output elsewhere, or change its symbol set)"
    )


class BatchRegistry:
    """The registry of batches under ``root/_registry/`` (one canonical JSON file each)."""

    def __init__(self, root: Any) -> None:
        self.root = as_root(root)
        self.folder = registry_dir(self.root)

    def path(self, batch: str) -> Any:
        return registry_path(self.root, batch)

    def _lock(self):
        return exclusive_lock(lock_path(self.root, "registry"))

    def _read(self, batch: str) -> BatchRecord | None:
        from cohortflow.formats import read_json

        path = self.path(batch)
        try:
            data = read_json(path)
        except ArtifactNotFoundError:
            return None
        try:
            record = BatchRecord.from_dict(data)
        except StoreError as exc:
            raise CorruptFileError(path, f"not a batch record: {exc}") from None
        if record.batch != batch:
            raise CorruptFileError(path, f"holds batch {record.batch}, not {batch}")
        return record

    def register(self, record: BatchRecord) -> BatchRecord:
        """Record what a batch is; its files and settings as last seen replace the ones
        before, its attempts are kept (``record``'s own attempts are ignored: see
        :meth:`add_attempt`). Returns the stored record.

        Raises StoreError if the batch is registered for a different full signature, or if
        ``record``'s symbols do not hash to its signature.
        """
        if not isinstance(record, BatchRecord):
            raise TypeError(f"expected a BatchRecord, got {type(record).__name__}")
        # Read, compare and write under one lock so two sensors cannot race a collision past.
        with self._lock():
            known = self._read(record.batch)
            if known is not None and known.universe_sig != record.universe_sig:
                raise _collision(record.batch, known.universe_sig, record.universe_sig)
            if universe_signature(record.symbols) != record.universe_sig:
                raise StoreError(
                    f"batch {record.batch}: symbols {list(record.symbols)} do not hash to "
                    f"universe signature {record.universe_sig}"
                )
            merged = dataclasses.replace(record, attempts=known.attempts if known else ())
            if known == merged:
                return known
            write_json(self.path(record.batch), merged.to_dict())
        logger.info("registered batch %s (%d symbols)", record.batch, len(record.symbols))
        return merged

    def add_attempt(self, batch: str, attempt: AttemptRecord) -> BatchRecord:
        """Record attempt ``attempt.attempt`` of a registered batch (replacing an earlier
        record of the same number, which only an unsealed attempt may have)."""
        with self._lock():
            known = self._read(validate_batch(batch))
            if known is None:
                raise ArtifactNotFoundError(f"batch {batch} is not registered under {self.folder}")
            others = tuple(a for a in known.attempts if a.attempt != attempt.attempt)
            updated = dataclasses.replace(known, attempts=(*others, attempt))
            if updated != known:
                write_json(self.path(batch), updated.to_dict())
        logger.info(
            "batch %s: attempt %d recorded (%s)", batch, attempt.attempt, attempt.reason.value
        )
        return updated

    def get(self, batch: str) -> BatchRecord:
        """The record of ``batch``; ArtifactNotFoundError listing the known batches if absent."""
        record = self._read(validate_batch(batch))
        if record is None:
            known = [r.batch for r in self.list()]
            raise ArtifactNotFoundError(
                f"batch {batch} is not registered under {self.folder}; known batches: "
                f"{', '.join(known) if known else 'none'}"
            )
        return record

    def list(self) -> builtins.list[BatchRecord]:
        """Every registered batch, sorted by batch."""
        try:
            names = sorted(p.name for p in self.folder.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        records = []
        for name in names:
            if m := _RECORD_RE.fullmatch(name):
                record = self._read(m.group(1))
                if record is not None:
                    records.append(record)
        return records

    def check(self, batch: str, universe_sig: str) -> BatchRecord:
        """The record of ``batch`` if it is the universe ``universe_sig``; StoreError if not."""
        record = self.get(batch)
        if not isinstance(universe_sig, str) or batch_of(universe_sig) != record.batch:
            raise StoreError(f"universe signature {universe_sig!r} is not of batch {record.batch}")
        if record.universe_sig != universe_sig:
            raise _collision(record.batch, record.universe_sig, universe_sig)
        return record
