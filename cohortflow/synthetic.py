"""A seeded bar generator with known truth: real signals, pure noise and planted leaks.

One symbol's 1-bar log return from t-1 to t is

    r[t] = m[t] + b_a * sig_a[t-H] + b_b * sig_b[t-H] + e[t]

with a market factor ``m`` shared by all symbols, idiosyncratic noise ``e`` and the user
columns ``sig_a``, ``sig_b`` (i.i.d. N(0, 1), known at t) whose effect lands on the single
return from t+H-1 to t+H (H = ``signal_horizon``). ``fwd_ret_H`` holds that return, so it is
the most predictable target; shorter horizons hold none of it (rank IC ~ 0) and a horizon
h > H dilutes it (IC shrinks like sqrt(H/h)). The betas are solved so that each signal's
pooled Pearson IC with ``fwd_ret_H`` is 0.15 (sig_a) and 0.12 (sig_b) -- honest strengths;
the rank IC comes out slightly lower. For very long horizons the targets are scaled down
(a single-bar effect cannot carry more).

Noise: ``noise_00`` ... AR(1) series with persistence from 0 to 0.95, unrelated to prices.
Planted leaks: ``leak_future`` = the realised ``fwd_ret_H`` plus noise (rank IC ~ 0.75) and
``leak_centered`` = a centered rolling mean of 1-bar log returns over 2H+1 bars.

Optional leak kinds (``leak_kinds=``, off by default; each adds one named user column, drawn
from its own random stream, so the frames without them are byte-identical to before):

- ``"shifted_ret_5"`` -> ``leak_shifted_ret_5``: the 5-bar log return shifted one bar back
  (``log(c[t+1] / c[t-4])``): a one-row misalignment. Rank IC ~0.2 with ``fwd_ret_5`` but
  ~0.45 with the next bar's return alone.
- ``"one_symbol"`` -> ``leak_one_symbol``: in ONE symbol's file (``SYN03``, the shortest
  history; the last symbol if fewer) the realised ``fwd_ret_5`` plus noise, at a Pearson
  correlation of exactly 0.3 with it (rank IC ~0.29); honest N(0, 1) noise in every other
  file.
- ``"centered_5"`` -> ``leak_centered_5``: a centered mean of 1-bar log returns over
  t-5 .. t+5 (the demo leak's window as a user column); tested at h = 20 it scores a rank
  IC of only ~0.3 with ``fwd_ret_20``.
- ``"vol_next_5"`` -> ``leak_vol_next_5``: the standard deviation of the next 5 bars'
  log returns (a peek at future volatility: no signed IC, only an IC with |return|).

Symbols ``SYN00`` ... on business days from ``start``; every 4th symbol starting at SYN01
starts n_bars // 6 later, every 4th from SYN03 n_bars // 3 later (unequal histories).
Random streams come from ``SeedSequence(seed, spawn_key=...)`` per symbol, so a symbol's
data does not depend on how many symbols are generated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from cohortflow.bars import bar_file_bytes
from cohortflow.fsio import atomic_write_bytes
from cohortflow.names import validate_symbol

log = logging.getLogger(__name__)

SIGNAL_FEATURES = ("sig_a", "sig_b")
LEAK_FEATURES = ("leak_future", "leak_centered")
_TARGET_IC = np.array([0.15, 0.12])  # pooled Pearson IC of sig_a, sig_b with fwd_ret_H
_MAX_EXPLAINED = 0.5  # cap on H * sum(IC^2): the share of one bar's variance from signals
SIGMA_MARKET = 0.007  # daily log-return sd of the market factor
SIGMA_IDIO = 0.012  # daily log-return sd of the idiosyncratic noise
_LEAK_NOISE = 0.8  # leak_future noise sd, in units of sd(fwd_ret_H)
# the optional leak kinds and the column each adds (module docstring)
LEAK_KINDS = {
    "shifted_ret_5": "leak_shifted_ret_5",
    "one_symbol": "leak_one_symbol",
    "centered_5": "leak_centered_5",
    "vol_next_5": "leak_vol_next_5",
}
ONE_SYMBOL_LEAK_INDEX = 3  # SYN03: a start n_bars // 3 late, the fewest rows
_ONE_SYMBOL_IC = 0.3  # corr(leak_one_symbol, fwd_ret_5) in the leaking file


@dataclass(frozen=True)
class SyntheticTruth:
    """What the generator planted: the graph should find exactly this."""

    signal_horizon: int
    signal_features: tuple[str, ...]
    noise_features: tuple[str, ...]
    leak_features: tuple[str, ...]
    seed: int
    # symbol-scoped leaks: column -> the symbols whose files hold it (others: honest noise)
    leak_symbols: tuple[tuple[str, tuple[str, ...]], ...] = ()


def signal_betas(signal_horizon: int) -> np.ndarray:
    """Betas (log-return per unit signal) giving the target ICs of sig_a, sig_b at H.

    With V = var of one bar's return, corr(sig_i, fwd_ret_H) = b_i / sqrt(H V) and
    V = s_m^2 + s_e^2 + sum b^2: a linear system in b_i^2.
    """
    h = float(signal_horizon)
    ic = _TARGET_IC.copy()
    if h * float(np.sum(ic**2)) > _MAX_EXPLAINED:
        ic *= np.sqrt(_MAX_EXPLAINED / (h * float(np.sum(ic**2))))
    a = h * ic**2
    base = h * (SIGMA_MARKET**2 + SIGMA_IDIO**2) * ic**2
    system = np.eye(len(ic)) - np.outer(a, np.ones(len(ic)))
    return np.sqrt(np.linalg.solve(system, base))


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """Unit-variance AR(1) series of length n."""
    shocks = rng.standard_normal(n) * np.sqrt(1.0 - phi * phi)
    out = np.empty(n)
    out[0] = rng.standard_normal()
    for t in range(1, n):  # n is a few thousand: a loop is clearer than lfilter
        out[t] = phi * out[t - 1] + shocks[t]
    return out


def _history_offset(i: int, n_bars: int) -> int:
    return {1: n_bars // 6, 3: n_bars // 3}.get(i % 4, 0)


def _forward_simple(c: np.ndarray, h: int) -> np.ndarray:
    out = np.full(len(c), np.nan)
    if len(c) > h:
        out[:-h] = c[h:] / c[:-h] - 1.0
    return out


def _optional_leaks(
    frame: pd.DataFrame, kinds: tuple[str, ...], i: int, leaky_symbol: int, seed: int
) -> None:
    """Add the columns of the optional leak ``kinds`` to one symbol's frame (in place)."""
    rng = _rng(seed, 2, i)  # a stream of its own: the other columns stay as they were
    c = frame["close"].to_numpy()
    n = len(c)
    logc = np.log(c)
    ret1 = np.full(n, np.nan)
    ret1[1:] = np.diff(logc)
    for kind in kinds:
        if kind == "shifted_ret_5":
            x = np.full(n, np.nan)
            x[4 : n - 1] = logc[5:] - logc[:-5]  # at t: log(c[t+1] / c[t-4])
        elif kind == "one_symbol":
            noise = rng.standard_normal(n)
            x = noise
            if i == leaky_symbol:
                fwd = _forward_simple(c, 5)
                ok = np.isfinite(fwd)
                z = (fwd[ok] - fwd[ok].mean()) / fwd[ok].std()
                # noise orthogonal to z in this sample, so the correlation is exactly the IC
                e = noise[ok] - noise[ok].mean()
                e -= (e @ z) / (z @ z) * z
                e /= e.std()
                k = np.sqrt(1.0 / _ONE_SYMBOL_IC**2 - 1.0)  # corr(z + k * e, z) = IC
                x = noise.copy()
                x[ok] = z + k * e
        elif kind == "centered_5":
            x = np.full(n, np.nan)
            if n >= 12:
                # the mean of the 1-bar returns into bars t-5 .. t+5
                x[6 : n - 5] = sliding_window_view(ret1[1:], 11).mean(axis=-1)
        elif kind == "vol_next_5":
            x = np.full(n, np.nan)
            if n > 6:
                # the returns into bars t+1 .. t+5
                x[: n - 5] = sliding_window_view(ret1[1:], 5).std(axis=-1, ddof=1)
        else:  # validated by generate_frames
            raise AssertionError(kind)
        frame[LEAK_KINDS[kind]] = x


def _symbol_frame(
    i: int,
    market: np.ndarray,
    timestamps: pd.DatetimeIndex,
    n_noise: int,
    horizon: int,
    seed: int,
    with_ohlcv: bool,
    with_leaks: bool,
    leak_kinds: tuple[str, ...] = (),
    leaky_symbol: int = -1,
) -> pd.DataFrame:
    n = len(market)
    rng = _rng(seed, 1, i)
    beta = signal_betas(horizon)
    # signals drawn H bars before the first visible bar so every return carries its share
    sig_full = rng.standard_normal((2, n + horizon))
    r = market + beta @ sig_full[:, :n] + rng.normal(0.0, SIGMA_IDIO, n)
    r[0] = 0.0
    close = np.exp(rng.uniform(np.log(20.0), np.log(200.0)) + np.cumsum(r))
    columns: dict[str, np.ndarray] = {"timestamp": timestamps.to_numpy()}
    if with_ohlcv:
        prev = np.concatenate([[close[0]], close[:-1]])
        open_ = prev * np.exp(rng.normal(0.0, 0.003, n))
        high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.006, n)))
        low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.006, n)))
        log_volume = 13.0 + 0.3 * _ar1(rng, n, 0.9) + 15.0 * np.abs(r)
        columns |= {
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": np.round(np.exp(log_volume)).astype(np.int64),
        }
    else:
        columns["close"] = close
    columns["sig_a"] = sig_full[0, horizon:]
    columns["sig_b"] = sig_full[1, horizon:]
    for j in range(n_noise):
        phi = 0.95 * j / max(n_noise - 1, 1)
        columns[f"noise_{j:02d}"] = _ar1(rng, n, phi)
    frame = pd.DataFrame(columns)
    start = _history_offset(i, n)
    frame = frame.iloc[start:].reset_index(drop=True)
    if with_leaks:
        c = frame["close"].to_numpy()
        fwd = np.full(len(c), np.nan)
        fwd[:-horizon] = c[horizon:] / c[:-horizon] - 1.0
        scale = float(np.nanstd(fwd))
        noise = rng.normal(0.0, _LEAK_NOISE * scale, len(c))
        frame["leak_future"] = np.where(np.isnan(fwd), noise, fwd + noise)
        ret1 = np.log(c[1:] / c[:-1])
        centered = np.full(len(c), np.nan)
        w = 2 * horizon + 1
        if len(ret1) >= w:
            # the mean of ret1 over bars t-H .. t+H (ret1 index k is the return into bar k+1)
            centered[horizon + 1 : len(c) - horizon] = sliding_window_view(ret1, w).mean(axis=-1)
        frame["leak_centered"] = centered
    if leak_kinds:
        _optional_leaks(frame, leak_kinds, i, leaky_symbol, seed)
    return frame


def generate_frames(
    n_symbols: int = 8,
    n_bars: int = 1500,
    n_noise: int = 10,
    signal_horizon: int = 10,
    seed: int = 0,
    start: str = "2015-01-02",
    with_ohlcv: bool = True,
    with_leaks: bool = True,
    leak_kinds: tuple[str, ...] = (),
) -> tuple[dict[str, pd.DataFrame], SyntheticTruth]:
    """Bar frames ``{SYNnn: frame}`` (longest history ``n_bars`` business days) and the truth.

    ``leak_kinds``: optional extra leaks, names of :data:`LEAK_KINDS` (module docstring).
    """
    if n_symbols < 1 or n_bars < 4 * signal_horizon or signal_horizon < 1:
        raise ValueError(
            f"need n_symbols >= 1, signal_horizon >= 1 and n_bars >= 4 * signal_horizon; got "
            f"{n_symbols}, {signal_horizon}, {n_bars}"
        )
    kinds = tuple(dict.fromkeys(leak_kinds))
    unknown = sorted(set(kinds) - set(LEAK_KINDS))
    if unknown:
        raise ValueError(f"unknown leak kind(s) {unknown}; known: {sorted(LEAK_KINDS)}")
    leaky_symbol = min(ONE_SYMBOL_LEAK_INDEX, n_symbols - 1)
    timestamps = pd.bdate_range(start, periods=n_bars).as_unit("ns")
    market = _rng(seed, 0).normal(0.0, SIGMA_MARKET, n_bars)
    width = max(2, len(str(n_symbols - 1)))
    names = [f"SYN{i:0{width}d}" for i in range(n_symbols)]
    frames = {
        names[i]: _symbol_frame(
            i,
            market,
            timestamps,
            n_noise,
            signal_horizon,
            seed,
            with_ohlcv,
            with_leaks,
            kinds,
            leaky_symbol,
        )
        for i in range(n_symbols)
    }
    scoped = ((LEAK_KINDS["one_symbol"], (names[leaky_symbol],)),) if "one_symbol" in kinds else ()
    truth = SyntheticTruth(
        signal_horizon=signal_horizon,
        signal_features=SIGNAL_FEATURES,
        noise_features=tuple(f"noise_{j:02d}" for j in range(n_noise)),
        leak_features=(LEAK_FEATURES if with_leaks else ()) + tuple(LEAK_KINDS[k] for k in kinds),
        seed=seed,
        leak_symbols=scoped,
    )
    return frames, truth


def write_universe(
    data_dir: str | Path, frames: dict[str, pd.DataFrame], fmt: str = "parquet"
) -> list[Path]:
    """Write ``{SYMBOL}.{fmt}`` per frame into ``data_dir`` (atomic, deterministic bytes)."""
    folder = Path(data_dir)
    paths = []
    for symbol in sorted(frames):
        path = folder / f"{validate_symbol(symbol)}.{fmt}"
        atomic_write_bytes(path, bar_file_bytes(frames[symbol], fmt))
        paths.append(path)
    log.info("wrote %d synthetic %s bar file(s) to %s", len(paths), fmt, folder)
    return paths


def generate(data_dir: str | Path, fmt: str = "parquet", **kw: object) -> SyntheticTruth:
    """Generate a synthetic universe into ``data_dir``; return what was planted.

    Only bar files are written (anything else in a data folder is refused at load time).
    """
    frames, truth = generate_frames(**kw)  # type: ignore[arg-type]
    write_universe(data_dir, frames, fmt)
    return truth
