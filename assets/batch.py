"""Attempt-independent assets: bars and the feature panel of a universe batch.

They are partitioned like everything else (batch × attempt) so that one run covers one
whole attempt and one partitions definition serves every job, backfill and sensor; the
store keeps a single copy per batch (``_work/batch_{sig12}/``), so every attempt of a
batch reads the same bytes.
"""


from dagster import AssetExecutionContext, MetadataValue, asset

from assets.partitions import attempt_partitions, split_key
from cohortflow.bars import Universe, load_universe
from cohortflow.errors import DataError
from cohortflow.features import Panel, build_panel
from cohortflow.registry import BatchRegistry
from resources.cohortflow import CohortflowResource

KIND = "cohortflow/kind"


@asset(
    partitions_def=attempt_partitions,
    group_name="data",
    kinds={"pandas", "parquet"},
    metadata={KIND: "universe_bars"},
    description="The validated bars of the symbols actually loaded for this universe batch.",
)
def universe_bars(context: AssetExecutionContext, cohortflow: CohortflowResource) -> Universe:
    batch, _ = split_key(context.partition_key)
    settings = cohortflow.settings()
    universe = load_universe(cohortflow.data_dir, settings)
    if universe.batch != batch:
        raise DataError(
            cohortflow.data_dir,
            f"the folder now holds universe batch {universe.batch} ({', '.join(universe.symbols)}), "
            f"not batch {batch}; the data sensor registers a new universe as its own partition",
        )
    BatchRegistry(cohortflow.output_root).check(batch, universe.universe_sig)
    for skipped in universe.skipped:
        context.log.warning(f"left out {skipped.symbol}: {skipped.reason}")
    context.add_output_metadata(
        {
            "universe_sig": universe.universe_sig,
            "symbols": ", ".join(universe.symbols),
            "n_symbols": len(universe.symbols),
            "skipped": MetadataValue.md(
                "\n".join(f"- {k.symbol}: {k.reason}" for k in universe.skipped) or "none"
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
