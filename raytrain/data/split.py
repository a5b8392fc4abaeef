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


STRIPES_PER_WORKER = 64  # a worker's part samples the whole index in at least this many places


def shard_boundaries(num_rows: int, world_size: int) -> list[int]:
    """Start rows of ``world_size`` contiguous parts of ``num_rows // world_size`` rows (the
    last part runs to the end), followed by ``num_rows``."""
    size = num_rows // world_size
    return [size * i for i in range(world_size)] + [num_rows]


def stripe_rows(num_rows: int, world_size: int, block_rows: int) -> int:
    """Rows dealt to a worker at a time: one read block, or fewer when the index is small,
    so that every worker gets at least :data:`STRIPES_PER_WORKER` stripes."""
    return max(1, min(block_rows, num_rows // (world_size * STRIPES_PER_WORKER)))


def shard_positions(num_rows: int, world_size: int, stripe: int) -> list[np.ndarray]:
    """The index positions of each rank: stripes of ``stripe`` consecutive rows dealt
    round-robin (rank r takes stripes r, r + W, r + 2W, ...), then the rows of the last,
    partial round cut into contiguous parts as :func:`shard_boundaries` cuts. Every rank
    gets at least ``num_rows // world_size`` rows, none is dropped, and the last rank takes
    the remainder."""
    cycle = world_size * stripe
    dealt = num_rows // cycle * cycle
    tail = shard_boundaries(num_rows - dealt, world_size)
    offsets = np.arange(stripe)
    return [
        np.concatenate([(np.arange(rank * stripe, dealt, cycle)[:, None] + offsets).reshape(-1),
                        dealt + np.arange(tail[rank], tail[rank + 1])])
        for rank in range(world_size)
    ]


def cut_shards(table: pa.Table, world_size: int, block_rows: int = 1) -> list[pa.Table]:
    """One part of the index per rank, a fair sample of the whole (see :func:`shard_positions`).

    Cutting the index into contiguous ranges would give each worker one region of the
    files; for data stored class by class (a class-folder tree, HDF5 written class by
    class) each worker would then train on one or two classes, and per-replica statistics
    (BatchNorm) and per-worker metrics would be wrong. Dealing stripes of a read block
    keeps each worker's reads sequential within a block while its part spans the data.
    """
    stripe = stripe_rows(table.num_rows, world_size, block_rows)
    return [table.take(pa.array(positions)) for positions in shard_positions(table.num_rows, world_size, stripe)]
