"""Bad input through `cohortflow run`: one clear line naming the file and the problem,
exit code 2, and nothing written under the output root."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohortflow_dagster.cli.main import main

N = 260  # above fast.yaml's min_rows=200


def _good(n: int = N) -> pd.DataFrame:
    ts = pd.bdate_range("2020-01-01", periods=n)
    close = 100 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, n)))
    return pd.DataFrame({"timestamp": ts, "close": close})


def _write_csv(folder: Path, name: str, frame: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    frame.to_csv(path, index=False)
    return path


def _cases() -> dict[str, tuple]:
    def missing_close(d):
        return _write_csv(d, "AAA.csv", _good().drop(columns="close")), "close"

    def bad_timestamp(d):
        f = _good().astype({"timestamp": str})
        f.loc[10, "timestamp"] = "not-a-date"
        return _write_csv(d, "AAA.csv", f), "timestamp"

    def duplicate_timestamp(d):
        f = _good()
        f.loc[11, "timestamp"] = f.loc[10, "timestamp"]
        return _write_csv(d, "AAA.csv", f), "duplicate"

    def unsorted(d):
        f = _good()
        f.loc[[10, 11], "timestamp"] = f.loc[[11, 10], "timestamp"].to_numpy()
        return _write_csv(d, "AAA.csv", f), "sorted|order"

    def price(value):
        def make(d):
            f = _good()
            f.loc[20, "close"] = value
            return _write_csv(d, "AAA.csv", f), "close"

        return make

    def empty_file(d):
        d.mkdir(parents=True, exist_ok=True)
        (d / "AAA.csv").write_text("")
        return d / "AAA.csv", "empty"

    def too_few_rows(d):
        return _write_csv(d, "AAA.csv", _good(50)), "min_rows"

    def unknown_type(d):
        _write_csv(d, "AAA.csv", _good())
        (d / "notes.xlsx").write_bytes(b"PK\x03\x04")
        return d / "notes.xlsx", "file type|unknown|unsupported"

    def unsafe_symbol(d):
        return _write_csv(d, "bad..name.csv", _good()), "symbol"

    def empty_folder(d):
        d.mkdir(parents=True, exist_ok=True)
        return d, "no bar files|empty"

    return {
        "missing close": (missing_close,),
        "unparsable timestamp": (bad_timestamp,),
        "duplicate timestamp": (duplicate_timestamp,),
        "unsorted rows": (unsorted,),
        "NaN price": (price(np.nan),),
        "infinite price": (price(np.inf),),
        "zero price": (price(0.0),),
        "negative price": (price(-1.0),),
        "empty file": (empty_file,),
        "too few rows": (too_few_rows,),
        "unknown file type": (unknown_type,),
        "unsafe symbol name": (unsafe_symbol,),
        "empty data folder": (empty_folder,),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_bad_input_stops_with_one_clear_error_and_writes_nothing(
    case: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    fast_settings_path: Path,
    dagster_home: Path,
):
    import re

    (make,) = _cases()[case]
    data = tmp_path / "data"
    bad_path, problem = make(data)
    out = tmp_path / "out"
    code = main(
        ["run", "--data", str(data), "--out", str(out), "--settings", str(fast_settings_path)]
    )
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("cohortflow: error:")]
    assert len(lines) == 1, err
    assert str(bad_path) in lines[0] or bad_path.name in lines[0]
    assert re.search(problem, lines[0], re.IGNORECASE), lines[0]
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
