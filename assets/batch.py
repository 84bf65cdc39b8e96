"""Attempt-independent assets: bars and the feature panel of a universe batch.

They are partitioned like everything else (batch × attempt) so that one run covers one
whole attempt and one partitions definition serves every job, backfill and sensor; the
store keeps a single copy per batch (``_work/batch_{sig12}/``), so every attempt of a
batch reads the same bytes.
"""

from dagster import AssetExecutionContext, MetadataValue, asset

from assets.partitions import attempt_partitions, split_key
from cohortflow.bars import Universe
from cohortflow.features import Panel, build_panel
from cohortflow.intake import load_registered
from cohortflow.registry import BatchRegistry
from io_managers.keys import KIND_KEY as KIND
from resources.cohortflow import CohortflowResource


@asset(
    partitions_def=attempt_partitions,
    group_name="data",
    kinds={"pandas", "parquet"},
    metadata={KIND: "universe_bars"},
    description="The validated bars of the universe batch: exactly the files registered for it, "
    "checked against their sha256.",
)
def universe_bars(context: AssetExecutionContext, cohortflow: CohortflowResource) -> Universe:
    batch, _ = split_key(context.partition_key)
    record = BatchRegistry(cohortflow.output_root).get(batch)
    universe = load_registered(cohortflow.data_dir, record)
    BatchRegistry(cohortflow.output_root).check(batch, universe.universe_sig)
    context.add_output_metadata(
        {
            "universe_sig": universe.universe_sig,
            "symbols": ", ".join(universe.symbols),
            "n_symbols": len(universe.symbols),
            "files": MetadataValue.md(
                "\n".join(f"- `{f.path.name}` sha256 `{f.sha256[:12]}`" for f in universe.files)
            ),
        }
    )
    return universe


@asset(
    partitions_def=attempt_partitions,
    group_name="data",
    kinds={"pandas", "parquet"},
    metadata={KIND: "feature_panel"},
    description="Features (standard, leak-free; the user's own columns) and targets fwd_ret_{h}.",
)
def feature_panel(
    context: AssetExecutionContext, cohortflow: CohortflowResource, universe_bars: Universe
) -> Panel:
    panel = build_panel(universe_bars, cohortflow.settings())
    frame = panel.frame
    context.add_output_metadata(
        {
            "rows": len(frame),
            "computed_features": ", ".join(panel.computed),
            "user_features": ", ".join(panel.user) or "none",
            "targets": ", ".join(panel.targets),
            "first_bar": str(frame["timestamp"].min()),
            "last_bar": str(frame["timestamp"].max()),
        }
    )
    return panel
