"""The sample index: one row per sample saying which file, which row, which label; never the pixels.

Both kinds of data produce the same table. An HDF5 sample is ``(file, row)``; an image
is ``(path, 0)``. The driver builds it (:mod:`raytrain.data.hdf5_index`,
:mod:`raytrain.data.image_index`), Ray Data carries it to the workers, and each worker
reads the samples of its own rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

INDEX_SCHEMA = pa.schema(
    [
        ("sample_id", pa.int64()),  # position in the concatenation of all files
        ("file", pa.string()),
        ("row", pa.int64()),
        ("label", pa.int64()),  # class index, also for one-hot files
    ]
)


@dataclass(frozen=True)
class SampleIndex:
    """All samples of a dataset and what a model needs to know about them."""

    table: pa.Table  # INDEX_SCHEMA, in file order
    sample_shape: tuple[int, ...]
    num_classes: int
    one_hot: bool  # labels were one-hot rows: train with categorical crossentropy
    dtype: str  # the features' dtype on disk
    rows_per_block: dict[str, int]  # per file: rows read together (see raytrain.data.order)
    class_names: tuple[str, ...] = ()  # image datasets: the name of each class index

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample as stored."""
        return int(np.prod(self.sample_shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def __len__(self) -> int:
        return self.table.num_rows

    def fingerprint(self) -> str:
        """A hash of what the index says about the data: the sample shape, dtype and classes,
        and each sample's file, row and label, in order (not the pixels: a file rewritten
        with the same samples' labels in the same places has the same fingerprint).
        ``--resume`` compares it with the run's to refuse data that changed since."""
        h = hashlib.sha256(json.dumps([list(self.sample_shape), self.dtype, self.num_classes, self.one_hot,
                                       list(self.class_names)]).encode())
        for name in ("file", "row", "label"):
            for chunk in self.table.column(name).chunks:
                for buffer in chunk.buffers()[1:]:
                    if buffer is not None:
                        h.update(memoryview(buffer))
        return h.hexdigest()[:16]
