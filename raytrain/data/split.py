"""Split the index on the driver: training and validation, then one shard per worker."""

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


def shard_boundaries(num_rows: int, world_size: int) -> list[int]:
    """Start rows of ``world_size`` shards of ``num_rows // world_size`` rows (the last
    shard runs to the end), followed by ``num_rows``."""
    size = num_rows // world_size
    return [size * i for i in range(world_size)] + [num_rows]


def cut_shards(table: pa.Table, world_size: int) -> list[pa.Table]:
    """One contiguous slice of the index per rank: no row is dropped, the last rank also
    takes the ``num_rows % world_size`` remainder rows."""
    bounds = shard_boundaries(table.num_rows, world_size)
    return [table.slice(bounds[i], bounds[i + 1] - bounds[i]) for i in range(world_size)]
