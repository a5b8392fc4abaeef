"""The per-worker training loop, run by every Ray Train worker (or in-process).

Order matters: the strategy is created first, before any other TensorFlow op
("collective ops must be configured at program startup"); the model is built and
compiled in its scope. Each epoch's batches reach ``fit`` through
``strategy.distribute_datasets_from_function``: every local replica pulls its own
per-replica batches, so every sample of a worker's batch is trained on. (Handing a
``Sequence`` to ``fit`` silently trains on 1 of every N samples; ``from_generator``
with auto-sharding off splits each batch N ways; see ../shared/NOTES.md.)
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np

from raytrain.config import JobConfig
from raytrain.prefetch import prefetch
from raytrain.shard import TRAIN, VALIDATION, Shard, StepPlan


PREFETCH_BATCHES = 4  # per-replica batches prepared ahead of the training step


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, computed once on the driver."""

    job: JobConfig
    plan: StepPlan
    sample_shape: tuple[int, ...]
    num_classes: int
    one_hot: bool


def _replica_batches(
    shard: Shard, reader: Any, spec: WorkerSpec, steps: int, epoch: int, rank: int, stream: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield one epoch's per-replica (x, y) batches: ``replicas`` of them per step."""
    plan, seed = spec.plan, spec.job.data.seed
    eye = np.eye(spec.num_classes, dtype=np.float32) if spec.one_hot else None
    for positions in shard.batches(steps, plan.worker_batch, seed, epoch, rank, stream):
        x = reader.read(shard.file_codes[positions], shard.rows[positions])
        y = shard.labels[positions]
        y = eye[y] if eye is not None else y
        for start in range(0, plan.worker_batch, plan.replica_batch):
            yield x[start : start + plan.replica_batch], y[start : start + plan.replica_batch]


def _distributed(strategy: Any, make_batches: Any, spec: WorkerSpec) -> Any:
    """A distributed dataset over a generator of per-replica batches."""
    import tensorflow as tf

    b = spec.plan.replica_batch
    y_spec = (
        tf.TensorSpec((b, spec.num_classes), tf.float32) if spec.one_hot else tf.TensorSpec((b,), tf.int64)
    )
    signature = (tf.TensorSpec((b, *spec.sample_shape), tf.float32), y_spec)

    def dataset_fn(_: Any) -> Any:
        return tf.data.Dataset.from_generator(
            lambda: prefetch(make_batches(), PREFETCH_BATCHES), output_signature=signature
        )

    return strategy.distribute_datasets_from_function(dataset_fn)


def _weights_digest(model: Any) -> str:
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def _epoch_line(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    shown = [f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("epoch", "epoch_time_s", "samples_per_s")]
    return (
        f"epoch {epoch}/{epochs}  " + "  ".join(shown)
        + f"  {metrics['samples_per_s']:.0f} samples/s  {metrics['epoch_time_s']:.1f} s"
    )


def _save_model(model: Any, run_dir: str, rank: int) -> None:
    """Save the model; every rank must call this (saving under the strategy is collective).

    Rank 0 writes ``<run_dir>/model/``; the others write to a scratch folder that is
    removed afterwards, as TensorFlow's multi-worker guide prescribes.
    """
    import shutil
    import tempfile

    if rank == 0:
        model.save(os.path.join(run_dir, "model"), save_format="tf")
        return
    scratch = tempfile.mkdtemp(prefix=f"raytrain-rank{rank}-")
    try:
        model.save(os.path.join(scratch, "model"), save_format="tf")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def epoch_reporter(plan: StepPlan, rank: int, epochs: int, metrics_path: str, current: dict[str, int]) -> Any:
    """A callback that, at each epoch's end on every rank, reports metrics to Ray Train
    (a barrier every rank must reach equally often); rank 0 also appends them to
    ``metrics.jsonl`` and prints one line. It keeps ``current["epoch"]`` up to date.
    (Built here: tf_keras is imported late.)"""
    import ray.train
    import tf_keras

    class EpochReporter(tf_keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.train_seconds = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            current["epoch"] = epoch
            self.started = time.perf_counter()
            self.train_end: Optional[float] = None

        def on_test_begin(self, logs: Any = None) -> None:
            self.train_end = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            ended = time.perf_counter()
            train_time = (self.train_end or ended) - self.started
            self.train_seconds += train_time
            metrics: dict[str, Any] = {"epoch": epoch + 1}
            metrics.update({k: float(v) for k, v in (logs or {}).items()})
            metrics["samples_per_s"] = plan.train_steps * plan.global_batch / train_time
            metrics["epoch_time_s"] = ended - self.started
            if rank == 0:
                os.makedirs(os.path.dirname(metrics_path), exist_ok=True)
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                # Not print(): Ray Train patches it into its logger, which shows every line twice.
                sys.stdout.write(_epoch_line(epoch + 1, epochs, metrics) + "\n")
                sys.stdout.flush()
            ray.train.report(metrics)

    return EpochReporter()


def train_loop(config: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Train on this worker's shard; called by Ray Train with ``{"spec": WorkerSpec}``."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    tf.get_logger().setLevel("ERROR")  # per-step collective INFO lines drown the epoch lines

    import ray.train

    from raytrain.errors import RaytrainError
    from raytrain.models import build_model
    from raytrain.readers.hdf5 import HDF5Reader

    spec: WorkerSpec = config["spec"]
    job, plan = spec.job, spec.plan
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if world != plan.world_size:
        raise RaytrainError(f"planned for {plan.world_size} workers but Ray Train started {world}")
    local_replicas = strategy.num_replicas_in_sync // world
    if local_replicas * plan.replica_batch != plan.worker_batch:
        raise RaytrainError(
            f"worker {rank} has {local_replicas} local replicas but was planned for "
            f"{plan.worker_batch // plan.replica_batch}; set --gpus-per-worker to the GPUs each worker sees"
        )

    train_shard = Shard.from_rows(ray.train.get_dataset_shard("train"))
    has_val = plan.val_steps > 0
    val_shard = Shard.from_rows(ray.train.get_dataset_shard("validation")) if has_val else None
    train_reader = HDF5Reader(train_shard.files, job.data.x_key)
    val_reader = HDF5Reader(val_shard.files, job.data.x_key) if val_shard is not None else None

    m = job.model
    with strategy.scope():
        model = build_model(
            m.builder, spec.sample_shape, spec.num_classes, spec.one_hot,
            m.optimizer, m.learning_rate, m.loss, tuple(m.metrics),
        )

    run_dir = job.run_dir
    epochs = job.training.epochs

    def train_epochs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for epoch in range(epochs):
            yield from _replica_batches(train_shard, train_reader, spec, plan.train_steps, epoch, rank, TRAIN)

    # Training: one dataset and, since the length is unknown and the steps per epoch
    # given, one iterator that fit keeps across all epochs (a new one per epoch stalled
    # the end of each epoch by seconds while the old one was torn down).
    # Validation: fit makes a new iterator for every evaluation, so its generator
    # starts at the epoch the reporter says is current.
    current = {"epoch": 0}
    train_ds = _distributed(strategy, train_epochs, spec)
    val_ds = (
        _distributed(
            strategy,
            lambda: _replica_batches(val_shard, val_reader, spec, plan.val_steps, current["epoch"], rank, VALIDATION),
            spec,
        )
        if has_val
        else None
    )
    reporter = epoch_reporter(plan, rank, epochs, os.path.join(run_dir, "metrics.jsonl"), current)
    model.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=plan.train_steps,
        validation_data=val_ds,
        validation_steps=plan.val_steps if has_val else None,
        callbacks=[reporter],
        verbose=0,
    )
    train_seconds = reporter.train_seconds

    _save_model(model, run_dir, rank)
    train_reader.close()
    if val_reader is not None:
        val_reader.close()
    _write_worker_record(run_dir, rank, model, len(train_shard), local_replicas, train_seconds)
    return None


def _write_worker_record(
    run_dir: str, rank: int, model: Any, shard_size: int, local_replicas: int, train_seconds: float
) -> None:
    """``<run_dir>/workers/rank-N.json``: where rank N ran and the digest of its final weights."""
    import ray

    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    record = {
        "rank": rank,
        "node_id": node_id,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "train_shard_samples": shard_size,
        "local_replicas": local_replicas,
        "train_seconds": train_seconds,
        "weights_sha256": _weights_digest(model),
    }
    os.makedirs(os.path.join(run_dir, "workers"), exist_ok=True)
    with open(os.path.join(run_dir, "workers", f"rank-{rank}.json"), "w") as f:
        json.dump(record, f, indent=1)
