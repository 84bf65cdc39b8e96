"""The metadata plots: PNG bytes, the same bytes for the same input, every model drawn."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cohortflow import plots


def _importances(models: list[str], n: int = 20) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    out = {}
    for m in models:
        share = np.sort(rng.random(n))[::-1]
        out[m] = pd.DataFrame(
            {"feature": [f"f{i:02d}" for i in rng.permutation(n)], "share": share / share.sum()}
        )
    return out


def test_importance_bars_is_a_stable_png() -> None:
    by_model = _importances(["lightgbm", "xgboost", "permutation", "combined"])
    png = plots.importance_bars(by_model, "fwd_ret_5: importances")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert plots.importance_bars(by_model, "fwd_ret_5: importances") == png


def test_importance_bars_follows_the_combined_ranking() -> None:
    by_model = _importances(["lightgbm", "combined"])
    # another model's order, the same shares: a different picture
    swapped = dict(by_model, combined=by_model["lightgbm"])
    assert plots.importance_bars(by_model, "t") != plots.importance_bars(swapped, "t")


def test_importance_bars_without_combined_or_with_missing_features() -> None:
    by_model = _importances(["xgboost", "lightgbm"])
    by_model["xgboost"] = by_model["xgboost"].head(3)  # features it does not rank draw as 0
    assert plots.importance_bars(by_model, "t").startswith(b"\x89PNG")


def test_markdown_image_embeds_the_bytes() -> None:
    png = plots.bar_chart(["a", "b"], [0.5, -0.25], "weights", "weight")
    md = plots.markdown_image(png, alt="weights")
    assert md.startswith("![weights](data:image/png;base64,") and md.endswith(")")
