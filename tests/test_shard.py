import numpy as np
import pyarrow as pa
import pytest

from raytrain.data.order import TRAIN
from raytrain.data.plan import plan_steps
from raytrain.data.shard import Shard
from raytrain.data.split import PARTITION, cut_shards, partition_index
from raytrain.errors import RaytrainError


def index_table(n: int) -> pa.Table:
    return pa.table({"sample_id": np.arange(n), "file": ["f"] * n, "row": np.arange(n), "label": np.zeros(n, int)})


def epoch_ids(
    n: int, world: int, global_batch: int, seed: int, epoch: int, block: int, window: int, stream: int = TRAIN
) -> list[np.ndarray]:
    """The sample ids every rank trains on in one epoch, per rank, as raytrain plans them."""
    plan = plan_steps(n, 0, world, global_batch, 1)
    out = []
    for table in cut_shards(index_table(n), world, 24, block):
        shard = Shard(table, {"f": block}, 24)
        positions, _ = shard.epoch_order(window, seed, epoch, stream)
        out.append(shard.sample_ids[positions[: plan.train_steps * plan.worker_batch]])
    return out


@pytest.mark.parametrize(
    "n, world, batch, block, window",
    [(1001, 3, 9, 32, 100), (101, 3, 9, 8, 20), (100, 2, 10, 1, 1), (37, 1, 4, 5, 1000), (64, 4, 64, 16, 16)],
)
def test_exactly_once_equal_steps_and_rotation(n, world, batch, block, window):
    used_per_epoch = []
    for epoch in range(6):
        per_rank = epoch_ids(n, world, batch, seed=3, epoch=epoch, block=block, window=window)
        assert len({len(ids) for ids in per_rank}) == 1  # equal steps on every rank
        used = np.concatenate(per_rank)
        assert len(np.unique(used)) == len(used)  # no sample twice in an epoch
        assert n - len(used) < batch  # fewer than one global batch left out
        used_per_epoch.append(set(used.tolist()))
    left_out = [frozenset(range(n)) - u for u in used_per_epoch]
    if any(left_out):
        assert len(set(left_out)) > 1  # which samples are left out changes
        assert frozenset().union(*used_per_epoch) == frozenset(range(n))  # none is permanently unused


def test_partitions_are_dealt_in_stripes_and_cover_everything():
    of = partition_index(index_table(11), 3).column(PARTITION).to_pylist()
    assert of == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1]  # the last round's sizes differ by one, larger first
    n, world = 10_000, 3
    shards = cut_shards(index_table(n), world, 24, block_rows=16)
    rows = [s.column("row").to_numpy() for s in shards]
    assert sorted(np.concatenate(rows).tolist()) == list(range(n))  # each row once
    assert [len(r) for r in rows] in ([3333, 3333, 3334], [3334, 3333, 3333])
    assert rows[0][:18].tolist() == list(range(16)) + [48, 49]  # whole 16-row stripes: partitions 0, 3, ...
    sizes = np.bincount(partition_index(index_table(n), 24, 16).column(PARTITION).to_numpy())
    assert sizes.max() - sizes.min() <= 1 and np.all(np.diff(sizes) <= 0)


def test_plan_rejects_sizes_that_leave_a_rank_idle():
    with pytest.raises(RaytrainError, match="less than one global batch of 16"):
        plan_steps(10, 0, 2, 16, 1)
    with pytest.raises(RaytrainError, match="validation samples make less than one global batch"):
        plan_steps(100, 3, 2, 8, 1)
    plan = plan_steps(1001, 200, 3, 9, 1)
    assert (plan.train_steps, plan.val_steps, plan.worker_batch) == (111, 22, 3)


def test_per_replica_batches_for_gpu_workers():
    plan = plan_steps(1000, 0, 2, 64, 4)
    assert plan.worker_batch == 32 and plan.replica_batch == 8
