"""The HDF5 loader: a worker's shard, read window by window, cut into batches.

For each epoch the :class:`HDF5Loader` asks :mod:`raytrain.data.order` for the order
of its shard, reads one shuffle window at a time (each block with one slice), and
yields ``(features, labels)`` batches of ``batch`` samples in that order. Batches cross
window boundaries; only the positions that the epoch's ``steps`` need are read. The
feed (:mod:`raytrain.data.feed`) runs it in a background thread, ``prefetch_batches``
ahead of the training step.

Memory is bounded by the window and the queue, not by the dataset: about two windows
of raw samples (the one being cut and the one being read) plus ``prefetch_batches``
batches, plus the shard's index arrays (about 30 bytes per sample).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from raytrain.data import store
from raytrain.data.hdf5_reader import HDF5Reader
from raytrain.data.hdf5_remote import RemoteHDF5Reader
from raytrain.data.loader import Batch, ReadSpec, node_cache
from raytrain.data.shard import Shard

def window_cache_bytes(window: int, rows_per_block: dict[str, int], sample_bytes: int) -> int:
    """The HDF5 chunk cache for compressed files: what one window and one more block touch."""
    return (window + max(rows_per_block.values())) * sample_bytes


class HDF5Loader:
    """Batches of one worker's shard, in the epoch's block-shuffled order.

    Args:
        shard: The worker's rows of the index.
        reader: Reads features of (file, row) pairs.
        window: Samples shuffled together (see :mod:`raytrain.data.order`).
        seed: ``data.seed``.
        rank: The worker's rank (not part of the order, which is the same for any
            number of workers: :mod:`raytrain.data.order`).
        stream: Training or validation.
    """

    def __init__(self, shard: Shard, reader: HDF5Reader, window: int, seed: int, rank: int, stream: int):
        self.shard = shard
        self.reader = reader
        self.window = window
        self.seed = seed
        self.rank = rank
        self.stream = stream
        self.skipped: dict[str, str] = {}  # same interface as the image loader; HDF5 rows are never skipped
        self._window_buffer: np.ndarray | None = None

    @classmethod
    def open(cls, spec: ReadSpec, shard: Shard, rank: int, stream: int, notify: Callable[[str], None]) -> "HDF5Loader":
        """The loader of ``shard`` as ``spec`` says (the :data:`raytrain.data.loader.LoaderFactory` of HDF5)."""
        d = spec.data
        if shard.files and store.is_uri(shard.files[0]):
            reader: Any = RemoteHDF5Reader(shard.files, d.x_key, spec.rows_per_block, d.storage_options,
                                           node_cache(d))
        else:
            sample_bytes = int(np.prod(spec.sample_shape)) * np.dtype(spec.dtype).itemsize
            cache = window_cache_bytes(spec.window, spec.rows_per_block, sample_bytes)
            reader = HDF5Reader(shard.files, d.x_key, cache)
        return cls(shard, reader, spec.window, d.seed, rank, stream)

    def _buffer(self, rows: int) -> np.ndarray:
        """The window buffer, reused from window to window (grown if a window is larger)."""
        if self._window_buffer is None or len(self._window_buffer) < rows:
            shape, dtype = self.reader.sample_layout()
            self._window_buffer = np.empty((max(rows, self.window), *shape), dtype)
        return self._window_buffer

    def epoch(self, epoch: int, steps: int, batch: int, tail: bool = False, start: int = 0,
              offset: int = 0) -> Iterator[Batch]:
        """Yield batches ``start .. steps - 1`` ``(x, labels)`` of ``batch`` samples for ``epoch``.

        Each window is read in file order into a reused buffer; each batch is gathered
        from it into a new array (which the consumer may keep). The first ``start``
        batches (a run resumed mid-epoch) are not read. With ``tail`` (evaluation)
        ``steps * batch`` may exceed the shard: every sample is read once and the last
        batch is shorter.
        """
        s = self.shard
        positions, bounds = s.epoch_order(self.window, self.seed, epoch, self.stream, offset)
        need = min(steps * batch, len(positions)) if tail else steps * batch
        assert need <= len(positions), "plan_steps keeps every rank's steps within its shard"
        positions, bounds = positions[start * batch :], np.maximum(bounds - start * batch, 0)
        need -= start * batch
        held_x: list[np.ndarray] = []  # the start of a batch that spans two windows
        held_y: list[np.ndarray] = []
        held = 0
        prefetch = getattr(self.reader, "prefetch", None)  # a remote reader fetches the next window meanwhile
        windows = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if a < min(b, need)]
        for k, (a, b) in enumerate(windows):
            pos = positions[a : min(b, need)]
            in_file_order = np.sort(pos)
            buffer = self._buffer(len(pos))
            self.reader.read_sorted(s.file_codes[in_file_order], s.rows[in_file_order], buffer)
            if prefetch is not None and k + 1 < len(windows):
                ahead = np.sort(positions[windows[k + 1][0] : min(windows[k + 1][1], need)])
                prefetch(s.file_codes[ahead], s.rows[ahead])
            where = np.searchsorted(in_file_order, pos)  # each sample's row in the buffer
            y = s.labels[pos]
            start = 0
            if held:
                start = min(batch - held, len(pos))
                held_x.append(buffer[where[:start]])
                held_y.append(y[:start])
                held += start
                if held < batch:
                    continue
                yield np.concatenate(held_x), np.concatenate(held_y)
                held_x, held_y, held = [], [], 0
            full = start + (len(pos) - start) // batch * batch
            for i in range(start, full, batch):
                yield buffer[where[i : i + batch]], y[i : i + batch]
            if full < len(pos):
                held_x, held_y, held = [buffer[where[full:]]], [y[full:]], len(pos) - full
        if held:  # only with tail: the last, shorter batch
            yield np.concatenate(held_x), np.concatenate(held_y)

    def close(self) -> None:
        self.reader.close()
