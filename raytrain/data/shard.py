"""A worker's shard of the index, as numpy arrays, and where its blocks begin.

Ray Train hands each worker its cut of the index (:mod:`raytrain.data.ray_datasets`);
:meth:`Shard.from_rows` collects it. The shard is small (about 30 bytes per sample):
the samples themselves are read by the worker's loader.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from raytrain.data.order import block_starts
from raytrain.data.schema import INDEX_SCHEMA

DEFAULT_BLOCK_ROWS = 32  # for a file the index did not measure


class Shard:
    """The rows of the index one worker reads, as numpy arrays, and their blocks.

    Args:
        table: Index rows (any order; sorted here by ``sample_id``, i.e. by file and row).
        rows_per_block: Block length per file (:func:`raytrain.data.hdf5_reader.block_rows`).
    """

    def __init__(self, table: pa.Table, rows_per_block: Mapping[str, int] | None = None):
        ids = table.column("sample_id").to_numpy()
        if np.any(ids[1:] < ids[:-1]):  # Ray Data normally keeps the order; sorting copies the table
            table = table.sort_by("sample_id")
        files = table.column("file").combine_chunks().dictionary_encode()
        self.files: list[str] = files.dictionary.to_pylist()
        self.file_codes = files.indices.to_numpy(zero_copy_only=False).astype(np.int32)
        self.rows = table.column("row").to_numpy()
        self.labels = table.column("label").to_numpy()
        self.sample_ids = table.column("sample_id").to_numpy()
        per_file = np.array(
            [(rows_per_block or {}).get(f, DEFAULT_BLOCK_ROWS) for f in self.files] or [1], dtype=np.int64
        )
        self.block_starts = block_starts(self.file_codes, self.rows, per_file)

    @classmethod
    def from_rows(cls, rows: Any, rows_per_block: Mapping[str, int] | None = None) -> "Shard":
        """Collect a shard from a Ray ``DataIterator`` or ``Dataset`` of index rows."""
        tables = list(rows.iter_batches(batch_size=None, batch_format="pyarrow"))
        return cls(pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table(), rows_per_block)

    def __len__(self) -> int:
        return len(self.rows)
