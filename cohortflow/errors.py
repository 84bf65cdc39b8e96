"""Errors that cross module borders. Each names what went wrong in words a user can act on."""

from __future__ import annotations

from pathlib import PurePath


class CohortflowError(Exception):
    """Base class: every error the project raises on purpose."""


class InvalidNameError(CohortflowError, ValueError):
    """A name that would become a path part (symbol, target, model, ...) is unsafe."""


class DataError(CohortflowError):
    """Bad input data. Always names the file (or folder) and the problem."""

    def __init__(self, path: str | PurePath, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SettingsError(CohortflowError):
    """A settings file or value that cannot be used."""


class StoreError(CohortflowError):
    """The canonical store is inconsistent (e.g. a universe signature collision)."""


class ArtifactNotFoundError(CohortflowError, FileNotFoundError):
    """An artifact that was asked for is not in the store; the message says what exists."""


class CorruptFileError(DataError):
    """A file of the tree whose bytes are not what its name says (truncated, malformed,
    foreign). Names the file and the problem in one line."""


class SealedAttemptError(StoreError):
    """A write would change an attempt that is already complete (sealed). Says which input
    differs and how to start a new attempt instead."""
