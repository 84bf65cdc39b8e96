"""The ranking table across targets for one batch × attempt."""

from collections.abc import Sequence

from dagster import AssetExecutionContext, AssetIn, AssetKey, AssetsDefinition, asset

from cohortflow import plots, stages
from cohortflow.domain import ArtifactKind, Step
from cohortflow.store import CohortView
from cohortflow.version import code_version
from cohortflow_dagster.io_managers.keys import KIND_KEY, STEP_TAG
from cohortflow_dagster.metadata import frame_facts, png, table
from cohortflow_dagster.partitions import attempt_partitions


def build_report_assets(targets: Sequence[str]) -> list[AssetsDefinition]:
    snapshot = ArtifactKind.RANKING_SNAPSHOTS.value
    ins = {t: AssetIn(key=AssetKey([t, snapshot])) for t in targets}

    @asset(
        name=ArtifactKind.RANKING_TABLE.value,
        partitions_def=attempt_partitions,
        group_name="reports",
        kinds={"csv"},
        tags={STEP_TAG: Step.REPORT.value},
        metadata={KIND_KEY: ArtifactKind.RANKING_TABLE.value},
        ins=ins,
        code_version=code_version(),
        description="The targets ranked by predictability (cross-sectional view), best first.",
    )
    def target_ranking_table(context: AssetExecutionContext, **cohorts: list[CohortView]):
        ranked = stages.ranking_table(cohorts)
        meta = {"ranking": table(ranked), **frame_facts(ranked)}
        if len(ranked):
            meta["best_target"] = str(ranked["target"].iloc[0])
            meta["score_by_target"] = png(
                plots.bar_chart(
                    ranked["target"].tolist(),
                    ranked["score"].astype(float).tolist(),
                    "ranking score by target",
                    "score",
                ),
                "ranking score by target",
            )
        context.add_output_metadata(meta)
        return ranked

    return [target_ranking_table]
