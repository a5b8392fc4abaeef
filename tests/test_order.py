import numpy as np
import pyarrow as pa
import pytest

from raytrain.data.order import TRAIN, VALIDATION, block_starts, epoch_offset, partition_order
from raytrain.data.shard import Shard
from raytrain.data.split import cut_shards


def starts_of(n: int, block: int, first_row: int = 0) -> np.ndarray:
    rows = np.arange(first_row, first_row + n)
    return block_starts(np.zeros(n, np.int32), rows, np.array([block]))


def index_table(n: int) -> pa.Table:
    return pa.table({"sample_id": np.arange(n), "file": ["f"] * n, "row": np.arange(n), "label": np.zeros(n, int)})


def test_blocks_follow_chunk_boundaries_and_files():
    # rows 5..14 of a file chunked by 4 rows: blocks [5,6,7] [8..11] [12..14]
    assert starts_of(10, 4, first_row=5).tolist() == [0, 3, 7, 10]
    # a gap in the rows (validation rows taken out) stays inside its block
    rows = np.array([0, 2, 3, 4, 7, 9])
    assert block_starts(np.zeros(6, np.int32), rows, np.array([4])).tolist() == [0, 3, 5, 6]
    # a new file starts a new block even at the same row numbers
    codes = np.array([0, 0, 1, 1])
    assert block_starts(codes, np.array([0, 1, 0, 1]), np.array([4, 4])).tolist() == [0, 2, 4]


def test_order_is_a_function_of_seed_epoch_partition_and_stream():
    starts = starts_of(500, 16)

    def order(**kw):
        args = dict(window=64, seed=1, epoch=2, partition=0, stream=TRAIN) | kw
        return partition_order(starts, **args)

    a = order()
    assert np.array_equal(a, order())
    assert sorted(a.tolist()) == list(range(500))  # a permutation: no sample twice
    assert not np.array_equal(a, order(epoch=3))
    assert not np.array_equal(a, order(seed=2))
    assert not np.array_equal(a, order(stream=VALIDATION))
    assert not np.array_equal(a, order(partition=1))


@pytest.mark.parametrize("block, window", [(16, 64), (16, 50), (7, 7), (10, 1), (32, 10_000)])
def test_a_window_is_exactly_window_samples_of_whole_or_split_blocks(block, window):
    n = 1000
    starts = starts_of(n, block)
    positions = partition_order(starts, window, seed=0, epoch=0, partition=0, stream=TRAIN)
    block_of = np.searchsorted(starts, np.arange(n), side="right") - 1
    for a in range(0, n, window):
        blocks = np.unique(block_of[positions[a : a + window]])
        # the window's samples are its blocks' rows, less at most the two it shares with its neighbours
        whole = np.diff(starts)[blocks].sum()
        assert whole - 2 * (block - 1) <= min(window, n - a) <= whole


def test_window_mixes_blocks_and_block_order_changes():
    starts = starts_of(4096, 32)
    block_of = np.arange(4096) // 32
    e0 = partition_order(starts, 1024, seed=0, epoch=0, partition=0, stream=TRAIN)
    e1 = partition_order(starts, 1024, seed=0, epoch=1, partition=0, stream=TRAIN)
    assert len(np.unique(block_of[e0[:32]])) > 8  # a batch draws from many blocks of its window
    assert block_of[e0[0]] != block_of[e1[0]] or block_of[e0[-1]] != block_of[e1[-1]]


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        partition_order(starts_of(10, 4), 0, seed=0, epoch=0, partition=0, stream=TRAIN)


def global_batches(n: int, world: int, batch: int, window, epoch: int = 0, block: int = 8) -> list[frozenset]:
    """Each global step's set of sample ids, from every worker's own shard and order."""
    steps = n // batch
    offset = epoch_offset(n, steps, batch, 3, epoch, TRAIN)
    per_worker = []
    for table in cut_shards(index_table(n), world, 24, block):
        shard = Shard(table, {"f": block}, 24)
        positions, bounds = shard.epoch_order(window, 3, epoch, TRAIN, offset)
        assert bounds[0] == 0 and bounds[-1] == len(shard)
        per_worker.append(shard.sample_ids[positions[: steps * batch // world]].reshape(steps, -1))
    return [frozenset(np.concatenate([w[k] for w in per_worker]).tolist()) for k in range(steps)]


@pytest.mark.parametrize("n, batch, window", [(1001, 24, 100), (5000, 48, 4096), (101, 24, 20), (49, 24, None)])
def test_global_batches_are_the_same_for_any_worker_count(n, batch, window):
    one = global_batches(n, 1, batch, window)
    used = frozenset().union(*one)
    assert sum(len(b) for b in one) == len(used) == n // batch * batch  # no sample twice
    assert n - len(used) < batch  # fewer than one global batch left out
    for world in (2, 3, 4, 6, 8):
        assert global_batches(n, world, batch, window) == one, world
    assert global_batches(n, 2, batch, window, epoch=1) != one  # and a new order every epoch


def test_small_data_leaves_out_other_samples_every_epoch():
    # 45 images on 2 workers, batch 8: partitions of 1-2 samples; without the epoch's
    # offset the same 5 were left out in epochs 0 and 1 with this seed.
    left_out = [frozenset(range(45)) - frozenset().union(*global_batches(45, 2, 8, None, epoch=e, block=1))
                for e in range(6)]
    assert all(len(each) == 45 - 40 for each in left_out)
    assert all(a != b for a, b in zip(left_out, left_out[1:]))


def test_windows_bound_what_a_worker_holds():
    n, window, world = 4800, 480, 2
    for table in cut_shards(index_table(n), world, 24, 16):
        shard = Shard(table, {"f": 16}, 24)
        _, bounds = shard.epoch_order(window, 0, 0, TRAIN)
        assert np.all(np.diff(bounds) == window // world)  # its share of each global window
