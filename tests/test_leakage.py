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
from scipy.stats import spearmanr

from cohortflow.bars import Universe, load_universe
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
    LEAD_ABS_IC,
    LEAD_RETURN_IC,
    LEAD_Z,
    Exclusion,
    Exclusions,
    average_ranks,
    bar_returns,
    detect_leaks,
    dominance_test,
    lead_profile_test,
    lead_profiles,
    lookahead_test,
    name_rule_hits,
    next_attempt,
    rank_ic,
)
from cohortflow.sampledata import write_sample_universe
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


# --------------------------------------------------------------------------------------------
# lead profile


def test_lead_profiles_are_spearman_per_date_and_per_symbol():
    """The vectorised profile against scipy's spearmanr, one date / one symbol at a time."""
    frames, _ = generate_frames(n_symbols=5, n_bars=160, n_noise=1, seed=3, with_ohlcv=False)
    rng = np.random.default_rng(0)
    for frame in frames.values():
        holes = frame["noise_00"].to_numpy().copy()
        holes[rng.random(len(frame)) < 0.1] = np.nan  # its own rows: a second NaN pattern
        frame["holes"] = holes
    panel = build_panel(_universe(frames), Settings(horizons=(3,)))
    frame = panel.frame
    h = 3
    profiles = lead_profiles(frame, ["sig_a", "holes"], bar_returns(frame), h)
    assert profiles.scopes == ("pooled", *sorted(frames))
    assert profiles.ic.shape == (2, 6, 2, 2 * h)
    # the rows used: all 2h future bars known (per symbol, in its own bars) and x finite
    ordered = frame.assign(sym=frame["symbol"].astype(str)).reset_index()
    ordered = ordered.sort_values(["sym", "timestamp"])
    r1 = ordered["ret_1"]
    for j, col in enumerate(["sig_a", "holes"]):
        for kind in (0, 1):
            for lead in (1, 2, 6):
                fwd = r1.groupby(ordered["sym"]).shift(-lead)
                if kind:
                    fwd = fwd.abs()
                full = (
                    pd.concat(
                        [r1.groupby(ordered["sym"]).shift(-k) for k in range(1, 2 * h + 1)], axis=1
                    )
                    .notna()
                    .all(axis=1)
                )
                rows = ordered.loc[full & ordered[col].notna()].assign(fwd=fwd)
                per_symbol = [spearmanr(g[col], g["fwd"]).statistic for _, g in rows.groupby("sym")]
                np.testing.assert_allclose(
                    profiles.ic[kind, 1:, j, lead - 1], per_symbol, rtol=1e-10, atol=1e-12
                )
                per_date = [
                    spearmanr(g[col], g["fwd"]).statistic
                    for _, g in rows.groupby("timestamp")
                    if len(g) >= 3
                ]
                assert profiles.ic[kind, 0, j, lead - 1] == pytest.approx(
                    np.mean(per_date), rel=1e-10, abs=1e-12
                )
    # the per-symbol standard error: 1 / sqrt(n - 1) of the rows used
    n = profiles.n[1:, 0]
    np.testing.assert_allclose(profiles.se[1:, 0], 1.0 / np.sqrt(n - 1.0))


LEAK_KINDS_ALL = ("shifted_ret_5", "one_symbol", "centered_5", "vol_next_5")


@pytest.fixture(scope="module")
def leak_world():
    """8 symbols x 1500 bars (SYN03: 1000), signals at H = 10, every planted leak kind."""
    frames, truth = generate_frames(
        n_symbols=8, n_bars=1500, n_noise=10, signal_horizon=10, seed=0, leak_kinds=LEAK_KINDS_ALL
    )
    universe = _universe(frames)
    settings = Settings(horizons=(5, 10, 20))
    return universe, truth, build_panel(universe, settings), settings


@pytest.mark.parametrize("h", [5, 20])
def test_lead_profile_catches_every_planted_leak_and_no_honest_column(leak_world, h):
    _, truth, panel, _ = leak_world
    hits = _by_feature(
        Exclusions(f"fwd_ret_{h}", 0, tuple(lead_profile_test(panel.frame, panel.user, h, 0)))
    )
    assert set(hits) == set(truth.leak_features)  # sig_a, sig_b, noise_00..09: none
    for name, entry in hits.items():
        ev = entry.evidence
        assert (entry.reason, ev["test"], ev["horizon"]) == ("lead_profile", "lead_profile", h)
        if name == "leak_one_symbol":  # the leak is in SYN03's file only
            assert entry.symbols == ("SYN03",) and ev["scope"] == "symbols"
            assert set(ev["by_symbol"]) == {"SYN03"}
            ev = ev["by_symbol"]["SYN03"]
        else:
            assert entry.symbols == () and ev["scope"] == "pooled"
        assert ev["score"] > ev["threshold"] and ev["z"] > ev["z_threshold"] == LEAD_Z
        assert ev["leads"][0] == 1 and 1 <= ev["lead"] <= ev["leads"][1] <= h
    shifted = hits["leak_shifted_ret_5"].evidence
    # a copy of the next bar: the block is lead 1 alone, IC ~0.45 x the idiosyncratic share
    assert (shifted["kind"], shifted["leads"], shifted["lead"]) == ("return", [1, 1], 1)
    assert shifted["rank_ic"] > 0.3 and shifted["threshold"] == LEAD_RETURN_IC
    centered = hits["leak_centered_5"].evidence  # copies bars t+1 .. t+5
    assert centered["kind"] == "return" and centered["leads"][1] >= 5
    vol = hits["leak_vol_next_5"].evidence  # no signed IC: only |return| gives it away
    assert vol["kind"] == "abs_return" and vol["threshold"] == LEAD_ABS_IC
    assert vol["leads"][1] <= 5 and vol["rank_ic"] > 0.25


def test_detect_leaks_catches_what_the_dominance_test_misses(leak_world):
    """Issue 17's three misses, at the horizons the issue names."""
    universe, truth, panel, settings = leak_world
    h5 = detect_leaks(panel, "fwd_ret_5", 5, panel.specs, universe.bars, settings, 0, None)
    found = {e.feature: e for e in h5.found_here()}
    # a 5-bar return shifted one bar back: rank IC ~0.2 with fwd_ret_5, under the dominance
    # test's 0.3, but ~0.38 against the next bar alone
    dom = dominance_test(panel.frame, "fwd_ret_5", panel.user, settings, 0, 5, panel.user)
    assert "leak_shifted_ret_5" not in {e.feature for e in dom}
    assert "leak_one_symbol" not in {e.feature for e in dom}  # IC 0.3 < 5 sqrt(5 / rows)
    assert found["leak_shifted_ret_5"].reason == "lead_profile"
    assert (found["leak_one_symbol"].reason, found["leak_one_symbol"].symbols) == (
        "lead_profile",
        ("SYN03",),
    )
    assert found["leak_vol_next_5"].reason == "lead_profile"
    honest = {*truth.signal_features, *truth.noise_features} | (
        set(panel.computed) & STANDARD_NAMES
    )
    assert not honest & h5.excluded()
    assert set(truth.leak_features) <= h5.excluded()
    # the YAML the run writes carries the lead-profile evidence and reads back unchanged
    d = yaml.safe_load(yaml.safe_dump(h5.to_dict(), sort_keys=True))
    assert Exclusions.from_dict(d) == h5
    entry = next(e for e in d["excluded"] if e["feature"] == "leak_shifted_ret_5")
    assert entry["reason"] == "lead_profile" and entry["evidence"]["lead"] == 1
    assert h5.summary()["by_reason"]["lead_profile"] >= 3


@pytest.mark.slow
def test_lead_profile_flags_nothing_on_the_real_data_but_the_demo_leak(tmp_path):
    """The built-in real data (AAPL, GOOG, IBM, MSFT 2000-2013): every computed column put
    through the lead profile as if it were a user column; only the demo's deliberate leak
    (a centered mean of returns t-5..t+5) is flagged. In a run, detect_leaks excludes it by
    the look-ahead test first (it is a computed feature)."""
    settings = Settings(demo_leak=True)
    write_sample_universe(tmp_path)
    universe = load_universe(tmp_path, settings)
    panel = build_panel(universe, settings)
    frame = panel.frame
    for h in settings.horizons:
        found = lead_profile_test(frame, panel.computed, h, 0)
        assert [e.feature for e in found] == [DEMO_LEAK], h
        assert found[0].symbols == () and found[0].evidence["scope"] == "pooled"
    verdict = detect_leaks(panel, "fwd_ret_20", 20, panel.specs, universe.bars, settings, 0, None)
    assert {e.feature: e.reason for e in verdict.entries} == {DEMO_LEAK: "lookahead"}
