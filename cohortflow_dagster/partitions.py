"""The two partition dimensions; every asset, job, sensor and the IO manager import them
from here (a leaf module: it imports nothing of the shell).

``universe_batch`` holds the 12 hex chars of the universe signature of the symbols
actually loaded; ``attempt`` holds 0, 1, 2 ... Both are dynamic: the data sensor (or
``cohortflow run``) adds a batch when it first sees a universe, and an attempt key when
it records that attempt. Multi-partition key strings order dimensions by name
(``"0|ab12cd34ef56"``); always build them with :func:`attempt_key`.
"""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition

from cohortflow.errors import InvalidNameError
from cohortflow.layout import validate_batch
from cohortflow.store import AttemptKey

BATCH_DIM = "universe_batch"
ATTEMPT_DIM = "attempt"

batch_partitions = DynamicPartitionsDefinition(name=BATCH_DIM)
attempt_dim_partitions = DynamicPartitionsDefinition(name=ATTEMPT_DIM)
attempt_partitions = MultiPartitionsDefinition(
    {BATCH_DIM: batch_partitions, ATTEMPT_DIM: attempt_dim_partitions}
)


def attempt_key(batch: str, attempt: int) -> MultiPartitionKey:
    return MultiPartitionKey({BATCH_DIM: batch, ATTEMPT_DIM: str(int(attempt))})


def split_key(key: str | MultiPartitionKey) -> tuple[str, int]:
    """(batch, attempt) of a batch × attempt key; a clear error for keys typed by hand
    that are no batch (12 lowercase hex) or no attempt number."""
    if not isinstance(key, MultiPartitionKey):
        key = attempt_partitions.get_partition_key_from_str(str(key))
    dims = key.keys_by_dimension
    batch, attempt = dims[BATCH_DIM], dims[ATTEMPT_DIM]
    validate_batch(batch)
    if not attempt.isdigit() or (attempt != "0" and attempt.startswith("0")):
        raise InvalidNameError(
            f"attempt partition key {attempt!r} is not an attempt number (0, 1, 2 ...); "
            "attempts are added by `cohortflow run` and the sensors"
        )
    return batch, int(attempt)


def key_of(partition_key: str | MultiPartitionKey, target: str | None = None) -> AttemptKey:
    """The store's key for a partition (and a target's artifacts)."""
    batch, attempt = split_key(partition_key)
    return AttemptKey(batch, attempt, target)
