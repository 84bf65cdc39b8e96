"""Resources: where the data and the canonical tree are, and which settings apply."""

from resources.cohortflow import CohortflowResource

__all__ = ["CohortflowResource"]
