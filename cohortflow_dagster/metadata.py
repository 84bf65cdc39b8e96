"""Dagster metadata that a person reads at a glance: tables with a schema, numbers at four
significant digits, plots as images, row counts and column schemas (a leaf module of the
shell: the assets and the IO manager both use it)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from cohortflow.plots import markdown_image

SIGNIFICANT = 4


def num(x: Any) -> float | None:
    """A number at four significant digits (None for NaN, infinities and None)."""
    if x is None or isinstance(x, bool):
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return 0.0 if x == 0 else float(f"{x:.{SIGNIFICANT}g}")


def _column_type(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(series):
        return "datetime"
    return "string"


def column_schema(frame: pd.DataFrame) -> TableSchema:
    return TableSchema(columns=[TableColumn(str(c), _column_type(frame[c])) for c in frame.columns])


def _cell(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return num(value)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


def table(frame: pd.DataFrame, max_rows: int = 30) -> MetadataValue:
    """A frame as a Dagster table (the first ``max_rows`` rows), floats at 4 digits."""
    records = [
        TableRecord({str(c): _cell(v) for c, v in row.items()})
        for row in frame.head(max_rows).to_dict(orient="records")
    ]
    return MetadataValue.table(records=records, schema=column_schema(frame))


def frame_facts(frame: pd.DataFrame) -> dict[str, Any]:
    """``dagster/row_count`` and ``dagster/column_schema`` of a tabular asset."""
    return {"dagster/row_count": len(frame), "dagster/column_schema": column_schema(frame)}


def files_table(written: Sequence[Any]) -> MetadataValue:
    """The files an output wrote (or found identical in a sealed attempt)."""
    rows = [
        {
            "file": w.relpath,
            "bytes": w.size,
            "sha256": w.sha256[:12],
            "rows": w.rows,
            "unchanged": w.unchanged,
        }
        for w in sorted(written, key=lambda w: w.relpath)
    ]
    return MetadataValue.table(
        records=[TableRecord(r) for r in rows],
        schema=TableSchema(
            columns=[
                TableColumn("file", "string"),
                TableColumn("bytes", "int"),
                TableColumn("sha256", "string"),
                TableColumn("rows", "int"),
                TableColumn("unchanged", "bool"),
            ]
        ),
    )


def png(image: bytes, alt: str) -> MetadataValue:
    """A PNG shown as an image in the asset's metadata."""
    return MetadataValue.md(markdown_image(image, alt))


def numbers(values: Mapping[str, Any]) -> dict[str, float | None]:
    return {k: num(v) for k, v in values.items()}


def joined(items: Iterable[Any], limit: int = 12) -> str:
    items = [str(i) for i in items]
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" (+{more} more)" if more > 0 else "") if items else "none"
