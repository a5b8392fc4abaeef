import numpy as np
import pyarrow as pa
import pytest

from raytrain.data.order import TRAIN, epoch_positions
from raytrain.data.plan import plan_steps
from raytrain.data.shard import Shard
from raytrain.data.split import cut_shards
from raytrain.errors import RaytrainError


def index_table(n: int) -> pa.Table:
    return pa.table({"sample_id": np.arange(n), "file": ["f"] * n, "row": np.arange(n), "label": np.zeros(n, int)})


def epoch_ids(
    n: int, world: int, global_batch: int, seed: int, epoch: int, block: int, window: int, stream: int = TRAIN
) -> list[np.ndarray]:
    """The sample ids every rank trains on in one epoch, per rank, as raytrain plans them."""
    plan = plan_steps(n, 0, world, global_batch, 1)
    out = []
    for rank, table in enumerate(cut_shards(index_table(n), world)):
        shard = Shard(table, {"f": block})
        pos = epoch_positions(shard.block_starts, window, plan.train_steps, plan.worker_batch, seed, epoch, rank, stream)
        assert pos.shape == (plan.train_steps, plan.worker_batch)
        out.append(shard.sample_ids[pos.reshape(-1)])
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


def test_shards_are_dealt_in_stripes_and_cover_everything():
    shards = cut_shards(index_table(11), 3)
    assert [s.column("row").to_pylist() for s in shards] == [[0, 3, 6], [1, 4, 7], [2, 5, 8, 9, 10]]
    n, world = 10_000, 3
    shards = cut_shards(index_table(n), world, block_rows=32)
    rows = [s.column("row").to_numpy() for s in shards]
    assert sorted(np.concatenate(rows).tolist()) == list(range(n))  # each row once
    assert min(len(r) for r in rows) >= n // world  # what the step plan counts on
    assert rows[0][:34].tolist() == list(range(32)) + [96, 97]  # whole 32-row stripes, dealt round-robin


def test_plan_rejects_sizes_that_leave_a_rank_idle():
    with pytest.raises(RaytrainError, match="fewer than its batch"):
        plan_steps(10, 0, 2, 16, 1)
    with pytest.raises(RaytrainError, match="only 2 training samples"):
        plan_steps(2, 0, 3, 3, 1)
    with pytest.raises(RaytrainError, match="validation samples make less than one global batch"):
        plan_steps(100, 3, 2, 8, 1)
    plan = plan_steps(1001, 200, 3, 9, 1)
    assert (plan.train_steps, plan.val_steps, plan.worker_batch) == (111, 22, 3)


def test_per_replica_batches_for_gpu_workers():
    plan = plan_steps(1000, 0, 2, 64, 4)
    assert plan.worker_batch == 32 and plan.replica_batch == 8
