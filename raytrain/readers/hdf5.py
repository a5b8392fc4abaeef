"""Read whole batches of features from HDF5 files.

Files are opened lazily, in the process that reads (an open h5py file must not cross
a fork or be pickled). Within a batch, rows are read in file order: a batch whose rows
lie close together is read with one slice, a scattered one row by row. Both avoid
h5py's fancy indexing (``X[sorted_idx]``), which is ~25x slower than reading rows
one at a time (measured in ../shared/NOTES.md).
"""

from __future__ import annotations

import numpy as np

SLICE_SPAN = 4  # read one slice when it spans at most this many times the rows wanted


def to_float32(x: np.ndarray) -> np.ndarray:
    """Features as float32; uint8 (images) are scaled to [0, 1]."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) * np.float32(1.0 / 255.0)
    return x.astype(np.float32, copy=False)


class HDF5Reader:
    """Reads features of index rows from a fixed list of HDF5 files."""

    def __init__(self, files: list[str], x_key: str):
        self._files = files
        self._x_key = x_key
        self._open: dict[int, object] = {}

    def _dataset(self, code: int):
        if code not in self._open:
            import h5py

            self._open[code] = h5py.File(self._files[code], "r")
        return self._open[code][self._x_key]

    def read(self, file_codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Features of the given (file, row) pairs, in the order given, as float32."""
        out = None
        for code in np.unique(file_codes):
            where = np.flatnonzero(file_codes == code)
            wanted = rows[where]
            x = self._dataset(int(code))
            if out is None:
                out = np.empty((len(rows), *x.shape[1:]), dtype=np.float32)
            lo, hi = int(wanted.min()), int(wanted.max()) + 1
            if hi - lo <= SLICE_SPAN * len(wanted):
                out[where] = to_float32(x[lo:hi][wanted - lo])
            else:
                for pos, row in zip(where, wanted):
                    out[pos] = to_float32(x[int(row)])
        assert out is not None, "read() needs at least one row"
        return out

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()
