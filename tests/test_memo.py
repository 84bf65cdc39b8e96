"""Results kept by the fingerprint of their inputs: the same inputs read the stored result
(identical frames, no fit), any changed input computes again."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cohortflow import fitlog
from cohortflow.memo import MemoryCache, columns_fingerprint, memo_key
from cohortflow.selection import (
    cached_importances,
    compute_importances,
    importances_from_bytes,
    importances_to_bytes,
)
from cohortflow.settings import Settings

TARGET = "fwd_ret_5"
FEATURES = ["f0", "f1", "f2"]
SETTINGS = Settings(horizons=(5,), n_splits=3, quick_estimators=10, n_probes=2, n_threads=1)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2020-01-01", periods=150).as_unit("ns")
    n = dates.size * 2
    x = rng.standard_normal((n, 3))
    ts = np.repeat(dates.to_numpy(), 2)
    return pd.DataFrame(
        {
            "timestamp": ts,
            "symbol": np.tile(["AAA", "BBB"], dates.size),
            "f0": x[:, 0],
            "f1": x[:, 1],
            "f2": x[:, 2],
            TARGET: 0.3 * x[:, 0] + rng.standard_normal(n),
            "label_end_5": ts + np.timedelta64(7, "D"),
        }
    )


def test_the_memory_cache_counts_and_drops_the_least_recently_used() -> None:
    cache = MemoryCache(max_bytes=10)
    cache.put("a", b"1234")
    cache.put("b", b"5678")
    assert cache.get("a") == b"1234"  # a is now the most recent
    cache.put("c", b"9012")  # 12 bytes > 10: b goes
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (b"1234", b"9012")
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)
    cache.put("huge", b"x" * 11)  # larger than the whole cache: not kept
    assert cache.get("huge") is None and len(cache) == 2


def test_a_fingerprint_is_the_content_not_the_index_or_the_dtype_of_the_symbols(frame) -> None:
    cols = ["timestamp", "symbol", "f0"]
    base = columns_fingerprint(frame, cols)
    shifted = frame.set_axis(np.arange(len(frame)) + 100)
    assert columns_fingerprint(shifted, cols) == base
    cat = frame.assign(symbol=frame["symbol"].astype("category"))
    assert columns_fingerprint(cat, cols) == base
    changed = frame.copy()
    changed.loc[7, "f0"] += 1e-12
    assert columns_fingerprint(changed, cols) != base
    assert columns_fingerprint(frame, ["symbol", "timestamp", "f0"]) != base  # order counts
    assert columns_fingerprint(frame.iloc[:-1], cols) != base
    with pytest.raises(KeyError, match="nope"):
        columns_fingerprint(frame, ["nope"])


def test_memo_keys_are_hex_and_depend_on_kind_version_and_inputs() -> None:
    key = memo_key("importances", 1, {"a": 1})
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == memo_key("importances", 1, {"a": 1})
    assert len({key, memo_key("importances", 2, {"a": 1}), memo_key("x", 1, {"a": 1})}) == 3
    assert memo_key("importances", 1, {"a": 2}) != key


def test_importances_read_back_exactly(frame) -> None:
    imps = compute_importances(frame, TARGET, 5, FEATURES, SETTINGS)
    back = importances_from_bytes(importances_to_bytes(imps))
    assert list(back) == list(imps)
    for model, df in imps.items():
        pd.testing.assert_frame_equal(back[model], df, check_exact=True)


def test_the_same_inputs_are_read_not_refit_and_any_change_refits(frame) -> None:
    cache = MemoryCache()
    first = cached_importances(cache, frame, TARGET, 5, FEATURES, SETTINGS)
    before = fitlog.snapshot()
    again = cached_importances(cache, frame, TARGET, 5, FEATURES, SETTINGS.replace(n_threads=2))
    assert fitlog.snapshot() - before == fitlog.FitCounts()  # no fit, no prediction
    assert (cache.hits, cache.misses) == (1, 1)
    for model in first:
        pd.testing.assert_frame_equal(again[model], first[model], check_exact=True)

    changed = frame.copy()
    changed.loc[3, "f2"] = 0.0
    for args in (
        (changed, FEATURES, SETTINGS),
        (frame, ["f1", "f0", "f2"], SETTINGS),  # the order of the features counts
        (frame, FEATURES, SETTINGS.replace(seed=8)),
        (frame, FEATURES, SETTINGS.replace(device="cuda", lightgbm_device="cpu")),
    ):
        misses = cache.misses
        data, feats, settings = args
        cached_importances(cache, data, TARGET, 5, feats, settings)
        assert cache.misses == misses + 1
