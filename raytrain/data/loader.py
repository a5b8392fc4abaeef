"""The loader contract: what every kind of data gives a worker to read its shard with.

A loader is a worker's local generator. Given an epoch, it yields that epoch's batches
of the worker's own samples, in the epoch's order (:mod:`raytrain.data.order`), reading
and decoding only those samples. The kinds (HDF5 files, image files) each implement
:class:`BatchLoader`; :mod:`raytrain.data.kinds` maps ``data.kind`` to the one to use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol

import numpy as np

from raytrain.config import DataSection
from raytrain.data.cache import NodeCache
from raytrain.data.shard import Shard

Batch = tuple[np.ndarray, np.ndarray]  # (features as stored, class indices)

AUTO_WINDOW_BYTES = 64 << 20  # data.shuffle_window = 0: as many samples as fit in this
AUTO_WINDOW_MAX = 4096  # ... but no more samples than this


def auto_window(sample_bytes: int) -> int:
    """The shuffle window (samples) used when ``data.shuffle_window`` is 0."""
    return max(1, min(AUTO_WINDOW_MAX, AUTO_WINDOW_BYTES // max(sample_bytes, 1)))



@dataclass(frozen=True)
class ReadSpec:
    """How a shard is read, decided once on the driver."""

    data: DataSection
    sample_shape: tuple[int, ...]
    dtype: str  # features as stored
    rows_per_block: dict[str, int]  # per file, see raytrain.data.order
    window: int  # samples shuffled together (data.shuffle_window, resolved)
    threads: int  # decoding threads (data.decode_threads, resolved)


class BatchLoader(Protocol):
    """A worker's local generator over its shard."""

    shard: Shard
    skipped: dict[str, str]  # files left out under data.on_bad_sample: skip -> why

    def epoch(self, epoch: int, steps: int, batch: int, tail: bool = False, start: int = 0,
              offset: int = 0) -> Iterator[Batch]:
        """Batches ``start .. steps - 1`` of ``batch`` samples of ``epoch``, reading none of
        the first ``start``, from global position ``offset`` on
        (:func:`raytrain.data.order.epoch_offset`); with ``tail`` (evaluation) every sample once, the last batch
        shorter."""
        ...

    def close(self) -> None:
        """Release files and threads."""
        ...


LoaderFactory = Callable[[ReadSpec, Shard, int, int, Callable[[str], None]], BatchLoader]
"""``open(spec, shard, rank, stream, notify)``: ``notify`` shows one line to the user."""


def node_cache(d: DataSection) -> Optional[NodeCache]:
    """The node-local cache ``data.cache_dir`` asks for (None: no cache)."""
    return NodeCache(d.cache_dir, int(d.cache_max_gib * (1 << 30))) if d.cache_dir else None


def reading_threads(d: DataSection, cpus: Optional[float]) -> int:
    """``data.decode_threads``, or (0) the CPUs the reading process holds: ``cpus`` (a Ray
    worker's ``scaling.cpus_per_worker``), or all of this machine's when None (in-process)."""
    if d.decode_threads:
        return d.decode_threads
    if cpus is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, int(cpus))
