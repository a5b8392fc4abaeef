"""Each epoch's sample order: one global order, whatever the number of workers.

**Partitions.** The driver deals the training index into ``data.partitions`` (default
24) canonical partitions: stripes of a read block (consecutive rows of one file,
aligned to its HDF5 chunks) dealt round-robin, so each partition is a fair sample of
the data even when files are sorted by class (:func:`raytrain.data.split.partition_index`).
Partition ``p`` holds ``m`` or ``m + 1`` samples, the larger ones first.

**A partition's order** (:func:`partition_order`), a pure function of
``(seed, epoch, partition, stream)`` and the partition's rows:

1. its blocks are shuffled;
2. the resulting sequence is cut into windows of exactly ``window // partitions``
   samples (a block may straddle two windows);
3. the samples of each window are shuffled among themselves.

**The global order** interleaves the partitions: global position ``g`` is item
``g // P`` of partition ``g % P``. Global step ``k`` trains on positions
``[k * B, (k + 1) * B)`` (``B`` = the global batch). None of this mentions workers.

**Workers.** With ``W`` workers (``W`` divides ``P`` and ``B``), worker ``w`` owns the
partitions ``p`` with ``p % W == w``: exactly the global positions ``g`` with
``g % W == w``, which is ``B / W`` of every global batch. So the sets of samples that
form each global step are the same with 1, 2, 3, 4, 6 or 8 workers (and any GPUs per
worker), each worker reads only its own partitions, and a run reproduces on one
machine what a cluster trained. A worker's windows are the global windows (``P *
window // P`` samples) restricted to its partitions: it holds about ``window / W``
samples at a time, each window read block by block, in file order.

An epoch trains on ``steps * B`` consecutive positions, ``steps = n // B``, starting at
an offset ``o`` drawn each epoch from ``0 .. n - steps * B`` (:func:`epoch_offset`; any
``B`` consecutive positions hold ``B / W`` of every worker's); a worker's order lists its
positions from ``o`` on first, then those before ``o``. Fewer than one global batch is
left out, and which ones changes every epoch: by the offset, and by each partition's
own shuffle (small data, whose partitions hold a sample or two, needs the offset: with
the tail always left out, the same few samples were left out in two epochs in a row
once in 32 seeds). Skipping the first ``k`` steps of an epoch (a resumed run) reads
none of them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

TRAIN, VALIDATION = 0, 1  # streams: training and validation orders never coincide


def block_starts(file_codes: np.ndarray, rows: np.ndarray, rows_per_block: np.ndarray) -> np.ndarray:
    """Where each block begins in rows sorted by (file, row), plus their count.

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


def partition_order(starts: np.ndarray, window: int, seed: int, epoch: int, partition: int,
                    stream: int) -> np.ndarray:
    """One epoch's order of a partition: a permutation of ``range(n)`` (see the module
    docstring). ``starts`` are the partition's block starts (:func:`block_starts`);
    ``window`` its samples shuffled together."""
    if window < 1:
        raise ValueError(f"`window` must be a positive integer. Received: window={window}")
    n = int(starts[-1])
    rng = np.random.default_rng([seed, epoch, partition, stream])
    sizes = np.diff(starts)
    blocks = rng.permutation(len(sizes))
    shuffled_sizes = sizes[blocks]
    offsets = np.cumsum(shuffled_sizes) - shuffled_sizes  # where each block begins in the epoch
    # Block j covers slots offsets[j] .. offsets[j] + size - 1 with its rows in order.
    positions = np.repeat(starts[blocks] - offsets, shuffled_sizes) + np.arange(n)
    keys = rng.random(n)
    return positions[np.lexsort((keys, np.arange(n) // window))]  # shuffled within each window


class Part:
    """One partition as a worker holds it: its rows' positions in the worker's shard (in
    file order) and their blocks."""

    def __init__(self, partition: int, members: np.ndarray, starts: np.ndarray):
        self.partition, self.members, self.starts = partition, members, starts


def epoch_offset(samples: int, steps: int, global_batch: int, seed: int, epoch: int, stream: int) -> int:
    """The global position an epoch's first step starts at (see the module docstring)."""
    spare = samples - steps * global_batch
    return int(np.random.default_rng([seed, epoch, stream, 1]).integers(spare + 1)) if spare > 0 else 0


def epoch_order(parts: Sequence[Part], partitions: int, window: Optional[int], seed: int, epoch: int,
                stream: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's order of a worker's samples, and where its windows begin.

    Args:
        parts: The partitions the worker holds.
        partitions: ``P``, the number of partitions of the whole index.
        window: Samples shuffled together across all workers (``data.shuffle_window``);
            None: each partition is shuffled whole (images: every file is its own block).
        seed, epoch, stream: What the order is a function of, with the partitions.
        offset: The epoch's first global position (:func:`epoch_offset`).

    Returns:
        ``(positions, bounds)``: positions in the worker's shard, in the global order
        restricted to its partitions; window ``k`` is ``positions[bounds[k]:bounds[k + 1]]``.
    """
    per_part = max(1, window // partitions) if window else None
    n = sum(len(part.members) for part in parts)
    where = np.empty(n, np.int64)
    slot = np.empty(n, np.int64)  # global position
    at = 0
    for part in parts:
        k = len(part.members)
        order = partition_order(part.starts, per_part or max(k, 1), seed, epoch, part.partition, stream)
        where[at : at + k] = part.members[order]
        slot[at : at + k] = np.arange(k) * partitions + part.partition
        at += k
    by_slot = np.argsort(slot + np.where(slot < offset, n * partitions, 0), kind="stable")  # from the offset on
    positions, slot = where[by_slot], slot[by_slot]
    if per_part is None or n == 0:
        return positions, np.array([0, n], dtype=np.int64)
    window_of = slot // (partitions * per_part)
    return positions, np.concatenate([[0], np.flatnonzero(np.diff(window_of)) + 1, [n]]).astype(np.int64)
