"""Split the index on the driver: training and validation, then one part per worker."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raytrain.errors import RaytrainError


def split_index(table: pa.Table, validation_ratio: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """Split an index into training and validation rows.

    The validation set is ``round(n * validation_ratio)`` samples drawn by a
    permutation seeded with ``seed``, so the same (files, ratio, seed) always give the
    same split. Both parts keep file order, which keeps each worker's shard contiguous
    on disk.

    Args:
        table: The index, in file order.
        validation_ratio: Fraction held out, in [0, 1).
        seed: Seed of the split.

    Returns:
        (train, validation); validation is empty when the ratio is 0.
    """
    n = table.num_rows
    n_val = int(round(n * validation_ratio))
    if validation_ratio > 0 and (n_val == 0 or n_val == n):
        raise RaytrainError(
            f"data.validation_ratio={validation_ratio} of {n} samples leaves "
            f"{'no validation' if n_val == 0 else 'no training'} samples; change --validation-ratio (0 turns validation off)"
        )
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return table.filter(pa.array(~is_val)), table.filter(pa.array(is_val))


STRIPES_PER_PARTITION = 16  # a partition samples the whole index in at least this many places
PARTITION = "partition"  # the index column naming each row's partition


def stripe_rows(num_rows: int, partitions: int, block_rows: int) -> int:
    """Rows dealt to a partition at a time: one read block, or fewer when the index is
    small, so that every partition gets at least :data:`STRIPES_PER_PARTITION` stripes."""
    return max(1, min(block_rows, num_rows // (partitions * STRIPES_PER_PARTITION)))


def partition_of(num_rows: int, partitions: int, stripe: int) -> np.ndarray:
    """Each index row's partition: stripes of ``stripe`` consecutive rows dealt round-robin
    (partition p takes stripes p, p + P, p + 2P, ...), then the rows of the last, partial
    round cut into contiguous parts whose sizes differ by one, the larger ones first. So
    partition ``p`` holds ``m + (p < r)`` rows, which the global order counts on (see
    :mod:`raytrain.data.order`)."""
    cycle = partitions * stripe
    dealt = num_rows // cycle * cycle
    out = np.empty(num_rows, np.int32)
    out[:dealt] = (np.arange(dealt) // stripe) % partitions
    tail = num_rows - dealt
    sizes = np.full(partitions, tail // partitions) + (np.arange(partitions) < tail % partitions)
    out[dealt:] = np.repeat(np.arange(partitions, dtype=np.int32), sizes)
    return out


def partition_index(table: pa.Table, partitions: int, block_rows: int = 1) -> pa.Table:
    """The index with a :data:`PARTITION` column (see :func:`partition_of`).

    Cutting the index into contiguous ranges would give each worker one region of the
    files; for data stored class by class (a class-folder tree, HDF5 written class by
    class) each worker would then train on one or two classes, and per-replica statistics
    (BatchNorm) and per-worker metrics would be wrong. Dealing stripes of a read block
    keeps each worker's reads sequential within a block while its part spans the data.
    """
    if PARTITION in table.column_names:
        table = table.drop_columns([PARTITION])
    stripe = stripe_rows(table.num_rows, partitions, block_rows)
    return table.append_column(PARTITION, pa.array(partition_of(table.num_rows, partitions, stripe)))


def cut_shards(table: pa.Table, world_size: int, partitions: int, block_rows: int = 1) -> list[pa.Table]:
    """One part of the index per rank: rank ``w`` takes the partitions ``p % world_size == w``
    (``world_size`` divides ``partitions``: checked by ``raytrain.config.validate``). A
    table without the partition column is partitioned here."""
    if PARTITION not in table.column_names:
        table = partition_index(table, partitions, block_rows)
    rank_of = table.column(PARTITION).to_numpy() % world_size
    return [table.filter(pa.array(rank_of == rank)) for rank in range(world_size)]
