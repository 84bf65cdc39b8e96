"""Parquet writer options shared by every frame the store writes."""

from __future__ import annotations

from typing import Any

import pyarrow as pa


def column_compression(schema: pa.Schema, level: int = 3) -> dict[str, Any]:
    """``pq.write_table`` options: floating-point columns stored plain, the rest zstd.

    Features, targets and predictions are close to random in their low bytes: zstd shrank
    the 500-symbol panel by 11 % (768 -> 687 MB) and cost 2.8 s to write and 2.2 s to
    read, against 1.6 s and 0.9 s plain, and every step of an attempt reads the panel.
    Timestamps, symbols and folds compress well and stay zstd.
    """
    plain = {f.name for f in schema if pa.types.is_floating(f.type)}
    return {
        "compression": {f.name: "none" if f.name in plain else "zstd" for f in schema},
        "compression_level": {f.name: level for f in schema if f.name not in plain} or None,
    }
