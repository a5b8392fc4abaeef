"""A worker's shard of the index, as numpy arrays, and where its blocks begin.

Ray Train hands each worker its cut of the index (:mod:`raytrain.data.ray_datasets`);
:meth:`Shard.from_rows` collects it. The shard is small (about 30 bytes per sample):
the samples themselves are read by the worker's loader.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import pyarrow as pa

from raytrain.data.order import Part, block_starts, epoch_order
from raytrain.data.schema import INDEX_SCHEMA
from raytrain.data.split import PARTITION

DEFAULT_BLOCK_ROWS = 32  # for a file the index did not measure


class Shard:
    """The rows of the index one worker reads, as numpy arrays, and their blocks.

    Args:
        table: Index rows (any order; sorted here by ``sample_id``, i.e. by file and row),
            with the partition column of :func:`raytrain.data.split.partition_index`
            (without it: one partition, as ``raytrain evaluate`` and the benches read).
        rows_per_block: Block length per file (:func:`raytrain.data.hdf5_reader.block_rows`).
        partitions: The number of partitions the whole index was dealt into.
    """

    def __init__(self, table: pa.Table, rows_per_block: Mapping[str, int] | None = None, partitions: int = 1):
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
        self.partitions = partitions
        if PARTITION in table.column_names:
            of = table.column(PARTITION).to_numpy()
        else:
            of, self.partitions = np.zeros(len(self.rows), np.int32), 1
        self.parts: list[Part] = []
        for p in np.unique(of):
            members = np.flatnonzero(of == p)
            starts = block_starts(self.file_codes[members], self.rows[members], per_file)
            self.parts.append(Part(int(p), members, starts))

    @classmethod
    def from_rows(cls, rows: Any, rows_per_block: Mapping[str, int] | None = None, partitions: int = 1) -> "Shard":
        """Collect a shard from a Ray ``DataIterator`` or ``Dataset`` of index rows."""
        tables = list(rows.iter_batches(batch_size=None, batch_format="pyarrow"))
        return cls(pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table(), rows_per_block, partitions)

    def epoch_order(self, window: Optional[int], seed: int, epoch: int, stream: int,
                    offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """This shard's positions in the epoch's global order, and its windows (see
        :func:`raytrain.data.order.epoch_order`; ``window`` None: whole partitions)."""
        return epoch_order(self.parts, self.partitions, window, seed, epoch, stream, offset)

    def __len__(self) -> int:
        return len(self.rows)
