"""Which partition a message goes to: the two partitioners of the pipeline.

* :func:`partition_for`: the Java client's default partitioner (murmur2), the one librdkafka
  (``murmur2_random``), aiokafka and Faust use for a keyed message: facility-keyed topics.
* :func:`citizen_partition`: the internal topic ``examinations-by-citizen`` and the stateful
  stage's table, by pseudonymous citizen key.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2

__all__ = ["citizen_partition", "partition_for"]


def partition_for(key: bytes, partitions: int) -> int:
    """The Java client's default partitioner (murmur2), as aiokafka and Faust use it."""
    hashed: int = murmur2(key)  # aiokafka's partitioner is untyped
    return (hashed & 0x7FFFFFFF) % partitions


def citizen_partition(citizen_key: str, partitions: int) -> int:
    """Partition of the internal topic for a citizen key.

    The key is already a uniformly distributed HMAC in hex, so its first 32 bits are a good
    hash (and ~15x cheaper than murmur2 in Python). Only this worker reads the internal topic
    and writes the table's changelog, both with explicit partitions, so no client's default
    partitioner has to agree with it.
    """
    return int(citizen_key[:8], 16) % partitions
