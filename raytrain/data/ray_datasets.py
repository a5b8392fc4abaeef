"""The index as Ray Datasets, and how Ray Train hands each worker its shard.

:class:`FixedShards` cuts the (small) index into one part per worker on the driver
(:func:`raytrain.data.split.cut_shards`: each worker takes whole partitions of the
sample order), served by ``get_dataset_shard``. Ray Train's default ``streaming_split(equal=True)`` is
not used: it drops up to ``world_size - 1`` rows (always the same ones), hands blocks
to whichever worker asks first (so a worker's shard changes from run to run), and needs
free CPUs for its split while the workers hold every CPU of a small machine. Fixed cuts
keep each worker's shard the same for the same data and world size, read in whole
blocks, a fair sample of the data, and drop nothing.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from ray.train import DataConfig

from raytrain.data.split import cut_shards


class FixedShards(DataConfig):
    """Give rank ``r`` of ``W`` workers the ``r``-th of ``W`` parts of every dataset (see
    :func:`raytrain.data.split.cut_shards`), for each ``W`` the run may start with.

    The cuts are made on the driver, where CPUs are still free, and travel with this
    config to Ray Train's dataset manager. Creating or cutting a Ray Dataset there
    instead runs Ray tasks, which wait forever for a CPU when the training workers
    hold all of them (as on a 2-core machine with 2 workers).
    """

    def __init__(self, tables: dict[str, pa.Table], world_sizes: list[int], partitions: int, block_rows: int):
        import ray.data

        super().__init__()
        # An elastic run may start or restart with any count of its range: a cut for each.
        self._shards = {
            world: {
                name: [ray.data.from_arrow(shard) for shard in cut_shards(t, world, partitions, block_rows)]
                for name, t in tables.items()
                if t.num_rows
            }
            for world in world_sizes
        }

    def configure(
        self,
        datasets: dict[str, Any],
        world_size: int,
        worker_handles: Any = None,
        worker_node_ids: Any = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        assert world_size in self._shards, f"cut for {sorted(self._shards)} workers, started {world_size}"
        output: list[dict[str, Any]] = [{} for _ in range(world_size)]
        for name in datasets:
            for rank, shard in enumerate(self._shards[world_size][name]):
                output[rank][name] = shard.iterator()
        return output


def to_ray_datasets(train: pa.Table, validation: pa.Table) -> dict[str, Any]:
    """The training and (if not empty) validation index as Ray Datasets."""
    import ray.data

    parts = {"train": train, "validation": validation}
    return {name: ray.data.from_arrow(t) for name, t in parts.items() if t.num_rows}
