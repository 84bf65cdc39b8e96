"""The ranking table across targets for one batch × attempt."""

from collections.abc import Sequence

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, AssetKey, AssetsDefinition, MetadataValue, asset

from assets.partitions import attempt_partitions
from cohortflow import plots
from cohortflow.store import CohortView
from io_managers.keys import KIND_KEY as KIND


def ranking_table_from_cohorts(cohorts_by_target: dict[str, list[CohortView]]) -> pd.DataFrame:
    """One row per target from its cross-sectional ranking cohort, best score first."""
    rows = []
    for target, cohorts in cohorts_by_target.items():
        cs = [c for c in cohorts if c.snapshot.get("view") == "CROSS_SECTIONAL"]
        if not cs:
            continue
        snap = cs[0].snapshot
        km = snap.get("key_metrics", {})
        sy = [
            c.snapshot.get("key_metrics", {})
            for c in cohorts
            if c.snapshot.get("view") == "SYMBOL_SPECIFIC"
        ]
        row = {"target": target, "cohort_id": snap["cohort_id"], "score": km.get("score")}
        for key in sorted(km):
            if key != "score":
                row[key] = km[key]
        row["n_symbol_cohorts"] = len(sy)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.sort_values(["score", "target"], ascending=[False, True], kind="mergesort")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def build_report_assets(targets: Sequence[str]) -> list[AssetsDefinition]:
    ins = {
        t.replace("-", "_"): AssetIn(key=AssetKey([t, "cohort_snapshot_target_ranking"]))
        for t in targets
    }
    names = dict(zip(ins, targets, strict=True))

    @asset(
        name="target_ranking_table",
        partitions_def=attempt_partitions,
        group_name="target_ranking",
        kinds={"csv"},
        metadata={KIND: "report"},
        ins=ins,
        description="The targets ranked by predictability (cross-sectional view), best first.",
    )
    def target_ranking_table(
        context: AssetExecutionContext, **cohorts: list[CohortView]
    ) -> pd.DataFrame:
        table = ranking_table_from_cohorts({names[k]: v for k, v in cohorts.items()})
        meta = {
            "preview": MetadataValue.md(table.to_markdown(index=False) if len(table) else "empty")
        }
        if len(table):
            meta["best_target"] = str(table["target"].iloc[0])
            meta["score_by_target"] = MetadataValue.md(
                plots.markdown_image(
                    plots.bar_chart(
                        table["target"].tolist(),
                        table["score"].astype(float).tolist(),
                        "ranking score by target",
                        "score",
                    )
                )
            )
        context.add_output_metadata(meta)
        return table

    return [target_ranking_table]
