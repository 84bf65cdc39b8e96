"""Feature selection: signals kept on top, noise and probes pruned, near-duplicates dropped,
the same inputs giving identical importances and featuresets.

Truth (cohortflow.synthetic): sig_a, sig_b predict fwd_ret_10; noise_00..09 are AR(1) noise
with persistence 0 .. 0.95; sig_a_dup is sig_a plus tiny noise (|rho| ~ 0.999).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohortflow.bars import Universe
from cohortflow.canonical import canonical_json
from cohortflow.features import build_panel
from cohortflow.selection import (
    COMBINED,
    MODELS,
    Featureset,
    compute_importances,
    make_probes,
    probe_persistence,
    prune,
    select_features,
)
from cohortflow.settings import Settings
from cohortflow.synthetic import generate_frames

TARGET = "fwd_ret_10"
SETTINGS = Settings(horizons=(10,), quick_estimators=50)  # fewer trees: a quick test
NOISE = tuple(f"noise_{j:02d}" for j in range(10))
SIGNALS = ("sig_a", "sig_b")
FEATURES = (*SIGNALS, "sig_a_dup", *NOISE)


@pytest.fixture(scope="module")
def panel_frame() -> pd.DataFrame:
    frames, _ = generate_frames(
        n_symbols=6, n_bars=800, n_noise=10, signal_horizon=10, seed=3, with_ohlcv=False
    )
    rng = np.random.default_rng(4)
    for frame in frames.values():
        frame["sig_a_dup"] = frame["sig_a"] + 0.05 * rng.standard_normal(len(frame))
    universe = Universe(
        symbols=tuple(sorted(frames)),
        files=(),
        bars=frames,
        skipped=(),
        data_dir=Path("/nonexistent"),
    )
    return build_panel(universe, SETTINGS).frame


@pytest.fixture(scope="module")
def selected(panel_frame):
    return select_features(
        panel_frame,
        TARGET,
        10,
        (*FEATURES, "leak_future"),
        "CROSS_SECTIONAL",
        None,
        SETTINGS,
        excluded={"leak_future"},
    )


def test_importance_frames_have_the_contract_shape(selected):
    importances, _ = selected
    assert set(importances) == {*MODELS, COMBINED}
    probes = {f"probe_{i}" for i in range(SETTINGS.n_probes)}
    for name, df in importances.items():
        extra = ["t_stat"] if name == "permutation" else []
        assert list(df.columns) == ["feature", "importance", "rank", "share", *extra], name
        assert set(df["feature"]) == set(FEATURES) | probes  # excluded leak never ranked
        assert df["rank"].tolist() == list(range(1, len(df) + 1))
        order = df.sort_values(["importance", "feature"], ascending=[False, True], kind="mergesort")
        assert df["feature"].tolist() == order["feature"].tolist()
        assert df["share"].sum() == pytest.approx(1.0)
        assert (df.loc[df["importance"] <= 0, "share"] == 0).all()


def test_signals_kept_at_the_top_of_combined(selected):
    importances, fs = selected
    combined = importances[COMBINED]["feature"].tolist()
    real = [f for f in combined if not f.startswith("probe_")]
    assert set(real[:3]) == {"sig_a", "sig_b", "sig_a_dup"}
    # sig_a and sig_a_dup (rho 0.999) are one signal: whichever ranks higher stays, once
    pair = {"sig_a", "sig_a_dup"} & set(fs.kept)
    assert len(pair) == 1, fs.kept
    assert set(fs.kept[:2]) == {"sig_b", *pair}  # kept in combined order
    assert fs.kept == tuple(f for f in combined if f in fs.kept)


def test_noise_pruned_and_probes_never_kept(selected):
    _, fs = selected
    pruned = [n for n in NOISE if n not in fs.kept]
    assert len(pruned) >= 7, fs.kept
    assert all(fs.dropped[n].startswith(("below_probe: ", "inconsistent: ")) for n in pruned)
    assert not [f for f in fs.kept if f.startswith("probe_")]
    assert fs.dropped["leak_future"] == "excluded_leak"


def test_near_duplicate_dropped_as_correlated(selected):
    _, fs = selected
    assert ("sig_a" in fs.kept) != ("sig_a_dup" in fs.kept)
    kept, dup = ("sig_a", "sig_a_dup") if "sig_a" in fs.kept else ("sig_a_dup", "sig_a")
    reason = fs.dropped[dup]
    assert reason.startswith("correlated: |rho|=0.99") and reason.endswith(f"with {kept} (kept)")


def test_featureset_record(selected):
    _, fs = selected
    d = fs.to_dict()
    assert d["features"] == list(fs.kept)
    assert d["n_kept"] + d["n_dropped"] == len(FEATURES) + 1
    assert [x["feature"] for x in d["dropped"]] == sorted(fs.dropped)
    assert d["rule"]["corr_threshold"] == SETTINGS.corr_threshold
    assert d["rule"]["n_probes"] == SETTINGS.n_probes
    assert d["rule"]["best_probe"].startswith("probe_")
    assert Featureset.from_dict(json.loads(canonical_json(d))) == fs


def test_deterministic(panel_frame, selected):
    importances, fs = selected
    again, fs2 = select_features(
        panel_frame,
        TARGET,
        10,
        (*FEATURES, "leak_future"),
        "CROSS_SECTIONAL",
        None,
        SETTINGS,
        excluded={"leak_future"},
    )
    assert fs2 == fs
    for name, df in importances.items():
        pd.testing.assert_frame_equal(again[name], df, check_exact=True)


def test_prune_gives_the_same_featureset_from_importances_read_back_from_csv(panel_frame, selected):
    importances, fs = selected
    read_back = {
        name: pd.read_csv(io.StringIO(df.to_csv(index=False))) for name, df in importances.items()
    }
    features = (*FEATURES, "leak_future")
    again = prune(
        read_back, panel_frame, features, TARGET, "CROSS_SECTIONAL", None, SETTINGS, {"leak_future"}
    )
    assert again == fs


def test_symbol_specific_view_on_pure_noise_keeps_one_real_feature(panel_frame):
    settings = SETTINGS.replace(quick_estimators=40, permutation_repeats=1, n_splits=3)
    one = panel_frame[panel_frame["symbol"] == "SYN00"].reset_index(drop=True)
    importances, fs = select_features(
        one, TARGET, 10, NOISE[:4], "SYMBOL_SPECIFIC", "SYN00", settings
    )
    assert (fs.view, fs.symbol) == ("SYMBOL_SPECIFIC", "SYN00")
    # nothing beats the probes (a 0.99-persistent probe "predicts" a lone series' held-out
    # blocks), so the rule keeps the best real feature rather than nothing
    assert fs.rule["fallback_top1"] is True
    real = [f for f in importances[COMBINED]["feature"] if not f.startswith("probe_")]
    assert fs.kept == (real[0],)
    assert set(fs.dropped) == set(NOISE[:4]) - {real[0]}


def _imp(order: list[str], perm: dict[str, tuple[float, float]]) -> dict[str, pd.DataFrame]:
    """Hand-made importances: gain models and combined follow ``order``; permutation is
    ``perm[feature] = (importance, t_stat)``."""
    n = len(order)
    frames = {}
    for model in (*MODELS, COMBINED):
        if model == "permutation":
            df = pd.DataFrame({"feature": order, "importance": [perm[f][0] for f in order]})
            df["t_stat"] = [perm[f][1] for f in order]
        else:
            df = pd.DataFrame({"feature": order, "importance": np.linspace(1.0, 0.1, n)})
        df = df.sort_values(["importance", "feature"], ascending=[False, True]).reset_index(
            drop=True
        )
        df.insert(2, "rank", np.arange(1, n + 1))
        df.insert(3, "share", df["importance"].clip(lower=0) / df["importance"].clip(lower=0).sum())
        frames[model] = df
    return frames


def test_prune_rule_on_hand_made_importances():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(500)
    frame = pd.DataFrame(
        {
            "a": base,
            "a_copy": base + 1e-3 * rng.standard_normal(500),
            "b": rng.standard_normal(500),
            "c": rng.standard_normal(500),
            "d": rng.standard_normal(500),
            "fwd_ret_5": rng.standard_normal(500),
        }
    )
    perm = {
        "a": (0.05, 6.0),
        "a_copy": (0.04, 5.0),
        "probe_0": (0.002, 1.0),  # the best probe sets the bar
        "b": (0.03, 3.0),
        "c": (0.01, 1.5),  # above the bar, but not fold after fold
        "probe_1": (-0.01, -1.0),
        "d": (0.001, 4.0),  # consistent but below the best probe
    }
    importances = _imp(list(perm), perm)
    fs = prune(
        importances,
        frame,
        ["a", "a_copy", "b", "c", "d", "e"],
        "fwd_ret_5",
        "CROSS_SECTIONAL",
        None,
        SETTINGS,
        excluded=["e"],
    )
    assert fs.kept == ("a", "b")
    assert fs.dropped == {
        "a_copy": "correlated: |rho|=1.000 with a (kept)",
        "c": "inconsistent: permutation t-stat over folds 1.50 < 2",
        "d": "below_probe: permutation importance 0.001 <= 0.002 (best probe probe_0, or 0); combined rank 7",
        "e": "excluded_leak",
    }
    assert (
        fs.rule["best_probe"],
        fs.rule["best_probe_rank"],
        fs.rule["probe_permutation_bar"],
    ) == ("probe_0", 3, 0.002)


def test_prune_never_drops_everything():
    frame = pd.DataFrame(
        {"x": np.arange(50.0), "y": np.arange(50.0)[::-1], "fwd_ret_5": np.ones(50)}
    )
    importances = _imp(
        ["y", "probe_0", "x"], {"y": (-0.01, -1.0), "probe_0": (0.0, 0.0), "x": (-0.02, -2.0)}
    )
    fs = prune(importances, frame, ["x", "y"], "fwd_ret_5", "CROSS_SECTIONAL", None, SETTINGS)
    assert fs.kept == ("y",)
    assert fs.rule["fallback_top1"] is True
    assert fs.dropped == {
        "x": "below_probe: permutation importance -0.02 <= 0 (best probe probe_0, or 0); combined rank 3"
    }


def test_probes_are_seeded_persistent_per_symbol_paths():
    symbols = pd.Series(np.tile(["A", "B"], 3000))
    probes = make_probes(symbols, 3, seed=7)
    assert probes.shape == (6000, 3)
    np.testing.assert_array_equal(probes, make_probes(symbols, 3, seed=7))
    assert probe_persistence(3) == pytest.approx([0.0, 0.9, 0.99])
    a = probes[symbols.to_numpy() == "A"]
    lag1 = [np.corrcoef(a[1:, i], a[:-1, i])[0, 1] for i in range(3)]
    assert abs(lag1[0]) < 0.1 and 0.85 < lag1[1] < 0.95 and lag1[2] > 0.95


def test_compute_importances_refuses_probe_named_features(panel_frame):
    frame = panel_frame.rename(columns={"noise_00": "probe_0"})
    with pytest.raises(ValueError, match="use the probe names"):
        compute_importances(frame, TARGET, 10, ["probe_0", "sig_a"], SETTINGS)


def test_featureset_validates_view_and_symbol():
    with pytest.raises(ValueError, match="needs symbol"):
        Featureset(TARGET, "SYMBOL_SPECIFIC", None, ("a",))
    with pytest.raises(ValueError, match="view must be"):
        Featureset(TARGET, "POOLED", None, ("a",))
    with pytest.raises(ValueError, match="both kept and dropped"):
        Featureset(TARGET, "CROSS_SECTIONAL", None, ("a",), {"a": "x"})


def _brute_force_drops(model, X, y, settings, fold):
    """Permutation drops the plain way: the whole model on each shuffled copy."""
    from cohortflow.leakage import rank_ic

    booster = model.booster_
    base = rank_ic(booster.predict(X), y)
    drops = []
    for j in range(X.shape[1]):
        rng = np.random.default_rng([settings.seed, fold, j])
        diffs = []
        for _ in range(settings.permutation_repeats):
            shuffled = X.copy()
            shuffled[:, j] = X[rng.permutation(len(X)), j]
            diffs.append(base - rank_ic(booster.predict(shuffled), y))
        drops.append(np.mean(diffs))
    return np.array(drops)


def test_permutation_drops_are_bit_for_bit_the_whole_models_on_shuffled_copies():
    from cohortflow.models import lightgbm_regressor
    from cohortflow.selection import _permutation_drop, _Trees

    rng = np.random.default_rng(5)
    X = rng.standard_normal((1500, 6))
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values take the default branch
    X[:, 4] = np.round(X[:, 4])  # zeros and ties
    X[:, 5] = 0.0  # a column no tree can split on
    y = np.nan_to_num(X[:, 0]) + 0.5 * np.nan_to_num(X[:, 1]) + rng.standard_normal(1500)
    settings = Settings(n_threads=1, permutation_repeats=2)
    model = lightgbm_regressor(settings, n_estimators=40).fit(X[:1000], y[:1000])
    held, y_held = X[1000:], y[1000:]
    # the trees read back from the model text give LightGBM's own predictions exactly
    trees = _Trees.read(model.booster_)
    leaves = model.booster_.predict(held, pred_leaf=True)
    total = np.zeros(len(held))
    for t, values in enumerate(trees.leaf_values):
        total += values[leaves[:, t]]
    np.testing.assert_array_equal(total, model.booster_.predict(held))
    assert not any(5 in f for f in trees.features)

    got = _permutation_drop(model.booster_, held, y_held, settings, fold=3)
    want = _brute_force_drops(model, held, y_held, settings, 3)
    np.testing.assert_array_equal(got, want)
    assert got[5] == 0.0 and got[0] > got[2]


def test_views_fitted_as_one_batch_equal_each_view_alone(panel_frame):
    from cohortflow.selection import compute_importances_many

    symbols = sorted(panel_frame["symbol"].astype(str).unique())[:2]
    frames = [panel_frame, *(panel_frame[panel_frame["symbol"] == s] for s in symbols)]
    settings = SETTINGS.replace(quick_estimators=8, permutation_repeats=1, n_splits=3)
    together = compute_importances_many(frames, TARGET, 10, FEATURES, settings)
    alone = [
        compute_importances(f, TARGET, 10, FEATURES, settings.replace(fold_workers=1))
        for f in frames
    ]
    assert len(together) == 3
    for a, b in zip(together, alone, strict=True):
        for model in b:
            pd.testing.assert_frame_equal(a[model], b[model], check_exact=True)
