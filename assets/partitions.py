"""The two partition dimensions; every asset imports them from here.

``universe_batch`` holds the 12 hex chars of the universe signature of the symbols
actually loaded; ``attempt`` holds 0, 1, 2 ... Both are dynamic: the data sensor (or the
``cohortflow run`` command) adds a batch when it first sees a universe, and attempt n+1
is added only when attempt n found leaks. Multi-partition key strings order dimensions
by name (``"0|ab12cd34ef56"``); always build them with :func:`attempt_key`.
"""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition

BATCH_DIM = "universe_batch"
ATTEMPT_DIM = "attempt"

batch_partitions = DynamicPartitionsDefinition(name=BATCH_DIM)
attempt_dim_partitions = DynamicPartitionsDefinition(name=ATTEMPT_DIM)
attempt_partitions = MultiPartitionsDefinition(
    {BATCH_DIM: batch_partitions, ATTEMPT_DIM: attempt_dim_partitions}
)


def attempt_key(batch: str, attempt: int) -> MultiPartitionKey:
    return MultiPartitionKey({BATCH_DIM: batch, ATTEMPT_DIM: str(int(attempt))})


def split_key(key: str | MultiPartitionKey | None) -> tuple[str | None, int | None]:
    """(batch, attempt) of a batch key or a batch × attempt key."""
    if key is None:
        return None, None
    if not isinstance(key, MultiPartitionKey) and "|" in str(key):
        key = attempt_partitions.get_partition_key_from_str(str(key))
    if isinstance(key, MultiPartitionKey):
        dims = key.keys_by_dimension
        return dims[BATCH_DIM], int(dims[ATTEMPT_DIM])
    return str(key), None
