"""Leak detection: planted leaks found with their evidence, attempts that fix themselves.

The panel is built the way the graph builds it (synthetic bars -> Universe -> build_panel)
with known truth: sig_a/sig_b are honest signals of fwd_ret_10, noise_00..09 are noise,
leak_future (fwd_ret_10 + noise) and leak_centered (a centered window, a user column) leak,
``future_x`` is honest noise with a forbidden name, and the computed demo feature
(DEMO_LEAK: a centered mean of returns) reads the future in code we can rerun.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cohortflow.bars import Universe
from cohortflow.canonical import canonical_json
from cohortflow.features import (
    DEMO_LEAK,
    DEMO_LEAK_HALF_WIDTH,
    STANDARD_NAMES,
    FeatureSpec,
    build_panel,
)
from cohortflow.leakage import (
    DOMINANCE_FLOOR,
    Exclusion,
    Exclusions,
    average_ranks,
    detect_leaks,
    dominance_test,
    lookahead_test,
    name_rule_hits,
    next_attempt,
    rank_ic,
)
from cohortflow.settings import Settings
from cohortflow.synthetic import generate_frames

TARGET = "fwd_ret_10"
SETTINGS = Settings(horizons=(10,), demo_leak=True)
HONEST_USER = ("sig_a", "sig_b", *(f"noise_{j:02d}" for j in range(10)))


def _universe(frames: dict[str, pd.DataFrame]) -> Universe:
    return Universe(
        symbols=tuple(sorted(frames)),
        files=(),
        bars=frames,
        skipped=(),
        data_dir=Path("/nonexistent"),
    )


@pytest.fixture(scope="module")
def world():
    frames, _ = generate_frames(
        n_symbols=6, n_bars=800, n_noise=10, signal_horizon=10, seed=11, with_ohlcv=False
    )
    rng = np.random.default_rng(1)
    for frame in frames.values():
        frame["future_x"] = rng.standard_normal(len(frame))  # honest values, forbidden name
    universe = _universe(frames)
    panel = build_panel(universe, SETTINGS)
    att0 = detect_leaks(panel, TARGET, 10, panel.specs, universe.bars, SETTINGS, 0, None)
    att1 = detect_leaks(panel, TARGET, 10, panel.specs, universe.bars, SETTINGS, 1, att0)
    return universe, panel, att0, att1


def _by_feature(exclusions: Exclusions) -> dict[str, Exclusion]:
    return {e.feature: e for e in exclusions.entries}


def test_planted_leaks_found_in_attempt_0_with_their_reason(world):
    _, panel, att0, _ = world
    assert DEMO_LEAK in panel.computed and "leak_future" in panel.user
    found = {e.feature: e.reason for e in att0.found_here()}
    assert found == {
        DEMO_LEAK: "lookahead",
        "future_x": "name_rule",
        "leak_future": "name_rule",
        "leak_centered": "dominance",
    }
    assert att0.excluded() == frozenset(found)
    assert all(e.attempt == 0 and e.symbols == () for e in att0.entries)
    assert att0.to_dict()["summary"] == {
        "n_excluded": 4,
        "n_inherited": 0,
        "n_found_in_this_attempt": 4,
        "by_reason": {"dominance": 1, "lookahead": 1, "name_rule": 2},
    }


def test_centered_window_caught_by_lookahead_with_cut_and_rows_changed(world):
    universe, _, att0, _ = world
    ev = _by_feature(att0)[DEMO_LEAK].evidence
    bars = universe.bars[ev["symbol"]]
    stamps = list(bars["timestamp"])
    cut = stamps.index(pd.Timestamp(ev["cut"]))
    # a centered window of half-width k reads k bars ahead: truncating at the cut blanks the
    # last k rows up to it (NaN where the full history had a value)
    assert ev["rows_changed"] == DEMO_LEAK_HALF_WIDTH
    assert ev["nan_mismatches"] == DEMO_LEAK_HALF_WIDTH
    assert ev["first_changed"] == stamps[cut - DEMO_LEAK_HALF_WIDTH + 1].isoformat()
    assert (
        ev["cuts_changed"] == ev["cuts_tested"] == SETTINGS.lookahead_cuts * len(universe.symbols)
    )
    assert ev["symbols_tested"] == ev["symbols_changed"] == list(universe.symbols)


def test_leak_future_also_fails_the_dominance_test_on_its_numbers(world):
    _, panel, _, _ = world
    hits = dominance_test(panel.frame, TARGET, ["leak_future", *HONEST_USER], SETTINGS, attempt=0)
    assert [e.feature for e in hits] == ["leak_future"]
    ev = hits[0].evidence
    assert ev["rule"] == "abs_rank_ic"
    assert ev["rank_ic"] > 0.6 > SETTINGS.dominance_rank_ic == ev["threshold"]
    assert ev["median_abs_rank_ic"] < 0.1
    assert ev["ratio"] == pytest.approx(abs(ev["rank_ic"]) / ev["median_abs_rank_ic"], rel=1e-9)
    assert ev["folds"] == SETTINGS.n_splits


def test_leak_centered_user_column_evidence(world):
    _, _, att0, _ = world
    ev = _by_feature(att0)["leak_centered"].evidence
    assert ev["rule"] == "abs_rank_ic"
    assert ev["rank_ic"] > 0.5
    assert ev["rows"] > 3000


def test_honest_features_not_flagged(world):
    _, panel, att0, _ = world
    honest = set(HONEST_USER) | (set(panel.computed) & STANDARD_NAMES)
    assert len(honest) == 12 + 14
    assert not honest & att0.excluded()


def test_honest_signals_score_below_the_dominance_floor(world):
    _, panel, _, _ = world
    frame = panel.frame
    for signal in ("sig_a", "sig_b"):
        ic = rank_ic(frame[signal].to_numpy(), frame[TARGET].to_numpy())
        assert 0.05 < ic < DOMINANCE_FLOOR  # a real signal, but not an implausible one


def test_attempt_1_inherits_and_finds_no_new_leak(world):
    _, _, att0, att1 = world
    assert att1.attempt == 1
    assert att1.found_here() == ()
    assert att1.entries == att0.entries  # inherited unchanged, still stamped attempt 0
    assert att1.to_dict()["found_in_this_attempt"] == []


def test_next_attempt_decision(world):
    _, _, att0, att1 = world
    assert next_attempt(att0, 3) == 1
    assert next_attempt(att0, 2) == 1
    assert next_attempt(att1, 3) is None  # nothing new: the leaks are fixed
    assert next_attempt(att0, 1) is None  # limit reached
    assert next_attempt(Exclusions(TARGET, 2, att0.entries + ()), 5) is None


def test_round_trip_through_dict_json_and_yaml(world):
    _, _, att0, att1 = world
    for exclusions in (att0, att1):
        d = exclusions.to_dict()
        assert Exclusions.from_dict(d) == exclusions
        assert Exclusions.from_dict(json.loads(canonical_json(d))) == exclusions
        assert Exclusions.from_dict(yaml.safe_load(yaml.safe_dump(d, sort_keys=True))) == exclusions
    assert [e["feature"] for e in att0.to_dict()["excluded"]] == sorted(att0.excluded())


def test_detect_leaks_refuses_inconsistent_inheritance(world):
    universe, panel, att0, _ = world
    with pytest.raises(ValueError, match="cannot inherit from attempt 0"):
        detect_leaks(panel, TARGET, 10, panel.specs, universe.bars, SETTINGS, 0, att0)
    other = Exclusions("fwd_ret_5", 0, ())
    with pytest.raises(ValueError, match="are for 'fwd_ret_5'"):
        detect_leaks(panel, TARGET, 10, panel.specs, universe.bars, SETTINGS, 1, other)


def test_user_column_leaking_in_one_file_is_scoped_to_that_symbol():
    frames, _ = generate_frames(
        n_symbols=8, n_bars=600, n_noise=3, signal_horizon=10, seed=5, with_ohlcv=False
    )
    rng = np.random.default_rng(2)
    for symbol, frame in frames.items():
        close = frame["close"].to_numpy()
        fwd = np.r_[close[10:] / close[:-10] - 1.0, np.full(10, np.nan)]
        noise = rng.standard_normal(len(frame)) * 0.01
        frame["carry"] = np.where(np.isnan(fwd), 0.0, fwd) + noise if symbol == "SYN02" else noise
    universe = _universe(frames)
    settings = Settings(horizons=(10,))
    panel = build_panel(universe, settings)
    att0 = detect_leaks(panel, TARGET, 10, panel.specs, universe.bars, settings, 0, None)
    entry = _by_feature(att0)["carry"]
    assert (entry.reason, entry.symbols) == ("dominance", ("SYN02",))
    ev = entry.evidence["by_symbol"]["SYN02"]
    assert ev["rank_ic"] > ev["threshold"] >= settings.dominance_rank_ic
    assert "carry" in att0.excluded()  # a pooled model must not use it
    assert "carry" in att0.for_symbol("SYN02").excluded()
    assert "carry" not in att0.for_symbol("SYN00").excluded()
    assert "leak_future" in att0.for_symbol("SYN00").excluded()  # pooled entries apply everywhere


def test_name_rules():
    hits = name_rule_hits(
        [
            "ret_5",
            "future_x",
            "Fwd_ret_mean",
            "fwd_ret_5",
            "label_end_10",
            "MyTargetEnc",
            "volume_z",
        ],
        "fwd_ret_10",
        ("fwd_ret_5", "fwd_ret_10"),
        ("fwd_", "future", "target", "label"),
        attempt=2,
    )
    got = {e.feature: dict(e.evidence) for e in hits}
    assert got == {
        "Fwd_ret_mean": {"rule": "fwd_"},
        "MyTargetEnc": {"rule": "target"},
        "fwd_ret_5": {"rule": "target_name", "matches": "fwd_ret_5"},
        "future_x": {"rule": "future"},
        "label_end_10": {"rule": "target_name", "matches": "label_end_10"},
    }
    assert {e.attempt for e in hits} == {2}


def _bars(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "timestamp": pd.bdate_range("2020-01-01", periods=n).as_unit("ns"),
            "close": 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, n))),
        }
    )


def _spec(name: str, fn) -> FeatureSpec:
    return FeatureSpec(
        name=name,
        needs=("close",),
        compute=lambda b: pd.Series(fn(b["close"]), index=b.index),
        lookback=5,
    )


def test_lookahead_on_hand_made_specs_and_bounded_symbol_sample():
    bars = {f"S{i:02d}": _bars(300, i) for i in range(40)}
    specs = [
        _spec("mean_5", lambda c: c.rolling(5).mean()),
        _spec("peek_1", lambda c: c.shift(-1) / c - 1.0),  # tomorrow's return: NaN at the cut
        _spec("ewm_ratio", lambda c: c / c.ewm(halflife=10).mean()),
    ]
    hits = lookahead_test(bars, specs, n_cuts=4, attempt=0, max_symbols=5)
    assert [e.feature for e in hits] == ["peek_1"]
    ev = hits[0].evidence
    assert (ev["rows_changed"], ev["nan_mismatches"], ev["max_abs_diff"]) == (1, 1, 0.0)
    assert ev["first_changed"] == ev["cut"]
    assert ev["symbols_tested"] == ["S00", "S10", "S20", "S29", "S39"]  # evenly spread, sorted
    assert ev["cuts_tested"] == ev["cuts_changed"] == 20


def test_lookahead_sees_value_changes_not_only_nans():
    bars = {"A": _bars(200, 0)}
    # a full-sample z-score: every row changes when the future is cut off
    spec = _spec("zscore_all", lambda c: (c - c.mean()) / c.std())
    (hit,) = lookahead_test(bars, [spec], n_cuts=3, attempt=1)
    assert hit.attempt == 1
    assert hit.evidence["nan_mismatches"] == 0
    assert hit.evidence["max_abs_diff"] > 0.01
    assert hit.evidence["first_changed"] == "2020-01-01T00:00:00"


def test_average_ranks_match_pandas_with_ties_nans_and_groups():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5, 200).astype(float)
    values[rng.random(200) < 0.1] = np.nan
    groups = rng.integers(0, 4, 200)
    s = pd.Series(values)
    np.testing.assert_array_equal(average_ranks(values), s.rank(method="average").to_numpy())
    np.testing.assert_array_equal(
        average_ranks(values, groups), s.groupby(groups).rank(method="average").to_numpy()
    )


def test_exclusions_are_sorted_unique_and_bounded_by_attempt():
    a = Exclusion("b", "name_rule", {"rule": "fwd_"}, 0)
    b = Exclusion("a", "dominance", {"rank_ic": 0.123456789012345}, 1, ("Y", "X", "X"))
    ex = Exclusions("fwd_ret_5", 1, (a, b))
    assert [e.feature for e in ex.entries] == ["a", "b"]
    assert ex.entries[0].symbols == ("X", "Y")
    assert ex.entries[0].evidence == {"rank_ic": 0.123456789012}  # canonical 12 digits
    assert ex.found_here() == (ex.entries[0],)
    with pytest.raises(ValueError, match="excluded twice"):
        Exclusions("fwd_ret_5", 1, (a, a))
    with pytest.raises(ValueError, match="later attempt"):
        Exclusions("fwd_ret_5", 0, (b,))
    with pytest.raises(ValueError, match="unknown exclusion reason"):
        Exclusion("x", "vibes", {}, 0)
