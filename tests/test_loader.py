import numpy as np
import pytest

from raytrain.data.hdf5_index import build_hdf5_index
from raytrain.data.hdf5_loader import HDF5Loader
from raytrain.data.loader import auto_window
from raytrain.data.hdf5_reader import HDF5Reader
from raytrain.data.order import TRAIN
from raytrain.data.plan import plan_steps
from raytrain.data.shard import Shard
from raytrain.data.split import cut_shards
from tests.common import numbered


class CountingReader(HDF5Reader):
    """Records how many rows each read asks for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads: list[int] = []

    def read_sorted(self, file_codes, rows, out):
        assert np.all(np.diff(rows[file_codes == file_codes[0]]) > 0)  # asked in file order
        self.reads.append(len(rows))
        return super().read_sorted(file_codes, rows, out)


@pytest.fixture
def two_files(tmp_path):
    a = numbered(str(tmp_path / "a.h5"), 300, chunks=(16, 4, 4, 3))
    b = numbered(str(tmp_path / "b.h5"), 211, chunks=(16, 4, 4, 3))
    return build_hdf5_index([a, b])


def test_batches_are_the_planned_samples_in_order(two_files):
    index = two_files
    shard = Shard(index.table, index.rows_per_block)
    loader = HDF5Loader(shard, HDF5Reader(shard.files, "X"), window=40, seed=5, rank=0, stream=TRAIN)
    steps, batch = 50, 10
    for epoch in (0, 1):
        got = list(loader.epoch(epoch, steps, batch))
        want = shard.epoch_order(40, 5, epoch, TRAIN)[0][: steps * batch].reshape(steps, batch)
        assert len(got) == steps
        for (x, y), pos in zip(got, want):
            assert x.shape == (batch, 4, 4, 3) and x.dtype == np.uint8
            assert np.array_equal(x[:, 0, 0, 0], shard.rows[pos] % 256)  # the features of those rows
            assert np.array_equal(y, shard.labels[pos])


def test_every_sample_once_per_epoch_across_workers(two_files):
    index = two_files
    world, global_batch = 3, 12
    plan = plan_steps(len(index), 0, world, global_batch, 1)
    for epoch in range(3):
        seen = []
        for rank, table in enumerate(cut_shards(index.table, world, 24, 16)):
            shard = Shard(table, index.rows_per_block, 24)
            loader = HDF5Loader(shard, HDF5Reader(shard.files, "X"), window=50, seed=0, rank=rank, stream=TRAIN)
            pos = shard.epoch_order(50, 0, epoch, TRAIN)[0][: plan.train_steps * plan.worker_batch]
            batches = list(loader.epoch(epoch, plan.train_steps, plan.worker_batch))
            assert len(batches) == plan.train_steps  # equal steps on every rank
            rows = np.concatenate([x[:, 0, 0, 0] for x, _ in batches])
            assert np.array_equal(rows, shard.rows[pos.reshape(-1)] % 256)
            seen.append(shard.sample_ids[pos.reshape(-1)])
        seen = np.concatenate(seen)
        assert len(np.unique(seen)) == len(seen)
        assert len(index) - len(seen) < global_batch


def test_reads_are_bounded_by_the_window(two_files):
    index = two_files
    shard = Shard(index.table, {f: 16 for f in index.rows_per_block})  # the files' chunks
    largest_block = int(np.diff(shard.block_starts).max())
    reader = CountingReader(shard.files, "X")
    loader = HDF5Loader(shard, reader, window=48, seed=0, rank=0, stream=TRAIN)
    n = sum(1 for _ in loader.epoch(0, 51, 10))
    assert n == 51
    assert max(reader.reads) <= 48 + largest_block - 1
    assert sum(reader.reads) == 510  # only what the epoch's steps need is read


def test_a_resumed_epoch_starts_at_its_step_and_reads_none_before(two_files):
    index = two_files
    shard = Shard(index.table, index.rows_per_block)
    whole = list(HDF5Loader(shard, HDF5Reader(shard.files, "X"), 48, 0, 0, TRAIN).epoch(2, 51, 10))
    reader = CountingReader(shard.files, "X")
    rest = list(HDF5Loader(shard, reader, 48, 0, 0, TRAIN).epoch(2, 51, 10, start=17))
    assert len(rest) == 51 - 17
    for (x, y), (wx, wy) in zip(rest, whole[17:]):
        assert np.array_equal(x, wx) and np.array_equal(y, wy)
    assert sum(reader.reads) == (51 - 17) * 10  # the skipped steps' samples are not read


def test_prefetched_epochs_yield_every_batch(two_files):
    from raytrain.data.feed import read_ahead

    index = two_files
    shard = Shard(index.table, index.rows_per_block)
    loader = HDF5Loader(shard, HDF5Reader(shard.files, "X"), window=64, seed=0, rank=0, stream=TRAIN)
    epochs = (b for e in range(3) for b in loader.epoch(e, steps=20, batch=8))
    feed, ds = read_ahead(epochs, 60, (8, *index.sample_shape), index.dtype, 2, lambda x, y: (x, y))
    batches = list(ds.as_numpy_iterator())
    feed.stop()
    assert len(batches) == 60 and feed.error is None


def test_auto_window_holds_64_mib_at_most_4096_samples():
    assert auto_window(64 * 64 * 3) == 4096
    assert auto_window(16 * 3 * 112 * 112) == (64 << 20) // (16 * 3 * 112 * 112)
    assert auto_window(1 << 30) == 1


def test_empty_shard_has_no_blocks():
    from raytrain.data.schema import INDEX_SCHEMA

    shard = Shard(INDEX_SCHEMA.empty_table())
    assert len(shard) == 0 and shard.block_starts.tolist() == [0]
