"""The step plan: equal steps on every rank, each sample at most once.

The rules (for training and for validation alike):

- The driver computes the step count once from the sample count, so every rank runs
  the same number of steps: ``steps = n // global_batch``. Unequal step counts across
  ranks would hang the all-reduce silently.
- The index is dealt into ``data.partitions`` partitions and each worker takes
  ``partitions / world_size`` of them (:func:`raytrain.data.split.cut_shards`); an
  epoch's global order interleaves the partitions so that every global batch holds
  exactly ``global_batch / world_size`` samples of every worker
  (:mod:`raytrain.data.order`). No row is used twice in an epoch; fewer than one global
  batch is left out, and which rows are left out changes every epoch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from raytrain.data.order import TRAIN, epoch_offset
from raytrain.errors import RaytrainError


@dataclass(frozen=True)
class StepPlan:
    """How many samples each rank reads per step and how many steps it runs."""

    world_size: int
    worker_batch: int  # samples per worker per step
    replica_batch: int  # samples per local replica (GPU) per step
    train_steps: int
    val_steps: int
    train_samples: int = 0
    val_samples: int = 0

    @property
    def global_batch(self) -> int:
        return self.worker_batch * self.world_size

    def for_world(self, world_size: int) -> "StepPlan":
        """This plan with ``world_size`` workers (an elastic run's size after a restart): the
        same global batch and steps, so the same global order, split ``world_size`` ways."""
        replicas = self.worker_batch // self.replica_batch
        worker_batch = self.global_batch // world_size
        if worker_batch * world_size != self.global_batch or worker_batch % replicas:
            raise RaytrainError(f"a global batch of {self.global_batch} does not divide over {world_size} workers "
                                f"x {replicas} replicas (raytrain.config.validate checks every count of the range)")
        return dataclasses.replace(self, world_size=world_size, worker_batch=worker_batch,
                                   replica_batch=worker_batch // replicas)

    def offset(self, stream: int, seed: int, epoch: int) -> int:
        """Where ``epoch``'s steps begin in the global order (:func:`raytrain.data.order.epoch_offset`)."""
        samples, steps = (self.train_samples, self.train_steps) if stream == TRAIN else \
            (self.val_samples, self.val_steps)
        return epoch_offset(samples, steps, self.global_batch, seed, epoch, stream)


def steps_per_epoch(num_samples: int, global_batch: int) -> int:
    """Steps of one epoch: whole global batches of the global order."""
    return num_samples // global_batch


def plan_steps(
    train_samples: int, val_samples: int, world_size: int, global_batch: int, replicas_per_worker: int
) -> StepPlan:
    """Compute the step plan and reject sizes that would leave a rank with nothing to do.

    Args:
        train_samples: Rows in the training index.
        val_samples: Rows in the validation index (0 = no validation).
        world_size: Number of workers (1 in local mode).
        global_batch: ``training.batch_size``, summed over all workers.
        replicas_per_worker: Local replicas (GPUs) on each worker, at least 1.
    """
    worker_batch = global_batch // world_size
    train_steps = steps_per_epoch(train_samples, global_batch)
    val_steps = steps_per_epoch(val_samples, global_batch)
    if train_steps == 0:
        raise RaytrainError(
            f"{train_samples} training samples make less than one global batch of {global_batch}; "
            "use a smaller --batch-size"
        )
    if val_samples and val_steps == 0:
        raise RaytrainError(
            f"{val_samples} validation samples make less than one global batch of {global_batch}; "
            "raise --validation-ratio, lower --batch-size, or set --validation-ratio 0"
        )
    return StepPlan(world_size, worker_batch, worker_batch // replicas_per_worker, train_steps, val_steps,
                    train_samples, val_samples)
