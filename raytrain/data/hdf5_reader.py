"""Read samples from HDF5 files in few, large, chunk-aligned slices.

Files are opened lazily, in the process that reads (an open h5py file must not cross
a fork or be pickled); see :class:`HDF5Reader` for the chunk cache. A read of many
rows (sorted by file and row) merges rows that lie close together in one file into
runs and reads each run with one slice; it never uses h5py's fancy indexing
(``X[sorted_idx]``), which is far slower than reading rows one at a time
(docs/benchmarks.md). Samples come back in their stored dtype (uint8 images stay
uint8: four times less to copy; TensorFlow converts them to float32).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from raytrain.data.h5 import h5py

MIN_BLOCK_BYTES = 256 << 10  # a block is at least this much data: one slice call costs ~30 us
GAP_BYTES = 64 << 10  # rows skipped inside a run cost less than a second slice call up to here
MIN_CACHE_BYTES = 1 << 20  # HDF5's own default chunk cache


def row_bytes(x: Any) -> int:
    """Bytes of one sample of an h5py dataset (or array) ``x``."""
    return int(np.prod(x.shape[1:], dtype=np.int64)) * x.dtype.itemsize


def block_rows(x: Any) -> int:
    """Rows per block of the shuffled order for an h5py dataset ``x``.

    A chunked dataset's blocks are whole chunks along the sample axis (several chunks if
    one chunk is under :data:`MIN_BLOCK_BYTES`), so a block read touches its own chunks
    only. A contiguous dataset's blocks are :data:`MIN_BLOCK_BYTES` of rows.
    """
    per_row = max(row_bytes(x), 1)
    if x.chunks is None:
        return max(1, math.ceil(MIN_BLOCK_BYTES / per_row))
    chunk = int(x.chunks[0])
    return chunk * max(1, math.ceil(MIN_BLOCK_BYTES / (chunk * per_row)))


def _prime_at_least(n: int) -> int:
    n = max(n, 3) | 1
    while any(n % p == 0 for p in range(3, int(n**0.5) + 1, 2)):
        n += 2
    return n


class HDF5Reader:
    """Reads the features of index rows from a fixed list of HDF5 files.

    The HDF5 chunk cache is off for unfiltered datasets: raytrain reads whole chunks,
    each once per epoch, so a cache would only add a copy (docs/decisions.md). A filtered
    (compressed) dataset gets a cache of ``cache_bytes``, what one window touches, so
    a chunk is decompressed once per window even when a read covers part of it.

    Args:
        files: The files, indexed by the file codes passed to :meth:`read`.
        x_key: The features dataset in each file.
        cache_bytes: HDF5 chunk cache per open file (at least 1 MiB); raytrain passes
            the bytes of one shuffle window plus one block.
    """

    def __init__(self, files: list[str], x_key: str, cache_bytes: int = MIN_CACHE_BYTES):
        self._files = files
        self._x_key = x_key
        self._cache_bytes = max(int(cache_bytes), MIN_CACHE_BYTES)
        self._open: dict[int, Any] = {}  # file code -> open h5py.File
        self._datasets: dict[int, Any] = {}  # file code -> its features dataset (lookups cost ~80 us)

    def _dataset(self, code: int) -> Any:
        if code not in self._datasets:
            path = self._files[code]
            f = h5py.File(path, "r", rdcc_nbytes=0)  # see the class docstring
            x = f[self._x_key]
            if x.chunks is not None and x.id.get_create_plist().get_nfilters() > 0:
                chunk_bytes = int(np.prod(x.chunks)) * x.dtype.itemsize
                f.close()
                f = h5py.File(
                    path, "r", rdcc_nbytes=self._cache_bytes,
                    # HDF5 suggests ~100 hash slots per cached chunk, a prime number.
                    rdcc_nslots=_prime_at_least(100 * max(1, self._cache_bytes // chunk_bytes)),
                )
            self._open[code] = f
            self._datasets[code] = f[self._x_key]
        return self._datasets[code]

    def sample_layout(self) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of one sample (from the first file)."""
        x = self._dataset(0)
        return tuple(x.shape[1:]), x.dtype

    def read_sorted(self, file_codes: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
        """Read (file, row) pairs, sorted by file then row, into ``out[:len(rows)]``.

        Rows that lie close together in one file are read as one slice (the rows in
        between are read and dropped); each slice is small enough to stay in the CPU
        cache on its way to ``out``.
        """
        n = len(rows)
        if n == 0:
            return
        first = self._dataset(int(file_codes[0]))
        max_gap = 1 + GAP_BYTES // max(row_bytes(first), 1)
        breaks = np.flatnonzero((file_codes[1:] != file_codes[:-1]) | (np.diff(rows) > max_gap)) + 1
        for s, e in zip(np.r_[0, breaks], np.r_[breaks, n]):
            x = self._dataset(int(file_codes[s]))
            lo, hi = int(rows[s]), int(rows[e - 1]) + 1
            out[s:e] = x[lo:hi] if hi - lo == e - s else x[lo:hi][rows[s:e] - lo]

    def close(self) -> None:
        self._datasets.clear()
        for f in self._open.values():
            f.close()
        self._open.clear()
