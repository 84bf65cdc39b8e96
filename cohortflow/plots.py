"""Small PNG plots for Dagster's markdown metadata (matplotlib, Agg backend, no display).

Each function returns PNG bytes; :func:`markdown_image` embeds them as a data URI, which
the Dagster UI renders inline in an asset's metadata.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

_STYLE = {"figure.dpi": 90, "font.size": 8, "axes.spines.top": False, "axes.spines.right": False}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # no timestamps in the PNG: the same plot gives the same bytes
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def markdown_image(png: bytes, alt: str = "plot") -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def importance_bars(by_model: Mapping[str, pd.DataFrame], title: str, top: int = 12) -> bytes:
    """Horizontal bars of the normalised share per model for the top features."""
    models = [m for m in ("lightgbm", "xgboost", "permutation", "combined") if m in by_model]
    models += [m for m in sorted(by_model) if m not in models]
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(
            1, len(models), figsize=(3.8 * len(models), 3.6), squeeze=False, layout="constrained"
        )
        for ax, model in zip(axes[0], models, strict=True):
            frame = by_model[model].head(top).iloc[::-1]
            ax.barh(frame["feature"], frame["share"], color="#4c72b0")
            ax.set_title(model)
            ax.set_xlabel("share")
        fig.suptitle(title)
        return _png(fig)


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, ylabel: str) -> bytes:
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(
            figsize=(max(3.0, 0.8 * len(labels) + 1.5), 2.8), layout="constrained"
        )
        colors = ["#55a868" if v >= 0 else "#c44e52" for v in values]
        ax.bar(list(labels), list(values), color=colors)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", rotation=30)
        return _png(fig)


def grouped_bars(table: pd.DataFrame, title: str, ylabel: str) -> bytes:
    """``table``: index = groups (x axis), columns = series."""
    with plt.rc_context(_STYLE):
        width = max(3.5, 0.9 * len(table) * max(1, len(table.columns)) / 2 + 2)
        fig, ax = plt.subplots(figsize=(width, 3.0), layout="constrained")
        table.plot.bar(ax=ax, rot=0, width=0.8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, frameon=False)
        return _png(fig)
