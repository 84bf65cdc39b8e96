"""The metadata keys the assets and the IO manager agree on (no imports: both sides
import this module, and the IO manager must not import the assets package)."""

#: Definition metadata of an asset: the artifact it holds (cohortflow.domain.ArtifactKind).
KIND_KEY = "cohortflow/kind"
#: Input metadata: ``"files"`` loads a universe without its bars (what it is, not its data).
LOAD_KEY = "cohortflow/load"
#: Asset tag: the step of an attempt that computes the asset (cohortflow.domain.Step).
STEP_TAG = "cohortflow/step"
