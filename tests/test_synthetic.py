"""The synthetic generator plants what its truth says (signals at H, noise, leaks) with
deterministic bytes, and the built-in real data loads split-adjusted with FB left out."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from cohortflow.bars import load_universe
from cohortflow.features import build_panel
from cohortflow.sampledata import write_sample_universe
from cohortflow.settings import Settings
from cohortflow.synthetic import LEAK_KINDS, generate, generate_frames, signal_betas

HORIZONS = (5, 10, 20)


@pytest.fixture(scope="module")
def synthetic_panel(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("synthetic")
    truth = generate(data_dir, seed=3)
    settings = Settings(horizons=HORIZONS)
    universe = load_universe(data_dir, settings)
    return truth, universe, build_panel(universe, settings)


def rank_ic(frame: pd.DataFrame, feature: str, target: str) -> float:
    rows = frame[[feature, target]].dropna()
    # Spearman as the Pearson correlation of ranks (pandas' method="spearman" imports scipy)
    return float(rows[feature].rank().corr(rows[target].rank()))


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_same_seed_gives_byte_identical_files(tmp_path, fmt):
    kw = dict(n_symbols=3, n_bars=300, n_noise=2, seed=11)
    generate(tmp_path / "a", fmt=fmt, **kw)
    generate(tmp_path / "b", fmt=fmt, **kw)
    generate(tmp_path / "c", fmt=fmt, **{**kw, "seed": 12})
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == [f"SYN0{i}.{fmt}" for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_a_symbol_does_not_depend_on_how_many_are_generated():
    few, _ = generate_frames(n_symbols=2, n_bars=200, n_noise=1, seed=5)
    many, _ = generate_frames(n_symbols=4, n_bars=200, n_noise=1, seed=5)
    pd.testing.assert_frame_equal(few["SYN01"], many["SYN01"])


# --------------------------------------------------------------------------- truth matches data


def test_truth_names_the_columns(synthetic_panel):
    truth, universe, panel = synthetic_panel
    assert truth.signal_horizon == 10 and truth.seed == 3
    assert truth.signal_features == ("sig_a", "sig_b")
    assert truth.noise_features == tuple(f"noise_{j:02d}" for j in range(10))
    assert truth.leak_features == ("leak_future", "leak_centered")
    assert set(panel.user) == {*truth.signal_features, *truth.noise_features, *truth.leak_features}
    assert universe.symbols == tuple(f"SYN0{i}" for i in range(8))


def test_signals_predict_fwd_ret_h_best(synthetic_panel):
    truth, _, panel = synthetic_panel
    target = f"fwd_ret_{truth.signal_horizon}"
    for sig in truth.signal_features:
        at_h = rank_ic(panel.frame, sig, target)
        assert 0.08 <= at_h <= 0.3, (sig, at_h)
        for h in HORIZONS:
            if h != truth.signal_horizon:
                assert rank_ic(panel.frame, sig, f"fwd_ret_{h}") < at_h - 0.01, (sig, h)
        assert abs(rank_ic(panel.frame, sig, "fwd_ret_5")) < 0.05  # no share of it before H


def test_noise_is_noise_and_leaks_leak(synthetic_panel):
    truth, _, panel = synthetic_panel
    target = f"fwd_ret_{truth.signal_horizon}"
    for name in truth.noise_features:
        assert abs(rank_ic(panel.frame, name, target)) < 0.06, name
    assert rank_ic(panel.frame, "leak_future", target) > 0.6
    assert rank_ic(panel.frame, "leak_centered", target) > 0.5


def test_leak_centered_is_a_centered_mean_of_returns():
    frames, truth = generate_frames(n_symbols=1, n_bars=200, n_noise=0, seed=1)
    f = frames["SYN00"]
    h = truth.signal_horizon
    r1 = np.log(f["close"] / f["close"].shift(1))
    expected = r1.rolling(2 * h + 1, center=True).mean()
    np.testing.assert_allclose(f["leak_centered"], expected, rtol=1e-12)


def test_betas_hit_the_planned_pooled_ic():
    # corr(sig, fwd_ret_H) = b / sqrt(H * var(1-bar return)) = 0.15 and 0.12 by construction
    b = signal_betas(10)
    var = 0.007**2 + 0.012**2 + float(np.sum(b**2))
    np.testing.assert_allclose(b / np.sqrt(10 * var), [0.15, 0.12], rtol=1e-12)
    long = signal_betas(60)  # capped: a single bar cannot carry IC 0.15 over 60 bars
    assert 60 * np.sum(
        (long / np.sqrt(60 * (0.007**2 + 0.012**2 + np.sum(long**2)))) ** 2
    ) == pytest.approx(0.5)


def test_unequal_histories_and_consistent_ohlcv(synthetic_panel):
    _, universe, _ = synthetic_panel
    lengths = {s: len(universe.bars[s]) for s in universe.symbols}
    assert lengths == {
        "SYN00": 1500, "SYN01": 1250, "SYN02": 1500, "SYN03": 1000,
        "SYN04": 1500, "SYN05": 1250, "SYN06": 1500, "SYN07": 1000,
    }  # fmt: skip
    firsts = {universe.bars[s]["timestamp"].iloc[0] for s in universe.symbols}
    assert len(firsts) == 3
    for s in universe.symbols:
        b = universe.bars[s]
        assert (b[["open", "high", "low", "close"]] > 0).all().all()
        assert (b["high"] >= b[["open", "close"]].max(axis=1)).all()
        assert (b["low"] <= b[["open", "close"]].min(axis=1)).all()
        assert (b["volume"] > 0).all()
        assert (b["timestamp"].dt.day_of_week < 5).all()


def test_close_only_without_leaks():
    frames, truth = generate_frames(
        n_symbols=2, n_bars=200, n_noise=2, with_ohlcv=False, with_leaks=False
    )
    assert list(frames["SYN00"].columns) == [
        "timestamp",
        "close",
        "sig_a",
        "sig_b",
        "noise_00",
        "noise_01",
    ]
    assert truth.leak_features == ()


# --------------------------------------------------------------------------- built-in real data


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("sample")
    write_sample_universe(data_dir)
    return data_dir


def test_sample_universe_loads_and_skips_fb(sample_dir):
    universe = load_universe(sample_dir, Settings(min_rows=500))
    assert universe.symbols == ("AAPL", "GOOG", "IBM", "MSFT")
    assert [s.symbol for s in universe.skipped] == ["FB"]
    assert "196 rows" in universe.skipped[0].reason
    assert list(universe.bars["AAPL"].columns) == [
        "timestamp",
        "open",
        "high",
        "low",
        "close",
        "volume",
    ]
    assert universe.bars["AAPL"]["timestamp"].iloc[0] == pd.Timestamp("2000-03-01")


def test_sample_prices_are_split_adjusted(sample_dir):
    aapl = load_universe(sample_dir, Settings(min_rows=500)).bars["AAPL"].set_index("timestamp")
    ret = aapl["close"].pct_change()
    # the raw closes fall 45-50 % on the split days; adjusted, those days are ordinary
    for day in ("2000-06-21", "2005-02-28"):
        assert abs(ret[pd.Timestamp(day)]) < 0.15, day
    # the one fall beyond -40 % is real: AAPL lost 52 % on 2000-09-29 (profit warning)
    assert list(ret[ret < -0.40].index) == [pd.Timestamp("2000-09-29")]
    assert (aapl["high"] >= aapl[["open", "close"]].max(axis=1) - 1e-9).all()


def test_sample_files_are_deterministic(sample_dir, tmp_path):
    write_sample_universe(tmp_path)
    for path in sorted(sample_dir.iterdir()):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


# --------------------------------------------------------------------------- optional leak kinds

KINDS = ("shifted_ret_5", "one_symbol", "centered_5", "vol_next_5")


def _values_sha256(frames: dict[str, pd.DataFrame]) -> str:
    h = hashlib.sha256()
    for s in sorted(frames):
        f = frames[s]
        h.update(s.encode())
        h.update(f["timestamp"].to_numpy().astype("int64").tobytes())
        h.update(f.drop(columns="timestamp").to_numpy(dtype=np.float64).tobytes())
    return h.hexdigest()


def test_without_leak_kinds_the_frames_are_what_they_were():
    # the sha256 of the values the generator gave before the leak kinds existed (commit
    # 9b9830f): tests and stored demo data depend on these exact numbers
    frames, truth = generate_frames(n_symbols=3, n_bars=300, n_noise=2, seed=11)
    assert _values_sha256(frames) == (
        "58d236a70dd1e52b4833be97b4ba4997e80072016ca6636a1004294684857568"
    )
    assert truth.leak_symbols == ()
    # and turning the kinds on only adds columns: every other value stays
    with_kinds, truth2 = generate_frames(
        n_symbols=3, n_bars=300, n_noise=2, seed=11, leak_kinds=KINDS
    )
    for s, frame in frames.items():
        pd.testing.assert_frame_equal(with_kinds[s][list(frame.columns)], frame)
        assert list(with_kinds[s].columns)[len(frame.columns) :] == [LEAK_KINDS[k] for k in KINDS]
    assert truth2.leak_features == (
        "leak_future", "leak_centered", "leak_shifted_ret_5", "leak_one_symbol",
        "leak_centered_5", "leak_vol_next_5",
    )  # fmt: skip
    assert truth2.leak_symbols == (("leak_one_symbol", ("SYN02",)),)  # fewer than 4 symbols
    with pytest.raises(ValueError, match=r"unknown leak kind\(s\) \['peek'\]"):
        generate_frames(n_symbols=2, n_bars=200, leak_kinds=("peek",))


def test_leak_kinds_hold_what_they_say():
    frames, truth = generate_frames(n_symbols=5, n_bars=600, n_noise=1, seed=4, leak_kinds=KINDS)
    assert truth.leak_symbols == (("leak_one_symbol", ("SYN03",)),)
    for symbol, f in frames.items():
        logc = np.log(f["close"])
        r1 = logc.diff()
        # a 5-bar log return shifted one bar back: log(c[t+1] / c[t-4])
        np.testing.assert_allclose(f["leak_shifted_ret_5"], (logc - logc.shift(5)).shift(-1))
        # the mean of the 1-bar returns into bars t-5 .. t+5
        centered = r1.rolling(11, center=True).mean()
        np.testing.assert_allclose(f["leak_centered_5"], centered, rtol=1e-12, atol=1e-15)
        # the standard deviation of the returns into bars t+1 .. t+5
        future_vol = r1.rolling(5).std().shift(-5)
        np.testing.assert_allclose(f["leak_vol_next_5"], future_vol, rtol=1e-10)
        fwd5 = f["close"].shift(-5) / f["close"] - 1
        corr = f["leak_one_symbol"].corr(fwd5)
        if symbol == "SYN03":
            assert corr == pytest.approx(0.3, abs=1e-12)  # exactly the planted correlation
        else:
            assert abs(corr) < 0.12, (symbol, corr)  # honest noise elsewhere
