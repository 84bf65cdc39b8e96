"""Resources: where the data and the canonical tree are, and which settings apply."""

from cohortflow_dagster.resources.cohortflow import CohortflowResource

__all__ = ["CohortflowResource"]
