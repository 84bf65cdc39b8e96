"""Features and targets: recomputable feature specs, user columns, forward returns -> Panel.

Every standard feature is strictly causal: its value at bar t reads bars <= t only, so
recomputing it on bars truncated at t gives the same value (the look-ahead test in
``leakage.py`` relies on exactly this, and so do the tests). Each spec declares its
``lookback``: the index of its first defined value on a gap-free series, i.e. the bars
of warm-up; the panel drops the first ``max(lookback)`` bars of every symbol.

Rolling sums, means and standard deviations use running sums (``np.cumsum``, strictly left
to right, O(bars)); max/min use the windows themselves. Either way the value at t is the
same bit for bit whatever bars follow t, so the look-ahead test may compare exactly.

Names: returns are log returns (``ret_k``); targets are simple returns
(``fwd_ret_h = close[t+h] / close[t] - 1``) with ``label_end_h`` = the timestamp h bars
later for the same symbol (NaT at the end), as the purged splitters expect.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from cohortflow.bars import OHLCV_COLUMNS, Universe
from cohortflow.errors import DataError
from cohortflow.settings import Settings

log = logging.getLogger(__name__)

DEMO_LEAK = "demo_leak_centered_ret"
DEMO_LEAK_HALF_WIDTH = 5  # k: the demo leak averages returns t-k .. t+k (2k+1 bars)
_TARGET_RE = re.compile(r"^(fwd_ret|label_end)_\d+$")
_NON_FEATURE_COLUMNS = frozenset({"timestamp", *OHLCV_COLUMNS})


@dataclass(frozen=True)
class FeatureSpec:
    """A recomputable feature of one symbol's bars.

    ``compute(bars)`` returns a float64 Series on ``bars.index``; ``needs`` are the bar
    columns it reads; ``lookback`` is its warm-up in bars (first defined row).
    ``kernel`` (optional) is the same computation on plain arrays, ``{column: float64
    array}`` -> float64 array; ``compute`` wraps it. :func:`build_panel` calls it directly
    to skip pandas' per-call overhead (hundreds of thousands of calls at 500 symbols);
    specs without one are computed through ``compute``.
    """

    name: str
    needs: tuple[str, ...]
    compute: Callable[[pd.DataFrame], pd.Series]
    lookback: int
    kernel: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None


# --------------------------------------------------------------------------- numpy kernels


Bars = pd.DataFrame | Mapping[str, np.ndarray]  # what a kernel reads: bars or their arrays


def _col(bars: Bars, name: str) -> np.ndarray:
    return np.asarray(bars[name], dtype=np.float64)


def _lag(x: np.ndarray, k: int) -> np.ndarray:
    """x shifted k bars later (x[t-k] at t), NaN where t < k."""
    out = np.full(x.shape, np.nan)
    if 0 < k < len(x):
        out[k:] = x[:-k]
    return out


def _rolling(x: np.ndarray, window: int, reduce: Callable[..., np.ndarray]) -> np.ndarray:
    """reduce() over the trailing ``window`` bars ending at t, window by window; NaN until
    the window is full (and wherever it holds a NaN). O(bars x window): for max/min."""
    out = np.full(x.shape, np.nan)
    if len(x) >= window:
        out[window - 1 :] = reduce(sliding_window_view(x, window), axis=-1)
    return out


def _sum(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing ``window``-bar sum from a running sum, O(bars); NaN until the window is full
    and wherever it holds a non-finite value.

    ``np.cumsum`` accumulates strictly left to right, so the value at t is the same bit for
    bit whatever follows t (truncation-exact, as the look-ahead test requires).
    """
    bad = ~np.isfinite(x)
    run = np.cumsum(np.where(bad, 0.0, x))
    n_bad = np.cumsum(bad)
    out = np.full(x.shape, np.nan)
    if len(x) >= window:
        total = run[window - 1 :].copy()
        total[1:] -= run[: len(x) - window]
        count = n_bad[window - 1 :].copy()
        count[1:] -= n_bad[: len(x) - window]
        out[window - 1 :] = np.where(count > 0, np.nan, total)
    return out


def _mean(x: np.ndarray, window: int) -> np.ndarray:
    return _sum(x, window) / window


def _std(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing sample standard deviation (ddof=1) from running sums of x and x^2.

    x is first centred on its first finite value (a past value, so still causal) to keep the
    sums small and the subtraction accurate; rounding can leave a variance of ~1e-17 where the
    window is constant, and a tiny negative one is clipped to 0.
    """
    finite = np.isfinite(x)
    ref = x[np.argmax(finite)] if finite.any() else 0.0
    d = x - ref
    s1 = _sum(d, window)
    s2 = _sum(d * d, window)
    var = (s2 - s1 * s1 / window) / (window - 1)
    return np.sqrt(np.maximum(var, 0.0))


def _safe_div(num: np.ndarray, den: np.ndarray, where_zero: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where(den == 0, where_zero, out)


def _log_ret(close: np.ndarray, k: int) -> np.ndarray:
    return np.log(close / _lag(close, k))


def _series(bars: pd.DataFrame, values: np.ndarray, name: str) -> pd.Series:
    return pd.Series(np.asarray(values, dtype=np.float64), index=bars.index, name=name, copy=False)


# --------------------------------------------------------------------------- feature kernels


def _ret(k: int) -> Callable[[Bars], np.ndarray]:
    return lambda b: _log_ret(_col(b, "close"), k)


def _vol(window: int) -> Callable[[Bars], np.ndarray]:
    return lambda b: _std(_log_ret(_col(b, "close"), 1), window)


def _ma_ratio(window: int) -> Callable[[Bars], np.ndarray]:
    def f(b: Bars) -> np.ndarray:
        close = _col(b, "close")
        return close / _mean(close, window) - 1.0

    return f


def _mom_20_60(b: Bars) -> np.ndarray:
    # moving-average crossover: the 20-bar mean price over the 60-bar mean, minus 1
    close = _col(b, "close")
    return _mean(close, 20) / _mean(close, 60) - 1.0


def _rsi_14(b: Bars) -> np.ndarray:
    # Cutler's RSI (simple means, not Wilder's smoothing): a finite window keeps it exact
    # under truncation; 50 when the window has no price change at all
    diff = np.diff(_col(b, "close"), prepend=np.nan)
    gain = _sum(np.maximum(diff, 0.0), 14)
    loss = _sum(np.maximum(-diff, 0.0), 14)
    return 100.0 * _safe_div(gain, gain + loss, where_zero=0.5)


def _dist(reduce: Callable[..., np.ndarray]) -> Callable[[Bars], np.ndarray]:
    def f(b: Bars) -> np.ndarray:
        close = _col(b, "close")
        return close / _rolling(close, 20, reduce) - 1.0

    return f


def _hl_range(b: Bars) -> np.ndarray:
    return np.log(_col(b, "high") / _col(b, "low"))


def _parkinson_vol_20(b: Bars) -> np.ndarray:
    hl = np.log(_col(b, "high") / _col(b, "low"))
    return np.sqrt(_mean(hl * hl, 20) / (4.0 * np.log(2.0)))


def _close_loc(b: Bars) -> np.ndarray:
    low = _col(b, "low")
    return _safe_div(_col(b, "close") - low, _col(b, "high") - low, where_zero=0.5)


def _gap_open(b: Bars) -> np.ndarray:
    return np.log(_col(b, "open") / _lag(_col(b, "close"), 1))


def _intraday_ret(b: Bars) -> np.ndarray:
    return np.log(_col(b, "close") / _col(b, "open"))


def _logvol_z_20(b: Bars) -> np.ndarray:
    lv = np.log1p(_col(b, "volume"))
    sd = _std(lv, 20)
    # a window of constant volume has no spread: z = 0 (1e-8 in log-volume units is noise)
    return _safe_div(lv - _mean(lv, 20), np.where(sd < 1e-8, 0.0, sd), where_zero=0.0)


def _volume_ratio_5_20(b: Bars) -> np.ndarray:
    v = _col(b, "volume")
    return _safe_div(_mean(v, 5), _mean(v, 20), where_zero=np.nan)


def _dollar_vol_chg_5(b: Bars) -> np.ndarray:
    # log change of the 5-bar mean dollar volume against the 5 bars before it
    dv = np.log1p(_mean(_col(b, "close") * _col(b, "volume"), 5))
    return dv - _lag(dv, 5)


def _demo_leak(b: Bars) -> np.ndarray:
    # CENTERED mean of 1-bar log returns t-k .. t+k: reads k bars of the future on purpose
    k = DEMO_LEAK_HALF_WIDTH
    r = _log_ret(_col(b, "close"), 1)
    out = np.full(r.shape, np.nan)
    if len(r) >= 2 * k + 1:
        out[k : len(r) - k] = sliding_window_view(r, 2 * k + 1).mean(axis=-1)
    return out


def _spec(
    name: str, needs: tuple[str, ...], kernel: Callable[[Bars], np.ndarray], lookback: int
) -> FeatureSpec:
    def compute(bars: pd.DataFrame) -> pd.Series:
        return _series(bars, kernel(bars), name)

    compute.__name__ = f"compute_{name}"
    compute.__qualname__ = compute.__name__
    return FeatureSpec(name=name, needs=needs, compute=compute, lookback=lookback, kernel=kernel)


_C = ("close",)
_HLC = ("high", "low", "close")
_OC = ("open", "close")
_V = ("volume",)
_CV = ("close", "volume")

STANDARD_FEATURES: tuple[FeatureSpec, ...] = (
    *(_spec(f"ret_{k}", _C, _ret(k), k) for k in (1, 5, 10, 20, 60)),
    *(_spec(f"vol_{w}", _C, _vol(w), w) for w in (10, 20, 60)),
    _spec("mom_20_60", _C, _mom_20_60, 59),
    _spec("ma_ratio_10", _C, _ma_ratio(10), 9),
    _spec("ma_ratio_50", _C, _ma_ratio(50), 49),
    _spec("rsi_14", _C, _rsi_14, 14),
    _spec("dist_high_20", _C, _dist(np.max), 19),
    _spec("dist_low_20", _C, _dist(np.min), 19),
    _spec("hl_range", ("high", "low"), _hl_range, 0),
    _spec("parkinson_vol_20", ("high", "low"), _parkinson_vol_20, 19),
    _spec("close_loc", _HLC, _close_loc, 0),
    _spec("gap_open", _OC, _gap_open, 1),
    _spec("intraday_ret", _OC, _intraday_ret, 0),
    _spec("logvol_z_20", _V, _logvol_z_20, 19),
    _spec("volume_ratio_5_20", _V, _volume_ratio_5_20, 19),
    _spec("dollar_vol_chg_5", _CV, _dollar_vol_chg_5, 9),
)
STANDARD_NAMES: frozenset[str] = frozenset(s.name for s in STANDARD_FEATURES)
DEMO_LEAK_SPEC = _spec(DEMO_LEAK, _C, _demo_leak, DEMO_LEAK_HALF_WIDTH + 1)


# --------------------------------------------------------------------------- public helpers


def feature_specs(
    columns: Iterable[str], settings: Settings | None = None
) -> tuple[FeatureSpec, ...]:
    """The standard specs whose ``needs`` are all in ``columns`` (+ the demo leak when
    ``settings.demo_leak`` is set)."""
    present = set(columns)
    specs = [s for s in STANDARD_FEATURES if set(s.needs) <= present]
    if settings is not None and settings.demo_leak and set(DEMO_LEAK_SPEC.needs) <= present:
        specs.append(DEMO_LEAK_SPEC)
    return tuple(specs)


def user_columns(bars: pd.DataFrame) -> tuple[str, ...]:
    """Numeric columns other than timestamp/open/high/low/close/volume, in frame order."""
    return tuple(
        str(c)
        for c, dtype in bars.dtypes.items()
        if c not in _NON_FEATURE_COLUMNS and pd.api.types.is_numeric_dtype(dtype)
    )


def target_name(h: int) -> str:
    """``fwd_ret_{h}``: the simple return over the next h bars."""
    return f"fwd_ret_{int(h)}"


def label_end_name(h: int) -> str:
    """``label_end_{h}``: the timestamp of the bar h bars later (when the label is known)."""
    return f"label_end_{int(h)}"


def warmup_bars(specs: Iterable[FeatureSpec]) -> int:
    """Bars dropped at the start of each symbol: the largest lookback (0 without specs)."""
    return max((s.lookback for s in specs), default=0)


def _values(spec: FeatureSpec, bars: pd.DataFrame, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """One spec on one symbol as a float64 array: through its kernel when it has one."""
    if spec.kernel is not None:
        return np.asarray(spec.kernel(arrays), dtype=np.float64)
    return spec.compute(bars).to_numpy(dtype=np.float64)


def _arrays(bars: pd.DataFrame, specs: Iterable[FeatureSpec]) -> dict[str, np.ndarray]:
    needed = sorted({c for s in specs for c in s.needs})
    return {c: bars[c].to_numpy(dtype=np.float64) for c in needed}


def compute_features(bars: pd.DataFrame, specs: Iterable[FeatureSpec]) -> pd.DataFrame:
    """One symbol's features: a float64 column per spec, on ``bars.index``."""
    specs = tuple(specs)
    arrays = _arrays(bars, specs)
    columns = {s.name: _values(s, bars, arrays) for s in specs}
    return pd.DataFrame(columns, index=bars.index)


def _forward(close: np.ndarray, ts: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
    """fwd_ret_h and label_end_h of one symbol as numpy arrays (NaN / NaT at the end)."""
    ret = np.full(close.shape, np.nan)
    end = np.full(ts.shape, np.datetime64("NaT"), dtype="datetime64[ns]")
    if h < len(close):
        ret[:-h] = close[h:] / close[:-h] - 1.0
        end[:-h] = ts[h:]
    return ret, end


def add_targets(frame: pd.DataFrame, bars: pd.DataFrame, horizons: Iterable[int]) -> pd.DataFrame:
    """Add ``fwd_ret_{h}`` (close[t+h]/close[t] - 1) and ``label_end_{h}`` (timestamp[t+h],
    NaT at the end) for one symbol to ``frame`` (rows aligned with ``bars``); returns it."""
    close = _col(bars, "close")
    ts = bars["timestamp"].to_numpy(dtype="datetime64[ns]")
    for h in horizons:
        ret, end = _forward(close, ts, int(h))
        frame[target_name(h)] = ret
        frame[label_end_name(h)] = end
    return frame


# --------------------------------------------------------------------------- panel


@dataclass(frozen=True, eq=False)
class Panel:
    """The feature/target panel of a universe (docs/ARCHITECTURE.md, "panel").

    ``frame``: one row per (timestamp, symbol), sorted by timestamp then symbol, index
    reset; ``timestamp`` datetime64[ns]; ``symbol`` a pandas Categorical whose categories
    are the universe's sorted symbols (chosen over str: built from integer codes without
    touching strings, 1-2 bytes a row instead of an Arrow string, and group-bys need no
    hashing; ``== "AAPL"``, ``.astype(str)`` and parquet round trips work as for str);
    feature columns (``computed`` then ``user``) float64; ``fwd_ret_{h}`` float64 (NaN where
    the bar h later does not exist); ``label_end_{h}`` datetime64[ns] (NaT there).
    ``specs`` are the feature specs behind ``computed`` (for recomputation).
    Compared by identity (it holds a DataFrame).
    """

    frame: pd.DataFrame
    computed: tuple[str, ...]
    user: tuple[str, ...]
    horizons: tuple[int, ...]
    specs: tuple[FeatureSpec, ...] = ()

    @property
    def features(self) -> tuple[str, ...]:
        return self.computed + self.user

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(target_name(h) for h in self.horizons)

    @property
    def label_ends(self) -> tuple[str, ...]:
        return tuple(label_end_name(h) for h in self.horizons)


def _collision(name: str) -> str | None:
    if name in STANDARD_NAMES or name == DEMO_LEAK:
        return "a standard feature name"
    if _TARGET_RE.match(name):
        return "a target column name"
    if name == "symbol":
        return "the panel's symbol column"
    return None


def check_user_columns(universe: Universe) -> None:
    """Refuse a user column whose name is a standard feature's, a target's
    (``fwd_ret_{h}``), a label end's (``label_end_{h}``) or the panel's ``symbol``: the
    first such column names its file. Cheap (column names only): run before anything is
    written, and again by :func:`build_panel`."""
    for symbol in universe.symbols:
        for name in user_columns(universe.bars[symbol]):
            kind = _collision(name)
            if kind is not None:
                raise DataError(
                    universe.path_of(symbol),
                    f"user column {name!r} collides with {kind}; rename the column",
                )


def _panel_user_columns(universe: Universe) -> tuple[str, ...]:
    """The union of the user columns (first-appearance order over sorted symbols), after
    refusing any that collides with a standard feature or target name."""
    check_user_columns(universe)
    seen: dict[str, list[str]] = {}
    for symbol in universe.symbols:
        for name in user_columns(universe.bars[symbol]):
            seen.setdefault(name, []).append(symbol)
    partial = {n: syms for n, syms in seen.items() if len(syms) < len(universe.symbols)}
    for name, syms in partial.items():
        missing = sorted(set(universe.symbols) - set(syms))
        log.warning(
            "user column %r is missing from %d file(s) (%s); it is NaN for those symbols",
            name,
            len(missing),
            ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
        )
    return tuple(seen)


def _common_columns(bars: Mapping[str, pd.DataFrame]) -> set[str]:
    frames = list(bars.values())
    common = set(frames[0].columns) if frames else set()
    for frame in frames[1:]:
        common &= set(frame.columns)
    return common


class _SymbolMajor:
    """The panel's float columns in symbol-major order, held in chunks of >= 64 MiB.

    Chunks that size are always mmap'ed by the allocator, so each one goes back to the OS
    as soon as it is gathered into panel order: the peak stays near one copy of the panel
    plus one chunk, instead of two copies.
    """

    CHUNK_BYTES = 64 << 20

    def __init__(self, n_columns: int, n_rows: int) -> None:
        self.per_chunk = max(1, self.CHUNK_BYTES // max(8 * n_rows, 1))
        self.n_columns = n_columns
        self.chunks: list[np.ndarray | None] = [
            np.empty((min(self.per_chunk, n_columns - k), n_rows), dtype=np.float64)
            for k in range(0, n_columns, self.per_chunk)
        ]

    def __getitem__(self, j: int) -> np.ndarray:
        chunk = self.chunks[j // self.per_chunk]
        assert chunk is not None, "column already gathered"
        return chunk[j % self.per_chunk]

    def gather(self, order: np.ndarray) -> np.ndarray:
        """All columns reordered by ``order`` into one (columns, rows) block; frees the chunks."""
        block = np.empty((self.n_columns, order.size), dtype=np.float64)
        for k, chunk in enumerate(self.chunks):
            assert chunk is not None, "already gathered"
            for i in range(chunk.shape[0]):
                np.take(chunk[i], order, out=block[k * self.per_chunk + i])
            self.chunks[k] = None
            del chunk
        return block


def build_panel(universe: Universe, settings: Settings | None = None) -> Panel:
    """Features, user columns and targets of every symbol, as one panel.

    Standard features use the bar columns present in *every* file (so a feature exists for
    all symbols or none); user columns are the union (NaN where a file lacks one, logged).
    The first ``max(lookback)`` bars of each symbol are dropped (warm-up). Vectorised per
    symbol into symbol-major columns, then one gather per column into a single float64
    block in panel order.
    """
    settings = settings or Settings()
    if not universe.symbols:
        raise DataError(universe.data_dir, "empty universe: no symbol to build a panel from")
    common = _common_columns(universe.bars)
    specs = feature_specs(common, settings)
    absent = sorted(set(OHLCV_COLUMNS) - common)
    if absent:
        log.info("columns %s are not in every file: features needing them are skipped", absent)
    user = _panel_user_columns(universe)
    horizons = tuple(int(h) for h in settings.horizons)
    computed = tuple(s.name for s in specs)
    warmup = warmup_bars(specs)

    # per symbol: rows kept after the warm-up
    keep = {s: max(len(universe.bars[s]) - warmup, 0) for s in universe.symbols}
    for symbol in [s for s, k in keep.items() if k == 0]:
        log.warning(
            "%s: %d rows, not more than the %d-bar warm-up; no panel rows",
            symbol,
            len(universe.bars[symbol]),
            warmup,
        )
    total = sum(keep.values())
    if total == 0:
        raise DataError(universe.data_dir, f"no symbol has more rows than the {warmup}-bar warm-up")

    # 1) every column in symbol-major order, one contiguous slice per symbol (cheap writes)
    float_names = (*computed, *user, *(target_name(h) for h in horizons))
    columns = _SymbolMajor(len(float_names), total)
    ends = [np.empty(total, dtype=np.int64) for _ in horizons]
    stamps = np.empty(total, dtype=np.int64)
    codes = np.empty(total, dtype=np.int32)
    user_pos = {name: len(computed) + j for j, name in enumerate(user)}
    target_pos = len(computed) + len(user)
    start = 0
    for code, symbol in enumerate(universe.symbols):
        n = keep[symbol]
        if n == 0:
            continue
        rows = slice(start, start + n)
        bars = universe.bars[symbol]
        arrays = _arrays(bars, specs)
        for j, spec in enumerate(specs):
            columns[j][rows] = _values(spec, bars, arrays)[warmup:]
        present = set(bars.columns)
        have = [name for name in user if name in present]
        for name in user:
            if name not in present:
                columns[user_pos[name]][rows] = np.nan
        if have:
            matrix = bars[have].to_numpy(dtype=np.float64)  # (bars, columns); one pandas call
            for i, name in enumerate(have):
                columns[user_pos[name]][rows] = matrix[warmup:, i]
        close = _col(bars, "close")
        ts = bars["timestamp"].to_numpy(dtype="datetime64[ns]")
        for i, h in enumerate(horizons):
            ret, end = _forward(close, ts, h)
            columns[target_pos + i][rows] = ret[warmup:]
            ends[i][rows] = end[warmup:].view(np.int64)
        stamps[rows] = ts[warmup:].view(np.int64)
        codes[rows] = code
        start += n

    # 2) panel order (timestamp, then symbol) by one gather per column: it reads one stream
    # per symbol, cache-friendly, unlike scattering symbol by symbol (2-3x slower)
    order = np.lexsort((codes, stamps))
    block = columns.gather(order)  # row j = column j

    # one float64 block, no copy (pandas stores it transposed, i.e. as ``block``)
    frame = pd.DataFrame(block.T, columns=list(float_names), copy=False)
    frame.insert(0, "timestamp", stamps[order].view("datetime64[ns]"))
    frame.insert(
        1,
        "symbol",
        pd.Categorical.from_codes(codes[order], categories=list(universe.symbols)),
    )
    for i, h in enumerate(horizons):
        frame[label_end_name(h)] = ends[i][order].view("datetime64[ns]")
    log.info(
        "panel: %d rows x %d symbols, %d computed + %d user features, horizons %s, warm-up %d bars",
        total,
        sum(1 for k in keep.values() if k),
        len(computed),
        len(user),
        horizons,
        warmup,
    )
    return Panel(frame=frame, computed=computed, user=user, horizons=horizons, specs=specs)
