"""Results of pure computations kept under the fingerprint of their inputs, so that work an
attempt shares with an earlier one (or a rerun of the same partition) is read, not refit.

The cache is a plain key -> bytes store (:class:`ResultCache`): the core decides the keys
and the encoding, whoever stores the bytes (the artifact store, a folder, memory) knows
nothing of either. A key is the sha256 of the canonical JSON of the computation's kind, its
version (bumped whenever the computation's numbers change) and every input that decides
the result, with data columns replaced by their content fingerprints
(:func:`columns_fingerprint`). Threads and the device are not inputs where the numbers do
not depend on them; a computation whose numbers do (XGBoost on a GPU) puts them in.

Same key, same bytes: a hit returns exactly what the computation would have returned.

Plugging in a store: any object with ``get(key) -> bytes | None`` and ``put(key, bytes)``;
keys are 64 lowercase hex characters (safe as file names), values are at most a few MB
(one computation's importances, say). Writes may be lost (a miss recomputes); a ``get``
must never return bytes stored under another key.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from cohortflow.canonical import fingerprint, sha256_hex

__all__ = ["MemoryCache", "ResultCache", "columns_fingerprint", "memo_key"]


class ResultCache(Protocol):
    """A key -> bytes store; see the module docstring for the contract."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...


class MemoryCache:
    """A :class:`ResultCache` in this process's memory: least recently used entries go
    first once the values pass ``max_bytes``. Thread-safe. ``hits`` / ``misses`` count gets."""

    def __init__(self, max_bytes: int = 512 << 20) -> None:
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: bytes) -> None:
        value = bytes(value)
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._size -= len(old) if old is not None else 0
            self._items[key] = value
            self._size += len(value)
            while self._size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)

    def __len__(self) -> int:
        return len(self._items)


def _column_digest(values: pd.Series) -> str:
    """sha256 of one column's values: raw bytes for numbers and datetimes, a per-value hash
    (pandas' fixed-key SipHash) for strings and categories."""
    dtype = values.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "biufcmM":
        return sha256_hex(dtype.str.encode() + np.ascontiguousarray(values.to_numpy()).tobytes())
    hashed = pd.util.hash_pandas_object(values.astype(str), index=False).to_numpy()
    return sha256_hex(b"str:" + hashed.tobytes())


def columns_fingerprint(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """The content of ``columns`` of ``frame`` (names, order, dtypes, every value, the row
    count), as one sha256 hex; the index is not part of it."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"columns not in the frame: {missing}")
    parts = [[str(c), _column_digest(frame[c])] for c in columns]
    return fingerprint({"rows": int(len(frame)), "columns": parts})


def memo_key(kind: str, version: int, inputs: dict[str, Any]) -> str:
    """The cache key of computation ``kind`` (at ``version``) on ``inputs`` (plain JSON
    values: settings, names, fingerprints)."""
    return fingerprint({"kind": kind, "version": int(version), "inputs": inputs})
