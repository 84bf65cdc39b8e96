"""The metadata keys the assets and the IO manager agree on (no imports: both sides
import this module, and the IO manager must not import the assets package)."""

#: Definition metadata of an asset: which kind of artifact it holds (see ATTEMPT_KINDS).
KIND_KEY = "cohortflow/kind"
#: Definition metadata of a cohort-snapshot asset: the stage it snapshots.
STAGE_KEY = "cohortflow/stage"
#: Input metadata: ``"files"`` loads a universe without its bars (what it is, not its data).
LOAD_KEY = "cohortflow/load"
