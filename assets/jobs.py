"""Jobs: the whole graph (one run = one batch × attempt) and one per stage.

Every job runs in-process (the code location's default executor, set in definitions.py):
each step of the multiprocess executor re-imports dagster, pandas, scikit-learn, LightGBM
and XGBoost (~4 s a step on 2 cores), more than most steps compute. When targets are
large enough to run side by side, `cohortflow_parallel_job` uses the multiprocess one.
"""

from dagster import AssetSelection, define_asset_job, multiprocess_executor

from assets.partitions import attempt_partitions


def _job(name: str, selection: AssetSelection, description: str, **kwargs):
    return define_asset_job(
        name,
        selection=selection,
        partitions_def=attempt_partitions,
        description=description,
        **kwargs,
    )


cohortflow_job = _job(
    "cohortflow_job", AssetSelection.all(), "The whole graph for one universe batch × attempt."
)
cohortflow_parallel_job = _job(
    "cohortflow_parallel_job",
    AssetSelection.all(),
    "The whole graph with the multiprocess executor: targets run side by side.",
    executor_def=multiprocess_executor,
)
target_ranking_job = _job(
    "target_ranking_job",
    AssetSelection.groups("data", "leakage", "target_ranking"),
    "Bars, features, leakage detection and target ranking.",
)
feature_selection_job = _job(
    "feature_selection_job",
    AssetSelection.groups("feature_selection"),
    "Importances, featuresets and their snapshots (needs the ranking stage).",
)
training_job = _job(
    "training_job",
    AssetSelection.groups("training"),
    "OOF datasets, stacking models and their evaluation (needs feature selection).",
)

ALL_JOBS = [
    cohortflow_job,
    cohortflow_parallel_job,
    target_ranking_job,
    feature_selection_job,
    training_job,
]
