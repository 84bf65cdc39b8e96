"""Canonical serialisation and hashing: the byte-level basis of determinism.

Canonical JSON has sorted keys, two-space indentation, a trailing newline, and floats
written with 12 significant digits (so the last bits of a BLAS sum never change a file).
NaN and infinities become ``null``. Every hash in the project is sha256 over these bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

FLOAT_DIGITS = 12


def normalize(obj: Any) -> Any:
    """Turn ``obj`` into plain JSON types with fixed-precision floats (recursively)."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        x = float(obj)
        if not math.isfinite(x):
            return None
        if x == 0.0:
            return 0.0
        return float(f"{x:.{FLOAT_DIGITS}g}")
    if isinstance(obj, Mapping):
        return {str(k): normalize(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [normalize(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted(normalize(v) for v in obj)
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if hasattr(obj, "isoformat"):  # pandas Timestamp, numpy datetime64 via pandas
        return obj.isoformat()
    if isinstance(obj, np.datetime64):
        return str(obj)
    if isinstance(obj, Path):
        return obj.as_posix()
    if hasattr(obj, "to_dict"):
        return normalize(obj.to_dict())
    raise TypeError(f"cannot serialise {type(obj).__name__} canonically")


def canonical_json(obj: Any, *, compact: bool = False) -> str:
    """Canonical JSON text of ``obj``: sorted keys, fixed floats, newline-terminated."""
    data = normalize(obj)
    if compact:
        return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return json.dumps(data, sort_keys=True, indent=2, allow_nan=False) + "\n"


def canonical_json_bytes(obj: Any) -> bytes:
    return canonical_json(obj).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(obj: Any) -> str:
    """sha256 hex of the compact canonical JSON of ``obj``: the identity of a value."""
    return sha256_hex(canonical_json(obj, compact=True).encode("utf-8"))
