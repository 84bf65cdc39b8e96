"""Jobs: the whole graph (one run = one batch × attempt) and one per stage.

Every job runs in-process (the code location's default executor, set in definitions.py):
each step of the multiprocess executor re-imports dagster, pandas, scikit-learn, LightGBM
and XGBoost (~4 s a step on 2 cores), more than most steps compute. When targets are
large enough to run side by side, `cohortflow_parallel_job` uses the multiprocess one.
The jobs take their partitions from their assets (all batch × attempt).
"""

from dagster import AssetSelection, define_asset_job, multiprocess_executor

from cohortflow.domain import Step
from cohortflow_dagster.io_managers.keys import STEP_TAG


def _steps(*steps: Step) -> AssetSelection:
    selection = AssetSelection.tag(STEP_TAG, steps[0].value)
    for step in steps[1:]:
        selection = selection | AssetSelection.tag(STEP_TAG, step.value)
    return selection


cohortflow_job = define_asset_job(
    "cohortflow_job", AssetSelection.all(), description="The whole graph for one batch × attempt."
)
cohortflow_parallel_job = define_asset_job(
    "cohortflow_parallel_job",
    AssetSelection.all(),
    description="The whole graph with the multiprocess executor: targets run side by side.",
    executor_def=multiprocess_executor,
)
target_ranking_job = define_asset_job(
    "target_ranking_job",
    _steps(Step.DATA, Step.TARGET_RANKING, Step.REPORT),
    description="Bars, features, leakage detection and target ranking.",
)
feature_selection_job = define_asset_job(
    "feature_selection_job",
    _steps(Step.FEATURE_SELECTION),
    description="Importances, featuresets and their snapshots (needs the ranking stage).",
)
training_job = define_asset_job(
    "training_job",
    _steps(Step.TRAINING),
    description="OOF datasets, stacking models and their evaluation (needs feature selection).",
)

ALL_JOBS = [
    cohortflow_job,
    cohortflow_parallel_job,
    target_ranking_job,
    feature_selection_job,
    training_job,
]
