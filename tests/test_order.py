import numpy as np
import pytest

from raytrain.data.order import (
    TRAIN,
    VALIDATION,
    block_starts,
    epoch_order,
    epoch_positions,
)


def starts_of(n: int, block: int, first_row: int = 0) -> np.ndarray:
    rows = np.arange(first_row, first_row + n)
    return block_starts(np.zeros(n, np.int32), rows, np.array([block]))


def test_blocks_follow_chunk_boundaries_and_files():
    # rows 5..14 of a file chunked by 4 rows: blocks [5,6,7] [8..11] [12..14]
    assert starts_of(10, 4, first_row=5).tolist() == [0, 3, 7, 10]
    # a gap in the rows (validation rows taken out) stays inside its block
    rows = np.array([0, 2, 3, 4, 7, 9])
    assert block_starts(np.zeros(6, np.int32), rows, np.array([4])).tolist() == [0, 3, 5, 6]
    # a new file starts a new block even at the same row numbers
    codes = np.array([0, 0, 1, 1])
    assert block_starts(codes, np.array([0, 1, 0, 1]), np.array([4, 4])).tolist() == [0, 2, 4]


def test_order_is_a_function_of_seed_and_epoch():
    starts = starts_of(500, 16)

    def order(**kw):
        args = dict(window=64, seed=1, epoch=2, rank=0, stream=TRAIN) | kw
        return epoch_order(starts, **args)[0]

    a = order()
    assert np.array_equal(a, order())
    assert sorted(a.tolist()) == list(range(500))  # a permutation: no sample twice
    assert not np.array_equal(a, order(epoch=3))
    assert not np.array_equal(a, order(seed=2))
    assert not np.array_equal(a, order(stream=VALIDATION))
    assert not np.array_equal(a, order(rank=1))


@pytest.mark.parametrize("block, window", [(16, 64), (16, 50), (7, 7), (10, 1), (32, 10_000)])
def test_windows_are_whole_blocks_and_bounded(block, window):
    n = 1000
    starts = starts_of(n, block)
    positions, bounds = epoch_order(starts, window, seed=0, epoch=0, rank=0, stream=TRAIN)
    assert bounds[0] == 0 and bounds[-1] == n
    largest = int(np.diff(starts).max())
    block_of = np.searchsorted(starts, np.arange(n), side="right") - 1
    for a, b in zip(bounds[:-1], bounds[1:]):
        assert 0 < b - a <= window + largest - 1  # the memory bound documented in raytrain.data.order
        blocks = np.unique(block_of[positions[a:b]])
        # a window holds whole blocks only
        assert np.diff(starts)[blocks].sum() == b - a


def test_window_mixes_blocks_and_block_order_changes():
    starts = starts_of(4096, 32)
    block_of = np.arange(4096) // 32
    e0, _ = epoch_order(starts, 1024, seed=0, epoch=0, rank=0, stream=TRAIN)
    e1, _ = epoch_order(starts, 1024, seed=0, epoch=1, rank=0, stream=TRAIN)
    first_batch = block_of[e0[:32]]
    assert len(np.unique(first_batch)) > 8  # a batch draws from many blocks of its window
    assert block_of[e0[0]] != block_of[e1[0]] or block_of[e0[-1]] != block_of[e1[-1]]


def test_positions_reject_a_plan_larger_than_the_shard():
    from raytrain.errors import RaytrainError

    with pytest.raises(RaytrainError, match="split unevenly"):
        epoch_positions(starts_of(10, 4), 8, steps=3, batch=4, seed=0, epoch=0, rank=0, stream=TRAIN)


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        epoch_order(starts_of(10, 4), 0, seed=0, epoch=0, rank=0, stream=TRAIN)
