"""The attempt's data: its validated bars and the feature panel (one step).

Partitioned like everything else (batch × attempt), so one run covers one whole attempt.
The step first checks the attempt against its record (:func:`cohortflow.intake.
prepare_attempt`): a hand-typed partition key that names no registered batch or attempt,
or a run whose bars, settings or code differ from a sealed attempt's, fails here, before
anything is written.
"""

import pandas as pd
from dagster import AssetExecutionContext, AssetKey, AssetOut, AssetsDefinition, Output, multi_asset

from cohortflow.domain import ArtifactKind, Step, roles_of
from cohortflow.features import build_panel
from cohortflow.intake import prepare_attempt
from cohortflow.version import code_version
from cohortflow_dagster.io_managers.keys import KIND_KEY, STEP_TAG
from cohortflow_dagster.metadata import frame_facts, joined, table
from cohortflow_dagster.partitions import attempt_partitions, key_of
from cohortflow_dagster.resources.cohortflow import CohortflowResource

K = ArtifactKind
DESCRIPTIONS = {
    K.UNIVERSE_BARS: "The validated bars of the universe batch: exactly the files recorded "
    "for this attempt, checked against their sha256.",
    K.FEATURE_PANEL: "Features (standard, leak-free; the user's own columns) and targets "
    "fwd_ret_{h}, one row per bar and symbol.",
}


def build_data_assets() -> AssetsDefinition:
    @multi_asset(
        name=Step.DATA.value,
        outs={
            role.name: AssetOut(
                key=AssetKey(role.name),
                metadata={KIND_KEY: role.kind.value},
                group_name="data",
                description=DESCRIPTIONS[role.kind],
                kinds={"pandas", "parquet"},
                tags={STEP_TAG: Step.DATA.value},
                is_required=False,
                code_version=code_version(),
            )
            for role in roles_of(Step.DATA)
        },
        internal_asset_deps={
            K.UNIVERSE_BARS.value: set(),
            K.FEATURE_PANEL.value: {AssetKey(K.UNIVERSE_BARS.value)},
        },
        partitions_def=attempt_partitions,
        can_subset=True,
        op_tags={"cohortflow/step": Step.DATA.value},
    )
    def data(context: AssetExecutionContext, cohortflow: CohortflowResource):
        key = key_of(context.partition_key)
        settings = cohortflow.settings()
        universe, record = prepare_attempt(
            cohortflow.output_root, cohortflow.data_dir, key.batch, key.attempt, settings
        )
        context.log.info(
            f"batch {key.batch} attempt {key.attempt} ({record.reason.value}): "
            f"{len(universe.symbols)} symbols: {joined(universe.symbols)}"
        )
        selected = {k.path[-1] for k in context.selected_asset_keys}
        if K.UNIVERSE_BARS.value in selected:
            files = [
                {"symbol": f.symbol, "file": f.path.name, "sha256": f.sha256[:12], "bytes": f.size}
                for f in universe.files
            ]
            yield Output(
                universe,
                output_name=K.UNIVERSE_BARS.value,
                metadata={
                    "universe_sig": universe.universe_sig,
                    "symbols": joined(universe.symbols),
                    "n_symbols": len(universe.symbols),
                    "attempt_reason": record.reason.value,
                    "files": table(pd.DataFrame(files)),
                },
            )
        if K.FEATURE_PANEL.value in selected:
            panel = build_panel(universe, settings)
            frame = panel.frame
            yield Output(
                panel,
                output_name=K.FEATURE_PANEL.value,
                metadata={
                    "computed_features": joined(panel.computed, 40),
                    "user_features": joined(panel.user, 40),
                    "targets": joined(panel.targets),
                    "first_bar": str(frame["timestamp"].min()),
                    "last_bar": str(frame["timestamp"].max()),
                    "symbols": joined(universe.symbols),
                    **frame_facts(frame),
                },
            )

    return data
