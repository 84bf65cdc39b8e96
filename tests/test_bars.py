"""Loading a data folder: good files load as documented, every bad input stops with one
DataError naming the file and the problem, short histories are skipped with a reason."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohortflow.bars import bar_file_bytes, discover, load_universe, read_bars
from cohortflow.errors import DataError
from cohortflow.settings import Settings

SETTINGS = Settings(min_rows=10)


def bars_frame(n: int = 12, start: str = "2020-01-01", seed: int = 0, **extra) -> pd.DataFrame:
    """A small valid OHLCV frame (business days) plus ``extra`` columns."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    frame = pd.DataFrame(
        {
            "timestamp": pd.bdate_range(start, periods=n),
            "open": close * 1.001,
            "high": close * 1.01,
            "low": close * 0.99,
            "close": close,
            "volume": rng.integers(1_000, 5_000, n),
        }
    )
    for name, values in extra.items():
        frame[name] = values
    return frame


def write(path: Path, frame: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bar_file_bytes(frame, path.suffix.lstrip(".")))
    return path


def write_csv_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def csv_lines(n: int = 12) -> list[str]:
    days = pd.bdate_range("2020-01-01", periods=n)
    return ["timestamp,close"] + [f"{d.date()},{100 + i}" for i, d in enumerate(days)]


def fails(path: Path, problem: str):
    """pytest.raises for a DataError whose message starts with the file and names the problem."""
    return pytest.raises(DataError, match=re.escape(f"{path}: ") + problem)


# --------------------------------------------------------------------------- good input


def test_loads_csv_and_parquet_with_types_hashes_and_signature(tmp_path):
    aaa = write(tmp_path / "aaa.csv", bars_frame(seed=1, my_feat=np.arange(12.0)))
    bbb = write(tmp_path / "BBB.parquet", bars_frame(seed=2))
    universe = load_universe(tmp_path, SETTINGS)

    assert universe.symbols == ("AAA", "BBB")
    assert [f.path for f in universe.files] == [aaa, bbb]
    assert universe.files[0].sha256 == hashlib.sha256(aaa.read_bytes()).hexdigest()
    assert universe.files[1].size == bbb.stat().st_size
    expected_sig = hashlib.sha256(b"AAA,BBB").hexdigest()
    assert universe.universe_sig == expected_sig
    assert universe.batch == expected_sig[:12]
    assert universe.skipped == ()
    assert universe.data_dir == tmp_path

    a = universe.bars["AAA"]
    assert list(a.columns) == ["timestamp", "open", "high", "low", "close", "volume", "my_feat"]
    assert a["timestamp"].dtype == np.dtype("datetime64[ns]")
    assert all(a[c].dtype == np.float64 for c in a.columns[1:])
    np.testing.assert_array_equal(a["my_feat"].to_numpy(), np.arange(12.0))
    np.testing.assert_allclose(a["close"].to_numpy(), bars_frame(seed=1)["close"].to_numpy())
    assert universe.bars["BBB"]["timestamp"].is_monotonic_increasing


def test_timestamp_only_close_only_file_loads(tmp_path):
    write_csv_text(tmp_path / "X.csv", "\n".join(csv_lines()) + "\n")
    frame = load_universe(tmp_path, SETTINGS).bars["X"]
    assert list(frame.columns) == ["timestamp", "close"]
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2020-01-01")


def test_tz_aware_timestamps_become_utc_naive(tmp_path):
    write_csv_text(
        tmp_path / "CSV.csv",
        "timestamp,close\n2020-01-02T09:30:00+01:00,1.0\n2020-01-02T10:30:00+01:00,2.0\n",
    )
    stamps = pd.date_range("2020-01-02 09:30", periods=2, freq="h", tz="America/New_York")
    write(tmp_path / "PQ.parquet", pd.DataFrame({"timestamp": stamps, "close": [1.0, 2.0]}))
    csv = read_bars(tmp_path / "CSV.csv")["timestamp"]
    pq_ = read_bars(tmp_path / "PQ.parquet")["timestamp"]
    assert csv.dtype == np.dtype("datetime64[ns]") and pq_.dtype == np.dtype("datetime64[ns]")
    assert list(csv) == [pd.Timestamp("2020-01-02 08:30"), pd.Timestamp("2020-01-02 09:30")]
    assert list(pq_) == [pd.Timestamp("2020-01-02 14:30"), pd.Timestamp("2020-01-02 15:30")]


def test_hidden_files_and_subfolders_are_ignored(tmp_path):
    write(tmp_path / "AAA.csv", bars_frame())
    (tmp_path / ".DS_Store").write_bytes(b"\x00junk")
    (tmp_path / ".hidden.txt").write_text("not a bar file")
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "old.txt").write_text("ignored")
    assert [f.symbol for f in discover(tmp_path)] == ["AAA"]


def test_non_numeric_extra_columns_are_ignored_with_a_log_line(tmp_path, caplog):
    path = write(tmp_path / "AAA.csv", bars_frame(sector=["tech"] * 12, score=np.ones(12)))
    with caplog.at_level(logging.INFO, logger="cohortflow.bars"):
        frame = read_bars(path)
    assert "sector" not in frame.columns and "score" in frame.columns
    assert any("ignoring non-numeric column(s) 'sector'" in r.getMessage() for r in caplog.records)


def test_infinite_user_values_become_nan(tmp_path, caplog):
    values = np.ones(12)
    values[3] = np.inf
    path = write(tmp_path / "AAA.parquet", bars_frame(score=values))
    with caplog.at_level(logging.WARNING, logger="cohortflow.bars"):
        frame = read_bars(path)
    assert np.isnan(frame["score"].iloc[3]) and frame["score"].drop(index=3).eq(1.0).all()
    assert any("'score' has 1 infinite" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- folder problems


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with fails(missing, "data folder does not exist"):
        load_universe(missing, SETTINGS)


def test_empty_folder(tmp_path):
    (tmp_path / ".gitkeep").write_text("")
    with fails(tmp_path, r"data folder holds no bar files"):
        load_universe(tmp_path, SETTINGS)


def test_unknown_file_type(tmp_path):
    write(tmp_path / "AAA.csv", bars_frame())
    notes = write_csv_text(tmp_path / "notes.txt", "hello")
    with fails(notes, r"unknown file type '\.txt'"):
        load_universe(tmp_path, SETTINGS)


@pytest.mark.parametrize("name", ["bad..name.csv", "a b.csv", "-lead.parquet"])
def test_unsafe_symbol_file_name(tmp_path, name):
    path = write_csv_text(tmp_path / name, "\n".join(csv_lines()))
    with fails(path, r"file name is not a usable symbol: invalid symbol name"):
        load_universe(tmp_path, SETTINGS)


def test_two_files_for_one_symbol(tmp_path):
    write(tmp_path / "AAPL.csv", bars_frame())
    second = write(tmp_path / "AAPL.parquet", bars_frame())
    with fails(second, r"two files for symbol AAPL: AAPL\.csv and AAPL\.parquet"):
        load_universe(tmp_path, SETTINGS)


def test_two_files_differing_in_case(tmp_path):
    write(tmp_path / "AAPL.csv", bars_frame())
    write(tmp_path / "aapl.csv", bars_frame())
    with pytest.raises(DataError, match=r"aapl\.csv: two files for symbol AAPL"):
        discover(tmp_path)


# --------------------------------------------------------------------------- file problems


@pytest.mark.parametrize("name", ["E.csv", "E.parquet"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with fails(path, r"empty file \(0 bytes\)"):
        load_universe(tmp_path, SETTINGS)


@pytest.mark.parametrize("name", ["H.csv", "H.parquet"])
def test_header_only_file(tmp_path, name):
    path = write(tmp_path / name, bars_frame().iloc[:0])
    with fails(path, "empty file: a header but no data rows"):
        read_bars(path)


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "C.parquet"
    path.write_bytes(b"this is not parquet at all, just text pretending")
    with fails(path, "unreadable or corrupt parquet file"):
        load_universe(tmp_path, SETTINGS)


def test_truncated_parquet(tmp_path):
    data = bar_file_bytes(bars_frame(), "parquet")
    path = tmp_path / "T.parquet"
    path.write_bytes(data[: len(data) // 2])
    with fails(path, "unreadable or corrupt parquet file"):
        read_bars(path)


def test_corrupt_csv(tmp_path):
    path = write_csv_text(tmp_path / "C.csv", 'timestamp,close\n2020-01-01,"1.0\n2020-01-02,2.0\n')
    with fails(path, "unreadable or corrupt CSV file"):
        read_bars(path)


def test_unreadable_file(tmp_path):
    path = write(tmp_path / "U.csv", bars_frame())
    path.chmod(0)
    try:
        if path.open("rb"):  # root can read anything: nothing to test then
            pytest.skip("running as a user that can read a mode-000 file")
    except PermissionError:
        with fails(path, "cannot read file|unreadable or corrupt CSV file"):
            read_bars(path)
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("missing", ["timestamp", "close"])
def test_missing_required_column(tmp_path, missing):
    path = write(tmp_path / "M.parquet", bars_frame().drop(columns=[missing]))
    with fails(path, rf"missing required column\(s\) '{missing}'"):
        load_universe(tmp_path, SETTINGS)


def test_missing_column_message_lists_what_was_found(tmp_path):
    path = write_csv_text(tmp_path / "M.csv", "Date,Close\n2020-01-01,1.0\n")
    with fails(path, r"missing required column\(s\) 'timestamp', 'close' .*found: Date, Close"):
        read_bars(path)


def test_unparsable_timestamp_names_row_and_value(tmp_path):
    lines = csv_lines()
    lines[4] = "not-a-date,103"
    path = write_csv_text(tmp_path / "P.csv", "\n".join(lines))
    with fails(path, r"unparsable timestamp 'not-a-date' at row 4 \(line 5\)"):
        load_universe(tmp_path, SETTINGS)


def test_missing_timestamp_names_row(tmp_path):
    lines = csv_lines()
    lines[2] = ",101"
    path = write_csv_text(tmp_path / "P.csv", "\n".join(lines))
    with fails(path, r"missing timestamp at row 2 \(line 3\)"):
        read_bars(path)


def test_numeric_timestamps_are_refused(tmp_path):
    path = write(
        tmp_path / "N.parquet",
        pd.DataFrame({"timestamp": [20200101, 20200102], "close": [1.0, 2.0]}),
    )
    with fails(path, r"column 'timestamp' holds numbers \(int64\), not dates"):
        read_bars(path)


def test_duplicate_timestamp_says_which(tmp_path):
    frame = bars_frame()
    frame.loc[6, "timestamp"] = frame.loc[5, "timestamp"]
    path = write(tmp_path / "D.parquet", frame)
    with fails(path, r"duplicate timestamp 2020-01-08 00:00:00 at row 6 and row 7"):
        load_universe(tmp_path, SETTINGS)


def test_unsorted_rows_say_where(tmp_path):
    frame = bars_frame()
    frame.loc[[3, 4], "timestamp"] = frame.loc[[4, 3], "timestamp"].to_numpy()
    path = write(tmp_path / "U.csv", frame)
    with fails(
        path,
        r"rows are not sorted by timestamp: row 5 \(line 6\) \(2020-01-06 00:00:00\) comes after "
        r"row 4 \(line 5\) \(2020-01-07 00:00:00\)",
    ):
        load_universe(tmp_path, SETTINGS)


@pytest.mark.parametrize("column", ["close", "open", "high", "low"])
@pytest.mark.parametrize(
    ("value", "word"),
    [(np.nan, r"NaN \(missing\)"), (np.inf, "infinite"), (0.0, "zero"), (-5.0, r"negative \(-5\)")],
)
def test_bad_prices_name_column_and_row(tmp_path, column, value, word):
    frame = bars_frame()
    frame[column] = frame[column].astype(float)
    frame.loc[7, column] = value
    path = write(tmp_path / "BAD.parquet", frame)
    with fails(
        path,
        rf"{column} is {word} at row 8 \(2020-01-10 00:00:00\); prices must be finite and positive",
    ):
        load_universe(tmp_path, SETTINGS)


def test_bad_price_in_csv_names_line(tmp_path):
    lines = csv_lines()
    lines[3] = lines[3].split(",")[0] + ",-1"
    path = write_csv_text(tmp_path / "BAD.csv", "\n".join(lines))
    with fails(path, r"close is negative \(-1\) at row 3 \(line 4\)"):
        read_bars(path)


def test_non_numeric_close(tmp_path):
    lines = csv_lines()
    lines[5] = lines[5].split(",")[0] + ",n/a?"
    path = write_csv_text(tmp_path / "S.csv", "\n".join(lines))
    with fails(path, r"column 'close' is not numeric: 'n/a\?' at row 5 \(line 6\)"):
        read_bars(path)


def test_negative_volume(tmp_path):
    frame = bars_frame()
    frame.loc[2, "volume"] = -10
    path = write(tmp_path / "V.parquet", frame)
    with fails(path, r"volume is -10 at row 3 .*must be finite and non-negative"):
        read_bars(path)


def test_bad_file_stops_the_whole_universe(tmp_path):
    write(tmp_path / "GOOD.csv", bars_frame())
    frame = bars_frame()
    frame.loc[0, "close"] = np.nan
    bad = write(tmp_path / "ZZZ.csv", frame)
    with fails(bad, "close is NaN"):
        load_universe(tmp_path, SETTINGS)


# --------------------------------------------------------------------------- short histories


def test_too_few_rows_is_skipped_with_a_reason(tmp_path, caplog):
    write(tmp_path / "LONG.parquet", bars_frame(n=30))
    short = write(tmp_path / "FB.parquet", bars_frame(n=19))
    with caplog.at_level(logging.WARNING, logger="cohortflow.bars"):
        universe = load_universe(tmp_path, Settings(min_rows=20))
    assert universe.symbols == ("LONG",)
    assert [f.symbol for f in universe.files] == ["LONG"]
    assert len(universe.skipped) == 1
    skipped = universe.skipped[0]
    assert (skipped.symbol, skipped.path) == ("FB", str(short))
    assert skipped.reason == "FB: 19 rows, fewer than min_rows=20"
    assert universe.universe_sig == hashlib.sha256(b"LONG").hexdigest()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("FB: 19 rows, fewer than min_rows=20" in r.getMessage() for r in warnings)


def test_exactly_min_rows_is_kept(tmp_path):
    write(tmp_path / "EDGE.csv", bars_frame(n=20))
    assert load_universe(tmp_path, Settings(min_rows=20)).symbols == ("EDGE",)


def test_no_symbol_long_enough(tmp_path):
    write(tmp_path / "FB.csv", bars_frame(n=15))
    write(tmp_path / "TINY.parquet", bars_frame(n=11))
    with fails(
        tmp_path,
        r"no symbol has at least min_rows=20 rows: FB.csv \(15 rows\), TINY.parquet \(11 rows\)",
    ):
        load_universe(tmp_path, Settings(min_rows=20))


def test_parquet_dates_and_int_volume(tmp_path):
    days = pd.bdate_range("2021-03-01", periods=3)
    table = pa.table(
        {
            "timestamp": pa.array([d.date() for d in days], pa.date32()),
            "close": pa.array([1.0, 2.0, 3.0]),
            "volume": pa.array([1, 2, 3], pa.int64()),
        }
    )
    path = tmp_path / "D.parquet"
    pq.write_table(table, path)
    frame = read_bars(path)
    assert list(frame["timestamp"]) == list(days)
    assert frame["volume"].dtype == np.float64
