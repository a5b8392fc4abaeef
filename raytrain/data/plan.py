"""The step plan: equal steps on every rank, each sample at most once.

The rules (for training and for validation alike):

- The driver computes the step count once from the sample count, so every rank runs
  the same number of steps: ``steps = (n // world_size) // worker_batch``. Unequal
  step counts across ranks would hang the all-reduce silently.
- The index is dealt into ``world_size`` shards of at least ``n // world_size`` rows
  each, every one a fair sample of the data; no row is dropped by the split
  (:func:`raytrain.data.split.cut_shards`).
- Each epoch a worker orders its shard (a block shuffle seeded by
  ``(seed, epoch, rank, stream)``, see :mod:`raytrain.data.order`) and trains on the first
  ``steps * worker_batch`` rows of that order. No row is used twice in an epoch; fewer
  than one global batch is left out in total (at most
  ``world_size * (worker_batch - 1) + world_size - 1`` rows), and which rows are left
  out changes every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

from raytrain.errors import RaytrainError


@dataclass(frozen=True)
class StepPlan:
    """How many samples each rank reads per step and how many steps it runs."""

    world_size: int
    worker_batch: int  # samples per worker per step
    replica_batch: int  # samples per local replica (GPU) per step
    train_steps: int
    val_steps: int

    @property
    def global_batch(self) -> int:
        return self.worker_batch * self.world_size


def steps_per_epoch(num_samples: int, world_size: int, worker_batch: int) -> int:
    """Steps every rank runs so that no rank runs out of its shard."""
    return (num_samples // world_size) // worker_batch


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
    train_steps = steps_per_epoch(train_samples, world_size, worker_batch)
    val_steps = steps_per_epoch(val_samples, world_size, worker_batch)
    if train_samples < world_size:
        raise RaytrainError(
            f"{world_size} workers but only {train_samples} training samples; use fewer --num-workers"
        )
    if train_steps == 0:
        who = f"each of the {world_size} workers gets" if world_size > 1 else "the worker gets"
        raise RaytrainError(
            f"{who} {train_samples // world_size} training samples, fewer than "
            f"its batch of {worker_batch} (--batch-size {global_batch} / {world_size} workers); "
            "use a smaller --batch-size or fewer --num-workers"
        )
    if val_samples and val_steps == 0:
        raise RaytrainError(
            f"{val_samples} validation samples make less than one global batch of {global_batch}; "
            "raise --validation-ratio, lower --batch-size, or set --validation-ratio 0"
        )
    return StepPlan(world_size, worker_batch, worker_batch // replicas_per_worker, train_steps, val_steps)
