"""cohortflow definitions."""
