"""The built-in real data: daily bars of AAPL, FB, GOOG, IBM and MSFT (2000-2013).

Source: the ``bokeh_sampledata`` package (``stocks.csv.gz``, Quandl WIKI prices, public
domain). Its open/high/low/close are *unadjusted*: AAPL's 2:1 splits (2000-06-21,
2005-02-28) and MSFT's (2003-02-18) would show as fake -45 % to -50 % one-day returns.
We therefore scale open, high, low and close of each row by ``adj_close / close`` (the
source's split- and dividend-adjusted close), so ``close`` becomes ``adj_close`` and the
intraday shape of the bar is kept; volume is kept as reported (unadjusted share counts).
Real crashes stay: AAPL fell 52 % on 2000-09-29.

FB has only 196 rows and is written too: the ``min_rows`` rule leaves it out at load time.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cohortflow.bars import bar_file_bytes
from cohortflow.fsio import atomic_write_bytes
from cohortflow.names import validate_symbol

log = logging.getLogger(__name__)

SAMPLE_SYMBOLS = ("AAPL", "FB", "GOOG", "IBM", "MSFT")


def _stocks_csv() -> Path:
    import bokeh_sampledata

    return Path(bokeh_sampledata.package_path("stocks.csv.gz"))


def sample_frames() -> dict[str, pd.DataFrame]:
    """Adjusted daily bars per symbol: timestamp, open, high, low, close (float64), volume
    (int64), ascending."""
    raw = pd.read_csv(_stocks_csv(), engine="c")
    frames: dict[str, pd.DataFrame] = {}
    for ticker, rows in raw.groupby("Ticker", sort=True):
        rows = rows.sort_values("Date", kind="stable")
        factor = rows["Adj Close"].to_numpy(np.float64) / rows["Close"].to_numpy(np.float64)
        frames[validate_symbol(str(ticker))] = pd.DataFrame(
            {
                "timestamp": pd.to_datetime(rows["Date"], format="%Y-%m-%d")
                .to_numpy()
                .astype("datetime64[ns]"),
                "open": rows["Open"].to_numpy(np.float64) * factor,
                "high": rows["High"].to_numpy(np.float64) * factor,
                "low": rows["Low"].to_numpy(np.float64) * factor,
                "close": rows["Adj Close"].to_numpy(np.float64),
                "volume": rows["Volume"].to_numpy(np.int64),
            }
        )
    return frames


def write_sample_universe(data_dir: str | Path) -> list[Path]:
    """Write ``{SYMBOL}.parquet`` for every sample symbol into ``data_dir``; return the paths.

    Prices are split- and dividend-adjusted (see the module docstring); the bytes are the
    same on every call (deterministic parquet, no varying metadata).
    """
    folder = Path(data_dir)
    paths = []
    for symbol, frame in sample_frames().items():
        path = folder / f"{symbol}.parquet"
        atomic_write_bytes(path, bar_file_bytes(frame, "parquet"))
        paths.append(path)
    log.info("wrote %d sample bar files to %s", len(paths), folder)
    return paths
