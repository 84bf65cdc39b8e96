"""Data in: discover, read and validate the per-symbol bar files of a data folder.

A data folder holds one file per symbol, ``{SYMBOL}.parquet`` or ``{SYMBOL}.csv``, with the
required columns ``timestamp`` and ``close``; ``open``, ``high``, ``low`` and ``volume`` are
optional, and every other numeric column is a user feature. Hidden (dot-prefixed) files
and sub-folders are ignored.

Bad input stops with one :class:`~cohortflow.errors.DataError` that names the file and the
problem (DESIGN §4). The one soft rule is length: a symbol with fewer than
``settings.min_rows`` rows is skipped with a logged reason, and only when no symbol is left
does loading fail. The universe is the set of symbols actually loaded.

Row numbers in messages count data rows from 1 (the first row under a CSV header is row 1).

Checks beyond the format, all before anything is written (issue 21):

- timestamps must lie in the range pandas' nanosecond clock holds (1677-09-22 to
  2262-04-10); outside it they used to wrap silently into another century;
- time zones: a file whose timestamps carry a zone (or UTC offsets) is converted to UTC.
  Files with and without zones in one universe are refused, naming the odd file out: a
  time without a zone cannot be put on the same clock as one with (is "2020-01-02" UTC, or
  New York's exchange date?), and a guess splits the cross-section silently (one symbol
  per date). For the same reason a file whose timestamps (mostly) never coincide with the
  other files' is refused;
- OHLC: high >= max(open, close), low <= min(open, close) and high >= low, within
  :data:`OHLC_TOLERANCE`; a bar whose high is more than :data:`MAX_BAR_RANGE` times its low,
  and a close that jumps that factor for one bar and back, are taken for corrupt values.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cohortflow.errors import DataError, InvalidNameError
from cohortflow.names import validate_symbol
from cohortflow.settings import Settings

try:  # the layout module owns the definition when it exists; same formula either way
    from cohortflow.layout import universe_signature as _universe_signature
except ImportError:

    def _universe_signature(symbols: Iterable[str]) -> str:
        """sha256 hex of the sorted, de-duplicated, upper-cased symbols joined by ','."""
        joined = ",".join(sorted({str(s).upper() for s in symbols}))
        return hashlib.sha256(joined.encode("utf-8")).hexdigest()


log = logging.getLogger(__name__)

BAR_SUFFIXES = (".csv", ".parquet")
REQUIRED_COLUMNS = ("timestamp", "close")
PRICE_COLUMNS = ("open", "high", "low", "close")
OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")
# column order of a validated bar frame, before the user columns
STANDARD_COLUMNS = ("timestamp", *OHLCV_COLUMNS)
_MAX_LISTED = 5

# pandas' nanosecond clock holds 1677-09-21 00:12:43 .. 2262-04-11 23:47:16; whole days
# inside it, so a date-only timestamp on either end day is refused with the same words
FIRST_DAY = np.datetime64("1677-09-22", "D")
LAST_DAY = np.datetime64("2262-04-10", "D")
#: relative slack of the OHLC order checks: vendors' rounding and feeds that take the close
#: and the high from different prints stay well inside it; a shifted decimal point or a
#: flipped bit is a factor, not a fraction of a percent
OHLC_TOLERANCE = 0.005
#: a bar whose high is this many times its low, or a close that jumps this factor for one
#: bar and straight back, is a corrupt value (no market moves 10x and back within a bar)
MAX_BAR_RANGE = 10.0
#: a file whose timestamps coincide with the other files' less often than this, where their
#: spans overlap, is on another clock (time zone, bar time) and would split the cross-section
MIN_SHARED_TIMESTAMPS = 0.5
_MIN_OVERLAP = 10  # timestamps inside the common span before that share is judged


@dataclass(frozen=True)
class SymbolFile:
    """One bar file: its symbol (upper-case), path, content hash and size in bytes."""

    symbol: str
    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Skipped:
    """A symbol left out of the universe, and why (e.g. too few rows)."""

    symbol: str
    path: str
    reason: str


@dataclass(frozen=True, eq=False)
class Universe:
    """The symbols actually loaded from a data folder, with their validated bars.

    ``bars[symbol]`` has ``timestamp`` (datetime64[ns], tz-naive, strictly ascending),
    ``close``, the optional OHLCV columns present in the file and the user's numeric
    columns, all float64. Compared by identity (it holds DataFrames).
    """

    symbols: tuple[str, ...]
    files: tuple[SymbolFile, ...]
    bars: Mapping[str, pd.DataFrame]
    skipped: tuple[Skipped, ...]
    data_dir: Path
    # what loading changed and a user should hear of (time zones converted to UTC)
    notes: tuple[str, ...] = ()
    _files_by_symbol: Mapping[str, SymbolFile] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_files_by_symbol", {f.symbol: f for f in self.files})

    @property
    def universe_sig(self) -> str:
        """sha256 hex of the sorted, de-duplicated, upper-cased loaded symbols joined by ','."""
        return _universe_signature(self.symbols)

    @property
    def batch(self) -> str:
        """The 12 hex characters of the ``universe_batch`` partition key."""
        return self.universe_sig[:12]

    def path_of(self, symbol: str) -> Path:
        """The file a symbol was read from (for error messages); a guess if unknown."""
        found = self._files_by_symbol.get(symbol)
        return found.path if found is not None else self.data_dir / symbol


# --------------------------------------------------------------------------- discovery


def _hash_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def discover(data_dir: str | Path) -> list[SymbolFile]:
    """List the bar files of ``data_dir``, sorted by symbol, with their sha256 and size.

    Raises :class:`DataError` for a missing folder, a folder without bar files, a file of
    an unknown type, a file name that is not a safe symbol, or two files for one symbol.
    """
    folder = Path(data_dir)
    if not folder.exists():
        raise DataError(folder, "data folder does not exist")
    if not folder.is_dir():
        raise DataError(folder, "data folder is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            log.info("%s: ignoring sub-folder %s", folder, path.name)
            continue
        suffix = path.suffix.lower()
        if suffix not in BAR_SUFFIXES:
            raise DataError(
                path,
                f"unknown file type {path.suffix or '(no extension)'!r}; the data folder may "
                "hold only {SYMBOL}.csv or {SYMBOL}.parquet bar files (hidden files are ignored)",
            )
        try:
            symbol = validate_symbol(path.stem)
        except InvalidNameError as exc:
            raise DataError(path, f"file name is not a usable symbol: {exc}") from exc
        if symbol in found:
            raise DataError(
                path,
                f"two files for symbol {symbol}: {found[symbol].name} and {path.name}; "
                "keep exactly one",
            )
        found[symbol] = path
    if not found:
        raise DataError(folder, "data folder holds no bar files ({SYMBOL}.csv or {SYMBOL}.parquet)")
    files = []
    for symbol in sorted(found):
        digest, size = _hash_file(found[symbol])
        files.append(SymbolFile(symbol=symbol, path=found[symbol], sha256=digest, size=size))
    return files


# --------------------------------------------------------------------------- reading


def _row(i: int, path: Path) -> str:
    """Human row reference: data rows count from 1; CSV adds the file line."""
    if path.suffix.lower() == ".csv":
        return f"row {i + 1} (line {i + 2})"
    return f"row {i + 1}"


def _read_raw(path: Path) -> pd.DataFrame:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(path, f"cannot read file: {exc.strerror or exc}") from exc
    if size == 0:
        raise DataError(path, "empty file (0 bytes)")
    try:
        if path.suffix.lower() == ".parquet":
            # pyarrow reads whole columns natively; dates stay date objects until parsed
            return pq.read_table(path).to_pandas()
        return pd.read_csv(path, engine="c")
    except pd.errors.EmptyDataError as exc:
        raise DataError(path, "empty file (no header, no rows)") from exc
    except (
        OSError,
        ValueError,  # includes pandas ParserError and UnicodeDecodeError
        pa.ArrowException,
    ) as exc:
        kind = "parquet" if path.suffix.lower() == ".parquet" else "CSV"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(path, f"unreadable or corrupt {kind} file: {detail}") from exc


_OFFSET = r"(?:Z|[+-]\d{2}:?\d{2})$"


def _parse_timestamps(raw: pd.Series, path: Path) -> tuple[np.ndarray, str | None]:
    """The ``timestamp`` column as datetime64[ns], tz-naive (tz-aware -> UTC -> naive), and
    the file's time zone (None when its timestamps carry none)."""
    dtype = raw.dtype
    zone: str | None = None
    if isinstance(dtype, pd.DatetimeTZDtype):
        zone = str(dtype.tz)
        parsed = raw.dt.tz_convert("UTC").dt.tz_localize(None)
    elif dtype.kind == "M":
        parsed = raw
    elif dtype.kind in "iufb":
        raise DataError(
            path,
            f"column 'timestamp' holds numbers ({dtype}), not dates; write dates as text "
            "such as 2020-01-02 or 2020-01-02T15:30:00",
        )
    else:
        with warnings.catch_warnings():
            # "could not infer format" falls back to per-element parsing; bad rows become NaT
            warnings.simplefilter("ignore", UserWarning)
            try:
                parsed = pd.to_datetime(raw, errors="coerce")
            except (ValueError, TypeError):
                # mixed UTC offsets: pandas asks for utc=True
                parsed = pd.to_datetime(raw, errors="coerce", utc=True)
        bad = parsed.isna().to_numpy() & raw.notna().to_numpy()
        if isinstance(parsed.dtype, pd.DatetimeTZDtype) or bad.any():
            _refuse_mixed_zones(raw, path)
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):
            zone = str(parsed.dtype.tz)
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                path,
                f"unparsable timestamp {raw.iloc[i]!r} at {_row(i, path)}"
                f" ({int(bad.sum())} unparsable in all)",
            )
    missing = parsed.isna().to_numpy()
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise DataError(path, f"missing timestamp at {_row(i, path)}")
    return _nanoseconds(parsed.to_numpy(), raw, path), zone


def _refuse_mixed_zones(raw: pd.Series, path: Path) -> None:
    """Refuse text timestamps some of which carry a zone (a UTC offset) and some not."""
    text = raw.dropna().astype(str).str.strip()
    has = text.str.contains(_OFFSET, regex=True).to_numpy()
    if has.any() and not has.all():
        i = int(np.flatnonzero(~has)[0])
        j = int(np.flatnonzero(has)[0])
        raise DataError(
            path,
            f"timestamps with and without a time zone in one file: {text.iloc[j]!r} at "
            f"{_row(j, path)} has a UTC offset, {text.iloc[i]!r} at {_row(i, path)} has "
            f"none ({int((~has).sum())} without); write every timestamp with its offset, or none",
        )


def _nanoseconds(values: np.ndarray, raw: pd.Series, path: Path) -> np.ndarray:
    """datetime64 of any unit as datetime64[ns], refusing what that clock cannot hold
    (numpy's cast would wrap it into another century without a word)."""
    if values.dtype == np.dtype("datetime64[ns]"):
        return values
    outside = (values < FIRST_DAY.astype(values.dtype)) | (
        values > (LAST_DAY + 1).astype(values.dtype)
    )
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        shown = str(raw.iloc[i])  # as written (text), or as pandas shows a date of any unit
        raise DataError(
            path,
            f"timestamp {shown!r} at {_row(i, path)} is outside the dates pandas can hold "
            f"({FIRST_DAY} to {LAST_DAY}); {int(outside.sum())} such timestamp(s) in all",
        )
    return values.astype("datetime64[ns]")


def _check_order(ts: np.ndarray, path: Path) -> None:
    """Refuse duplicate timestamps, then timestamps out of ascending order; say where."""
    order = np.argsort(ts, kind="stable")
    sorted_ts = ts[order]
    dup = np.flatnonzero(sorted_ts[1:] == sorted_ts[:-1])
    if dup.size:
        rows = sorted(int(order[j]) for j in (dup[0], dup[0] + 1))
        stamp = pd.Timestamp(sorted_ts[dup[0]])
        raise DataError(
            path,
            f"duplicate timestamp {stamp} at {_row(rows[0], path)} and {_row(rows[1], path)}"
            f" ({dup.size} duplicate(s) in all)",
        )
    back = np.flatnonzero(ts[1:] < ts[:-1])
    if back.size:
        i = int(back[0]) + 1
        raise DataError(
            path,
            f"rows are not sorted by timestamp: {_row(i, path)} ({pd.Timestamp(ts[i])}) comes "
            f"after {_row(i - 1, path)} ({pd.Timestamp(ts[i - 1])}); "
            f"{back.size} step(s) backwards in all",
        )


def _numeric(raw: pd.Series, column: str, path: Path) -> np.ndarray:
    """A standard column as float64, or a DataError naming the first non-number."""
    if raw.dtype.kind in "iufb":
        return raw.to_numpy(dtype=np.float64)
    coerced = pd.to_numeric(raw, errors="coerce")
    bad = coerced.isna().to_numpy() & raw.notna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            path, f"column {column!r} is not numeric: {raw.iloc[i]!r} at {_row(i, path)}"
        )
    return coerced.to_numpy(dtype=np.float64)


def _check_prices(values: np.ndarray, column: str, ts: np.ndarray, path: Path) -> None:
    """Prices must be finite and strictly positive; name the first bad row."""
    bad = ~(np.isfinite(values) & (values > 0))
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    v = values[i]
    what = (
        "NaN (missing)"
        if np.isnan(v)
        else "infinite"
        if np.isinf(v)
        else "zero"
        if v == 0
        else f"negative ({v:g})"
    )
    raise DataError(
        path,
        f"{column} is {what} at {_row(i, path)} ({pd.Timestamp(ts[i])}); prices must be "
        f"finite and positive ({int(bad.sum())} bad {column} value(s) in all)",
    )


def _check_volume(values: np.ndarray, ts: np.ndarray, path: Path) -> None:
    """Volume may be missing (NaN) but never negative or infinite."""
    bad = np.isinf(values) | (values < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            path,
            f"volume is {values[i]:g} at {_row(i, path)} ({pd.Timestamp(ts[i])}); "
            "volume must be finite and non-negative",
        )


def _check_ohlc(columns: Mapping[str, np.ndarray], ts: np.ndarray, path: Path) -> None:
    """Refuse bars whose prices contradict each other (see the module docstring); name the
    first such row, its values and how many rows are off."""
    close = columns["close"]
    open_, high, low = (columns.get(c) for c in ("open", "high", "low"))
    top = close if open_ is None else np.maximum(open_, close)
    bottom = close if open_ is None else np.minimum(open_, close)
    top_name = "close" if open_ is None else "max(open, close)"
    bottom_name = "close" if open_ is None else "min(open, close)"
    rules: list[tuple[np.ndarray, Callable[[int], str]]] = []
    if high is not None:
        rules.append(
            (
                high < top * (1 - OHLC_TOLERANCE),
                lambda i: f"high {high[i]:g} is below {top_name} {top[i]:g}",
            )
        )
    if low is not None:
        rules.append(
            (
                low > bottom * (1 + OHLC_TOLERANCE),
                lambda i: f"low {low[i]:g} is above {bottom_name} {bottom[i]:g}",
            )
        )
    if high is not None and low is not None:
        rules.append(
            (
                high < low * (1 - OHLC_TOLERANCE),
                lambda i: f"high {high[i]:g} is below low {low[i]:g}",
            )
        )
    upper = top if high is None else high
    lower = bottom if low is None else low
    rules.append(
        (
            upper > lower * MAX_BAR_RANGE,
            lambda i: (
                f"the bar spans {upper[i] / lower[i]:.3g}x (high {upper[i]:g}, low "
                f"{lower[i]:g}), more than {MAX_BAR_RANGE:g}x: a corrupt value"
            ),
        )
    )
    if len(close) >= 3:
        up, back = close[1:-1] / close[:-2], close[2:] / close[1:-1]
        spike = np.zeros(len(close), dtype=bool)
        spike[1:-1] = ((up > MAX_BAR_RANGE) & (back < 1 / MAX_BAR_RANGE)) | (
            (up < 1 / MAX_BAR_RANGE) & (back > MAX_BAR_RANGE)
        )
        rules.append(
            (
                spike,
                lambda i: (
                    f"close {close[i]:g} jumps from {close[i - 1]:g} and back to "
                    f"{close[i + 1]:g} within one bar each: a corrupt value"
                ),
            )
        )
    bad = np.zeros(len(close), dtype=bool)
    for mask, _ in rules:
        bad |= mask
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    why = next(describe(i) for mask, describe in rules if mask[i])
    raise DataError(
        path,
        f"prices contradict each other at {_row(i, path)} ({pd.Timestamp(ts[i])}): {why} "
        f"({int(bad.sum())} such row(s); tolerance {OHLC_TOLERANCE:.1%})",
    )


def read_bars(path: str | Path) -> pd.DataFrame:
    """Read and validate one bar file (no row-count rule: that is the universe's); see
    :func:`read_bar_file`."""
    return read_bar_file(path)[0]


def read_bar_file(path: str | Path) -> tuple[pd.DataFrame, str | None]:
    """Read and validate one bar file (no row-count rule: that is the universe's), and say
    which time zone its timestamps carried (None: none; they are UTC now).

    Returns ``timestamp`` (datetime64[ns], tz-naive), the OHLCV columns present, then the
    user's numeric columns in file order, all float64, rows ascending. Non-numeric extra
    columns are dropped with a log line; infinite values in user columns become NaN (logged).
    """
    path = Path(path)
    raw = _read_raw(path)
    if len(raw) == 0:
        raise DataError(path, "empty file: a header but no data rows")
    raw.columns = [str(c) for c in raw.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        shown = ", ".join(list(raw.columns)[:12]) + (" ..." if raw.shape[1] > 12 else "")
        raise DataError(
            path,
            f"missing required column(s) {', '.join(repr(c) for c in missing)} "
            f"(columns are lower-case; found: {shown})",
        )
    ts, zone = _parse_timestamps(raw["timestamp"], path)
    _check_order(ts, path)

    columns: dict[str, np.ndarray] = {"timestamp": ts}
    for name in OHLCV_COLUMNS:
        if name not in raw.columns:
            continue
        values = _numeric(raw[name], name, path)
        if name in PRICE_COLUMNS:
            _check_prices(values, name, ts, path)
        else:
            _check_volume(values, ts, path)
        columns[name] = values
    _check_ohlc(columns, ts, path)

    ignored = []
    for name in raw.columns:
        if name in STANDARD_COLUMNS:
            continue
        col = raw[name]
        if col.dtype.kind not in "iufb":
            ignored.append(name)
            continue
        values = col.to_numpy(dtype=np.float64)
        inf = np.isinf(values)
        if inf.any():
            log.warning(
                "%s: user column %r has %d infinite value(s); treated as missing (NaN)",
                path,
                name,
                int(inf.sum()),
            )
            values = np.where(inf, np.nan, values)
        columns[name] = values
    if ignored:
        log.info("%s: ignoring non-numeric column(s) %s", path, ", ".join(map(repr, ignored)))
    return pd.DataFrame(columns), zone  # consolidated: one float64 block, fast subsets


# --------------------------------------------------------------------------- universe


def load_universe(data_dir: str | Path, settings: Settings | None = None) -> Universe:
    """Discover, read and validate every bar file of ``data_dir``; skip short histories.

    A symbol with fewer than ``settings.min_rows`` rows is skipped (WARNING with the
    reason); if none is left, :class:`DataError` lists the symbols and their row counts.
    """
    settings = settings or Settings()
    folder = Path(data_dir)
    files = discover(folder)
    bars: dict[str, pd.DataFrame] = {}
    kept: list[SymbolFile] = []
    skipped: list[Skipped] = []
    short_rows: list[str] = []
    zones: dict[str, str | None] = {}
    for sf in files:
        frame, zones[sf.symbol] = read_bar_file(sf.path)
        if len(frame) < settings.min_rows:
            reason = f"{sf.symbol}: {len(frame)} rows, fewer than min_rows={settings.min_rows}"
            log.warning("%s: skipped (%s)", sf.path, reason)
            skipped.append(Skipped(symbol=sf.symbol, path=str(sf.path), reason=reason))
            short_rows.append(f"{sf.path.name} ({len(frame)} rows)")
            continue
        bars[sf.symbol] = frame
        kept.append(sf)
    if not kept:
        counts = _short_list(short_rows)
        raise DataError(
            folder, f"no symbol has at least min_rows={settings.min_rows} rows: {counts}"
        )
    notes = check_clocks([(sf.path, bars[sf.symbol]["timestamp"], zones[sf.symbol]) for sf in kept])
    universe = Universe(
        symbols=tuple(sf.symbol for sf in kept),
        files=tuple(kept),
        bars=MappingProxyType(bars),
        skipped=tuple(skipped),
        data_dir=folder,
        notes=notes,
    )
    for note in notes:
        log.warning("%s: %s", folder, note)
    log.info(
        "%s: loaded %d symbol(s), skipped %d; batch %s",
        folder,
        len(kept),
        len(skipped),
        universe.batch,
    )
    return universe


def check_clocks(
    files: Sequence[tuple[Path, pd.Series | np.ndarray, str | None]],
) -> tuple[str, ...]:
    """Refuse a universe whose files are not on one clock; return notes for the user.

    ``files``: each file's path, its (UTC, naive) timestamps and the zone it carried
    (:func:`read_bar_file`). Files with and without zones are refused, naming the odd one
    out; a file whose timestamps coincide with the others' less often than
    :data:`MIN_SHARED_TIMESTAMPS` where their spans overlap is refused (another time zone or
    bar time). Zoned files give one note: they were converted to UTC.
    """
    zoned = [(p, z) for p, _, z in files if z is not None]
    naive = [p for p, _, z in files if z is None]
    if zoned and naive:
        if len(zoned) <= len(naive):
            odd, zone = zoned[0]
            raise DataError(
                odd,
                f"timestamps carry a time zone ({zone}) but {len(naive)} other file(s) "
                f"({_short_list(p.name for p in naive)}) have none; a time without a zone "
                "cannot be put on the same clock: write every file's timestamps with their "
                "zone (they are converted to UTC), or every file's without",
            )
        raise DataError(
            naive[0],
            f"timestamps have no time zone but {len(zoned)} other file(s) "
            f"({_short_list(f'{p.name} ({z})' for p, z in zoned)}) carry one; a time without "
            "a zone cannot be put on the same clock: write every file's timestamps with their "
            "zone (they are converted to UTC), or every file's without",
        )
    _check_shared_timestamps([(p, np.asarray(ts, dtype="datetime64[ns]")) for p, ts, _ in files])
    if not zoned:
        return ()
    shown = _short_list(sorted({z for _, z in zoned}))
    return (f"timestamps of {len(zoned)} file(s) with time zones ({shown}) converted to UTC",)


def _check_shared_timestamps(files: Sequence[tuple[Path, np.ndarray]]) -> None:
    if len(files) < 2:
        return
    every = np.concatenate([ts for _, ts in files])
    stamps, counts = np.unique(every, return_counts=True)  # a file holds each stamp once
    firsts = np.array([ts[0] for _, ts in files])
    lasts = np.array([ts[-1] for _, ts in files])
    for k, (path, ts) in enumerate(files):
        others = np.arange(len(files)) != k
        lo, hi = max(ts[0], firsts[others].min()), min(ts[-1], lasts[others].max())
        inside = ts[(ts >= lo) & (ts <= hi)]
        if len(inside) < _MIN_OVERLAP:
            continue
        shared = counts[np.searchsorted(stamps, inside)] >= 2
        if shared.mean() >= MIN_SHARED_TIMESTAMPS:
            continue
        other = np.sort(np.concatenate([t for j, (_, t) in enumerate(files) if j != k]))
        at = np.searchsorted(other, inside[0])
        near = other[max(at - 1, 0) : at + 1]  # the others' stamps either side of ours
        theirs = pd.Timestamp(near[np.argmin(np.abs(near - inside[0]))])
        raise DataError(
            path,
            f"only {int(shared.sum())} of its {len(inside)} timestamps between "
            f"{pd.Timestamp(lo)} and {pd.Timestamp(hi)} coincide with another file's (the "
            f"first is {pd.Timestamp(inside[0])} here, the nearest {theirs} in the others): the files are "
            "on different clocks (time zones or bar times) and would share no cross-section; "
            "write every file's timestamps on one clock",
        )


def _short_list(items: Iterable[str]) -> str:
    items = list(items)
    more = len(items) - _MAX_LISTED
    return ", ".join(items[:_MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


# --------------------------------------------------------------------------- writing


def bar_file_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    """Encode a bar frame as the bytes of a ``.parquet`` or ``.csv`` bar file, deterministically.

    Parquet: pyarrow, no pandas schema metadata, no dictionary encoding, snappy; the same
    frame gives the same bytes (for one pyarrow version). CSV: ``\\n`` line ends, no index.
    Callers write the bytes through :mod:`cohortflow.fsio`.
    """
    if fmt == "parquet":
        table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
        buf = io.BytesIO()
        pq.write_table(table, buf, use_dictionary=False, compression="snappy")
        return buf.getvalue()
    if fmt == "csv":
        return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
    raise ValueError(f"unknown bar file format {fmt!r}; use 'parquet' or 'csv'")
