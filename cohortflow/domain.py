"""The domain's words, each with one home: stages, views, artifact kinds, attempt reasons,
and the one table that says which asset holds which artifact of which stage.

Everything that names a stage, a view or an artifact imports it from here; the Dagster
shell builds its assets, groups, checks and jobs from :data:`ASSETS`, and the command
line's per-stage timings read the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Stage(StrEnum):
    """The three stages of an attempt, in pipeline order (``stage={STAGE}`` folders)."""

    TARGET_RANKING = "TARGET_RANKING"
    FEATURE_SELECTION = "FEATURE_SELECTION"
    TRAINING = "TRAINING"


class View(StrEnum):
    """All symbols pooled, or one symbol alone."""

    CROSS_SECTIONAL = "CROSS_SECTIONAL"
    SYMBOL_SPECIFIC = "SYMBOL_SPECIFIC"


class ArtifactKind(StrEnum):
    """What an asset holds; the store reads and writes each kind in its own format."""

    UNIVERSE_BARS = "universe_bars"
    FEATURE_PANEL = "feature_panel"
    EXCLUSIONS = "feature_exclusions"
    RANKING_SNAPSHOTS = "cohort_snapshot_target_ranking"
    IMPORTANCES = "feature_importances"
    FEATURESETS = "featureset"
    SELECTION_SNAPSHOTS = "cohort_snapshot_feature_selection"
    OOF = "oof_dataset"
    STACKING = "stacking_model"
    EVALUATION = "evaluation"
    PORTFOLIO = "portfolio"
    TRAINING_SNAPSHOTS = "cohort_snapshot_training"
    RANKING_TABLE = "target_ranking_table"


class Step(StrEnum):
    """The units of work of one attempt: one Dagster step each (per target where the
    artifact has a target), and the stages of the command line's timings."""

    DATA = "data"
    TARGET_RANKING = "target_ranking"
    FEATURE_SELECTION = "feature_selection"
    TRAINING = "training"
    REPORT = "report"


class AttemptReason(StrEnum):
    """Why an attempt exists (recorded in the batch registry and shown by ``cohorts list``)."""

    REQUESTED = "requested"
    LEAKS_FOUND = "leaks_found"
    BARS_CHANGED = "bars_changed"
    SETTINGS_CHANGED = "settings_changed"
    CODE_CHANGED = "code_changed"


@dataclass(frozen=True)
class AssetRole:
    """One asset: the artifact it holds, the stage folder it writes into (None for the
    batch-level data and the report), the step that computes it, and whether it is one
    of a target's assets (key ``[target, name]``) or the batch's (key ``[name]``)."""

    kind: ArtifactKind
    stage: Stage | None
    step: Step
    per_target: bool

    @property
    def name(self) -> str:
        return self.kind.value

    @property
    def is_snapshot(self) -> bool:
        return self.kind in SNAPSHOT_KINDS


SNAPSHOT_KINDS = frozenset(
    {
        ArtifactKind.RANKING_SNAPSHOTS,
        ArtifactKind.SELECTION_SNAPSHOTS,
        ArtifactKind.TRAINING_SNAPSHOTS,
    }
)

#: Every asset of the graph, in pipeline order. The order within a step is the order its
#: outputs are computed and written; a stage's snapshot comes last and seals its folders.
ASSETS: tuple[AssetRole, ...] = (
    AssetRole(ArtifactKind.UNIVERSE_BARS, None, Step.DATA, False),
    AssetRole(ArtifactKind.FEATURE_PANEL, None, Step.DATA, False),
    AssetRole(ArtifactKind.EXCLUSIONS, Stage.TARGET_RANKING, Step.TARGET_RANKING, True),
    AssetRole(ArtifactKind.RANKING_SNAPSHOTS, Stage.TARGET_RANKING, Step.TARGET_RANKING, True),
    AssetRole(ArtifactKind.IMPORTANCES, Stage.FEATURE_SELECTION, Step.FEATURE_SELECTION, True),
    AssetRole(ArtifactKind.FEATURESETS, Stage.FEATURE_SELECTION, Step.FEATURE_SELECTION, True),
    AssetRole(
        ArtifactKind.SELECTION_SNAPSHOTS, Stage.FEATURE_SELECTION, Step.FEATURE_SELECTION, True
    ),
    AssetRole(ArtifactKind.OOF, Stage.TRAINING, Step.TRAINING, True),
    AssetRole(ArtifactKind.STACKING, Stage.TRAINING, Step.TRAINING, True),
    AssetRole(ArtifactKind.EVALUATION, Stage.TRAINING, Step.TRAINING, True),
    AssetRole(ArtifactKind.PORTFOLIO, Stage.TRAINING, Step.TRAINING, True),
    AssetRole(ArtifactKind.TRAINING_SNAPSHOTS, Stage.TRAINING, Step.TRAINING, True),
    AssetRole(ArtifactKind.RANKING_TABLE, None, Step.REPORT, False),
)

ROLE: dict[ArtifactKind, AssetRole] = {role.kind: role for role in ASSETS}

#: The snapshot kind that seals each stage's folders.
SNAPSHOT_OF: dict[Stage, ArtifactKind] = {
    role.stage: role.kind for role in ASSETS if role.is_snapshot and role.stage is not None
}


def roles_of(step: Step) -> tuple[AssetRole, ...]:
    """The assets one step computes, in order."""
    return tuple(role for role in ASSETS if role.step is step)


def step_of(asset_name: str) -> Step:
    """The step of an asset (by its last key part)."""
    return ROLE[ArtifactKind(asset_name)].step


def target_name(horizon: int) -> str:
    """The target of a horizon in bars: ``fwd_ret_{h}``."""
    return f"fwd_ret_{int(horizon)}"


__all__ = [
    "ASSETS",
    "ROLE",
    "SNAPSHOT_KINDS",
    "SNAPSHOT_OF",
    "ArtifactKind",
    "AssetRole",
    "AttemptReason",
    "Stage",
    "Step",
    "View",
    "roles_of",
    "step_of",
    "target_name",
]
