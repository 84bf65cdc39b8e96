"""Features and targets: every standard feature is causal (the demo leak is not), values
match independent pandas reference formulas, targets are exact, and the panel follows the
convention of docs/ARCHITECTURE.md."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
import pytest

from cohortflow.bars import Universe, bar_file_bytes, load_universe
from cohortflow.errors import DataError
from cohortflow.features import (
    DEMO_LEAK,
    STANDARD_FEATURES,
    add_targets,
    build_panel,
    compute_features,
    feature_specs,
    target_name,
    user_columns,
    warmup_bars,
)
from cohortflow.settings import Settings

ALL_COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
CUTS = (70, 71, 150, 233, 298)


def ohlcv(n: int = 300, seed: int = 0, start: str = "2020-01-01") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, n)))
    open_ = close * np.exp(rng.normal(0.0, 0.005, n))
    return pd.DataFrame(
        {
            "timestamp": pd.bdate_range(start, periods=n).as_unit("ns"),
            "open": open_,
            "high": np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.01, n))),
            "low": np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.01, n))),
            "close": close,
            "volume": rng.integers(10_000, 90_000, n).astype(float),
        }
    )


def universe_of(bars: dict[str, pd.DataFrame], data_dir: Path = Path("/data")) -> Universe:
    return Universe(
        symbols=tuple(sorted(bars)),
        files=(),
        bars=MappingProxyType(bars),
        skipped=(),
        data_dir=data_dir,
    )


# --------------------------------------------------------------------------- causality


@pytest.mark.parametrize("spec", STANDARD_FEATURES, ids=lambda s: s.name)
def test_every_standard_feature_is_causal(spec):
    bars = ohlcv()
    full = spec.compute(bars).to_numpy()
    assert np.isfinite(full[spec.lookback :]).all()
    for cut in CUTS:
        truncated = spec.compute(bars.iloc[: cut + 1].copy()).to_numpy()
        # exact: the value at t must not move by a bit when the bars after t are gone
        np.testing.assert_array_equal(truncated, full[: cut + 1], err_msg=f"{spec.name} @ {cut}")


def test_the_demo_leak_is_not_causal():
    (leak,) = [
        s for s in feature_specs(ALL_COLUMNS, Settings(demo_leak=True)) if s.name == DEMO_LEAK
    ]
    bars = ohlcv()
    full = leak.compute(bars).to_numpy()
    for cut in CUTS:
        truncated = leak.compute(bars.iloc[: cut + 1].copy()).to_numpy()
        head = full[: cut + 1]
        changed = ~((truncated == head) | (np.isnan(truncated) & np.isnan(head)))
        # the last k = 5 rows up to the cut read bars after it (where the full series has them)
        assert np.flatnonzero(changed).tolist() == list(range(cut - 4, min(cut + 1, len(bars) - 5)))


def test_lookback_is_the_first_defined_row():
    bars = ohlcv()
    for spec in STANDARD_FEATURES:
        values = spec.compute(bars).to_numpy()
        assert np.isnan(values[: spec.lookback]).all(), spec.name
        assert np.isfinite(values[spec.lookback]), spec.name
    assert warmup_bars(STANDARD_FEATURES) == 60


# --------------------------------------------------------------------------- reference values


def test_values_match_pandas_reference_formulas():
    b = ohlcv()
    f = compute_features(b, STANDARD_FEATURES)
    c, o, h, lo, v = (b[k] for k in ("close", "open", "high", "low", "volume"))
    r1 = np.log(c / c.shift(1))
    lv = np.log1p(v)
    dv = np.log1p((c * v).rolling(5).mean())
    diff = c.diff()
    gain = diff.clip(lower=0).rolling(14).sum()
    loss = (-diff).clip(lower=0).rolling(14).sum()
    expected = {
        **{f"ret_{k}": np.log(c / c.shift(k)) for k in (1, 5, 10, 20, 60)},
        **{f"vol_{w}": r1.rolling(w).std() for w in (10, 20, 60)},
        "mom_20_60": c.rolling(20).mean() / c.rolling(60).mean() - 1,
        "ma_ratio_10": c / c.rolling(10).mean() - 1,
        "ma_ratio_50": c / c.rolling(50).mean() - 1,
        "rsi_14": 100 * gain / (gain + loss),
        "dist_high_20": c / c.rolling(20).max() - 1,
        "dist_low_20": c / c.rolling(20).min() - 1,
        "hl_range": np.log(h / lo),
        "parkinson_vol_20": np.sqrt((np.log(h / lo) ** 2).rolling(20).mean() / (4 * np.log(2))),
        "close_loc": (c - lo) / (h - lo),
        "gap_open": np.log(o / c.shift(1)),
        "intraday_ret": np.log(c / o),
        "logvol_z_20": (lv - lv.rolling(20).mean()) / lv.rolling(20).std(),
        "volume_ratio_5_20": v.rolling(5).mean() / v.rolling(20).mean(),
        "dollar_vol_chg_5": dv - dv.shift(5),
    }
    assert set(expected) == {s.name for s in STANDARD_FEATURES}
    for name, ref in expected.items():
        np.testing.assert_allclose(
            f[name].to_numpy(), ref.to_numpy(), rtol=1e-9, atol=1e-12, err_msg=name
        )


def test_flat_windows_have_neutral_values():
    b = ohlcv(n=80)
    b["close"] = 10.0
    b[["open", "high", "low"]] = 10.0
    b["volume"] = 1000.0
    f = compute_features(b, STANDARD_FEATURES).iloc[60:]
    assert (f["rsi_14"] == 50.0).all()
    assert (f["close_loc"] == 0.5).all()
    assert (f["logvol_z_20"] == 0.0).all()
    assert (f["vol_20"] == 0.0).all()


# --------------------------------------------------------------------------- specs and columns


def test_feature_specs_follow_the_columns_present():
    close_only = {s.name for s in feature_specs(["timestamp", "close"])}
    assert close_only == {
        "ret_1", "ret_5", "ret_10", "ret_20", "ret_60", "vol_10", "vol_20", "vol_60",
        "mom_20_60", "ma_ratio_10", "ma_ratio_50", "rsi_14", "dist_high_20", "dist_low_20",
    }  # fmt: skip
    with_volume = {s.name for s in feature_specs(["timestamp", "close", "volume"])}
    assert with_volume - close_only == {"logvol_z_20", "volume_ratio_5_20", "dollar_vol_chg_5"}
    with_open = {s.name for s in feature_specs(["timestamp", "close", "open"])}
    assert with_open - close_only == {"gap_open", "intraday_ret"}
    assert len(feature_specs(ALL_COLUMNS)) == len(STANDARD_FEATURES)
    assert DEMO_LEAK not in {s.name for s in feature_specs(ALL_COLUMNS, Settings())}
    assert feature_specs(ALL_COLUMNS, Settings(demo_leak=True))[-1].name == DEMO_LEAK


def test_user_columns_are_the_other_numeric_columns():
    b = ohlcv(n=5)
    b["alpha"] = 1.0
    b["flag"] = True
    b["note"] = "x"
    assert user_columns(b) == ("alpha", "flag")
    assert target_name(5) == "fwd_ret_5"


# --------------------------------------------------------------------------- targets


def test_targets_exact_on_a_tiny_series():
    ts = pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-05", "2024-01-08", "2024-01-09"])
    bars = pd.DataFrame({"timestamp": ts, "close": [10.0, 11.0, 12.1, 9.68, 10.0]})
    out = add_targets(pd.DataFrame(index=bars.index), bars, (1, 2, 5))
    np.testing.assert_allclose(
        out["fwd_ret_1"].to_numpy(), [0.1, 0.1, -0.2, 10.0 / 9.68 - 1, np.nan], rtol=1e-12
    )
    np.testing.assert_allclose(
        out["fwd_ret_2"].to_numpy(),
        [0.21, 9.68 / 11 - 1, 10 / 12.1 - 1, np.nan, np.nan],
        rtol=1e-12,
    )
    assert out["fwd_ret_5"].isna().all()
    assert list(out["label_end_1"]) == [*ts[1:], pd.NaT]
    assert list(out["label_end_2"]) == [ts[2], ts[3], ts[4], pd.NaT, pd.NaT]
    assert out["label_end_5"].isna().all()
    assert out["label_end_1"].dtype == np.dtype("datetime64[ns]")


# --------------------------------------------------------------------------- panel


def test_close_only_universe_builds_a_panel(tmp_path):
    for i, sym in enumerate(["AAA", "BBB"]):
        frame = ohlcv(n=120, seed=i)[["timestamp", "close"]]
        (tmp_path / f"{sym}.csv").write_bytes(bar_file_bytes(frame, "csv"))
    universe = load_universe(tmp_path, Settings(min_rows=100))
    panel = build_panel(universe, Settings(min_rows=100, horizons=(1, 5)))
    assert panel.computed == tuple(s.name for s in feature_specs(["close"]))
    assert "hl_range" not in panel.frame.columns and "gap_open" not in panel.frame.columns
    assert panel.user == ()
    assert len(panel.frame) == 2 * (120 - 60)
    assert panel.frame[list(panel.features)].notna().all().all()


def test_panel_convention_warmup_and_values():
    bars = {"BBB": ohlcv(n=200, seed=1), "AAA": ohlcv(n=150, seed=2, start="2020-03-02")}
    bars["BBB"]["beta"] = np.linspace(0, 1, 200)
    bars["AAA"]["beta"] = np.linspace(1, 2, 150)
    panel = build_panel(universe_of(bars), Settings(horizons=(3, 7)))
    frame = panel.frame

    assert list(frame.columns) == [
        "timestamp", "symbol", *panel.computed, "beta", "fwd_ret_3", "fwd_ret_7",
        "label_end_3", "label_end_7",
    ]  # fmt: skip
    assert panel.features == (*panel.computed, "beta") and panel.targets == (
        "fwd_ret_3",
        "fwd_ret_7",
    )
    assert isinstance(frame.index, pd.RangeIndex) and frame.index[0] == 0
    assert frame["timestamp"].dtype == np.dtype("datetime64[ns]")
    assert isinstance(frame["symbol"].dtype, pd.CategoricalDtype)
    assert list(frame["symbol"].cat.categories) == ["AAA", "BBB"]
    assert all(frame[c].dtype == np.float64 for c in (*panel.features, *panel.targets))
    assert frame["label_end_7"].dtype == np.dtype("datetime64[ns]")
    assert frame.select_dtypes(include=[object]).columns.empty
    keys = list(zip(frame["timestamp"], frame["symbol"].astype(str), strict=True))
    assert keys == sorted(keys)

    for sym, b in bars.items():
        rows = frame[frame["symbol"] == sym].reset_index(drop=True)
        assert len(rows) == len(b) - 60  # warm-up dropped
        assert rows["timestamp"].iloc[0] == b["timestamp"].iloc[60]
        expected = compute_features(b, panel.specs).iloc[60:].reset_index(drop=True)
        pd.testing.assert_frame_equal(rows[list(panel.computed)], expected)
        np.testing.assert_array_equal(rows["beta"].to_numpy(), b["beta"].to_numpy()[60:])
        targets = (
            add_targets(pd.DataFrame(index=b.index), b, (3, 7)).iloc[60:].reset_index(drop=True)
        )
        pd.testing.assert_frame_equal(rows[list(targets.columns)], targets)
        # label_end is the symbol's own bar h later, NaT where it does not exist
        assert rows["label_end_7"].iloc[-8] == b["timestamp"].iloc[-1]
        assert (
            rows["label_end_7"].iloc[-7:].isna().all() and rows["fwd_ret_7"].iloc[-7:].isna().all()
        )


def test_standard_features_use_columns_every_file_has(caplog):
    bars = {"AAA": ohlcv(n=100), "BBB": ohlcv(n=100, seed=3)[["timestamp", "close"]]}
    with caplog.at_level(logging.INFO, logger="cohortflow.features"):
        panel = build_panel(universe_of(bars), Settings())
    assert panel.computed == tuple(s.name for s in feature_specs(["close"]))
    assert any("not in every file" in r.getMessage() for r in caplog.records)


def test_user_column_missing_from_one_file_is_nan_there(caplog):
    bars = {"AAA": ohlcv(n=100), "BBB": ohlcv(n=100, seed=3)}
    bars["AAA"]["only_a"] = 1.0
    with caplog.at_level(logging.WARNING, logger="cohortflow.features"):
        frame = build_panel(universe_of(bars), Settings()).frame
    assert (frame.loc[frame["symbol"] == "AAA", "only_a"] == 1.0).all()
    assert frame.loc[frame["symbol"] == "BBB", "only_a"].isna().all()
    assert any("'only_a' is missing from 1 file(s) (BBB)" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("column", "kind"),
    [
        ("ret_5", "a standard feature name"),
        (DEMO_LEAK, "a standard feature name"),
        ("fwd_ret_3", "a target column name"),
        ("label_end_10", "a target column name"),
        ("symbol", "the panel's symbol column"),
    ],
)
def test_user_column_colliding_with_a_reserved_name(tmp_path, column, kind):
    frame = ohlcv(n=80)
    frame[column] = 1.0
    path = tmp_path / "CLASH.parquet"
    path.write_bytes(bar_file_bytes(frame, "parquet"))
    universe = load_universe(tmp_path, Settings(min_rows=50))
    with pytest.raises(
        DataError, match=re.escape(f"{path}: user column '{column}' collides with {kind}")
    ):
        build_panel(universe, Settings(min_rows=50))


def test_demo_leak_only_when_asked():
    bars = {"AAA": ohlcv(n=100)}
    assert DEMO_LEAK not in build_panel(universe_of(bars), Settings()).frame.columns
    panel = build_panel(universe_of(bars), Settings(demo_leak=True))
    assert panel.computed[-1] == DEMO_LEAK and panel.frame[DEMO_LEAK].iloc[:-5].notna().all()


def test_symbol_shorter_than_the_warmup_has_no_rows(caplog):
    bars = {"AAA": ohlcv(n=100), "BBB": ohlcv(n=60, seed=5)}
    with caplog.at_level(logging.WARNING, logger="cohortflow.features"):
        frame = build_panel(universe_of(bars), Settings()).frame
    assert set(frame["symbol"].astype(str)) == {"AAA"} and len(frame) == 40
    assert any(
        "BBB: 60 rows, not more than the 60-bar warm-up" in r.getMessage() for r in caplog.records
    )
