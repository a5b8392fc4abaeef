"""Each epoch's sample order: shuffled blocks of contiguous rows, mixed within a window.

Reading HDF5 rows in a random order is slow (h5py's fancy indexing reads ~1,500
samples/s where contiguous slices read ~950,000/s on this project's machines). So an epoch's
order is built from **blocks**: runs of consecutive rows of one file, aligned to the
file's HDF5 chunks (see :func:`raytrain.data.hdf5_reader.block_rows`). Each epoch:

1. the order of the blocks is shuffled;
2. consecutive blocks (in that shuffled order) are grouped into **windows** of about
   ``window`` samples: a window starts wherever the running sample count crosses a
   multiple of ``window``, so it holds at most ``window + largest block - 1`` samples;
3. the samples of each window are shuffled among themselves.

The reader then reads each block of a window with one slice and cuts batches from the
shuffled window. ``window`` trades randomness for memory: a batch draws from the
blocks of one or two windows, and a worker holds about one window of raw samples (plus
the prefetch queue) in memory. ``window`` no larger than a block shuffles only within
blocks; a window as large as the shard is a full shuffle (and holds it all in memory).

The order is a pure function of ``(seed, epoch, rank, stream)`` and the shard's
blocks: it differs every epoch, and it is a permutation of the shard, so no sample is
read twice in an epoch.
"""

from __future__ import annotations

import numpy as np

from raytrain.errors import RaytrainError

TRAIN, VALIDATION = 0, 1  # streams: training and validation orders never coincide


def block_starts(file_codes: np.ndarray, rows: np.ndarray, rows_per_block: np.ndarray) -> np.ndarray:
    """Where each block begins in a shard sorted by (file, row), plus the shard length.

    Args:
        file_codes: Per sample, the index of its file.
        rows: Per sample, its row in the file (ascending within a file).
        rows_per_block: Per file, the block length in rows (blocks start at multiples).
    """
    n = len(rows)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    block = rows // rows_per_block[file_codes]
    change = (file_codes[1:] != file_codes[:-1]) | (block[1:] != block[:-1])
    return np.concatenate([[0], np.flatnonzero(change) + 1, [n]]).astype(np.int64)


def epoch_order(
    starts: np.ndarray, window: int, seed: int, epoch: int, rank: int, stream: int
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's order of a shard's positions, and where its windows begin.

    Args:
        starts: Block starts from :func:`block_starts` (last entry = shard length).
        window: Samples shuffled together (at least 1).
        seed: ``data.seed``.
        epoch: Epoch number (0-based).
        rank: The worker's rank.
        stream: Training or validation (:data:`TRAIN` / :data:`VALIDATION`).

    Returns:
        ``(positions, bounds)``: ``positions`` is a permutation of ``range(n)``; window
        ``k`` is ``positions[bounds[k]:bounds[k + 1]]``.
    """
    if window < 1:
        raise ValueError(f"`window` must be a positive integer. Received: window={window}")
    n = int(starts[-1])
    rng = np.random.default_rng([seed, epoch, rank, stream])
    sizes = np.diff(starts)
    blocks = rng.permutation(len(sizes))
    shuffled_sizes = sizes[blocks]
    offsets = np.cumsum(shuffled_sizes) - shuffled_sizes  # where each block begins in the epoch
    # Block j covers epoch slots offsets[j] .. offsets[j] + size - 1 with its rows in order.
    positions = np.repeat(starts[blocks] - offsets, shuffled_sizes) + np.arange(n)
    first_of_window = np.flatnonzero(np.diff(offsets // window)) + 1
    bounds = np.concatenate([[0], offsets[first_of_window], [n]]).astype(np.int64)
    for a, b in zip(bounds[:-1], bounds[1:]):
        positions[a:b] = positions[a:b][rng.permutation(b - a)]
    return positions, bounds


def epoch_positions(
    starts: np.ndarray, window: int, steps: int, batch: int, seed: int, epoch: int, rank: int, stream: int
) -> np.ndarray:
    """The positions a rank trains on in one epoch, shaped ``(steps, batch)``.

    The first ``steps * batch`` positions of :func:`epoch_order`; the rest are left out
    this epoch, and which ones changes with the epoch.
    """
    n = int(starts[-1])
    if steps * batch > n:
        raise RaytrainError(
            f"rank {rank} holds {n} samples but needs {steps * batch} ({steps} steps of {batch}); "
            "the index was split unevenly, which raytrain's split should prevent: please report this"
        )
    positions, _ = epoch_order(starts, window, seed, epoch, rank, stream)
    return positions[: steps * batch].reshape(steps, batch)
