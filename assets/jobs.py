"""Jobs: the whole graph (one run = one batch × attempt) and one per stage."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job, in_process_executor, multiprocess_executor

from assets.partitions import attempt_partitions

# In-process on purpose: each step of the multiprocess executor re-imports dagster,
# pandas, scikit-learn, LightGBM and XGBoost (~4 s a step on 2 cores), which would cost
# more than most steps compute. Use the multiprocess executor from the launchpad (or the
# `cohortflow_parallel` job) when targets are large enough to run side by side.
cohortflow_job = define_asset_job(
    "cohortflow_job",
    selection=AssetSelection.all(),
    partitions_def=attempt_partitions,
    executor_def=in_process_executor,
    description="The whole graph for one universe batch × attempt.",
)

cohortflow_parallel_job = define_asset_job(
    "cohortflow_parallel_job",
    selection=AssetSelection.all(),
    partitions_def=attempt_partitions,
    # explicit: the code location's default executor is in-process (definitions.py)
    executor_def=multiprocess_executor,
    description="The whole graph with the multiprocess executor: targets run side by side.",
)

target_ranking_job = define_asset_job(
    "target_ranking_job",
    selection=AssetSelection.groups("data", "leakage", "target_ranking"),
    partitions_def=attempt_partitions,
    executor_def=in_process_executor,
    description="Bars, features, leakage detection and target ranking.",
)

feature_selection_job = define_asset_job(
    "feature_selection_job",
    selection=AssetSelection.groups("feature_selection"),
    partitions_def=attempt_partitions,
    executor_def=in_process_executor,
    description="Importances, featuresets and their snapshots (needs the ranking stage).",
)

training_job = define_asset_job(
    "training_job",
    selection=AssetSelection.groups("training"),
    partitions_def=attempt_partitions,
    executor_def=in_process_executor,
    description="OOF datasets, stacking models and their evaluation (needs feature selection).",
)

ALL_JOBS = [
    cohortflow_job,
    cohortflow_parallel_job,
    target_ranking_job,
    feature_selection_job,
    training_job,
]
