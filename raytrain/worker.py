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
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np

from raytrain.config import JobConfig
from raytrain.shard import TRAIN, VALIDATION, Shard, StepPlan


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, computed once on the driver."""

    job: JobConfig
    plan: StepPlan
    sample_shape: tuple[int, ...]
    num_classes: int
    one_hot: bool
    dtype: str  # features as stored; converted to float32 by TensorFlow
    rows_per_block: dict[str, int]  # per file, see raytrain.order
    window: int  # samples shuffled together (data.shuffle_window, resolved)
    sink: Any = None  # the driver's raytrain.progress.ProgressSink actor (None: print instead)


def batch_to_model(spec: WorkerSpec) -> Any:
    """The conversion TensorFlow applies to each batch: features to float32 (uint8
    scaled to [0, 1]), labels to one-hot rows if the files had them."""
    import tensorflow as tf

    scale = 1.0 / 255.0 if spec.dtype == "uint8" else 1.0

    def to_model(x: Any, y: Any) -> Any:
        x = tf.cast(x, tf.float32)
        if scale != 1.0:
            x = x * scale
        return x, (tf.one_hot(y, spec.num_classes) if spec.one_hot else y)

    return to_model


def _weights_digest(model: Any) -> str:
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


RUN_KEYS = ("epoch", "epoch_time_s", "samples_per_s", "data_wait_s", "data_wait_fraction")  # not model metrics


def _epoch_line(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    shown = [f"{k} {v:.4f}" for k, v in metrics.items() if k not in RUN_KEYS]
    return (
        f"epoch {epoch}/{epochs}  " + "  ".join(shown)
        + f"  {metrics['samples_per_s']:.0f} samples/s  data wait {100 * metrics['data_wait_fraction']:.0f}%"
        + f"  {metrics['epoch_time_s']:.1f} s"
    )


def epoch_reporter(
    spec: WorkerSpec, rank: int, take_waited: Callable[[], float],
    start_validation: Optional[Callable[[int], None]],
    save_checkpoint: Callable[[Any, int], dict[str, Any]],
) -> Any:
    """A callback that, at each epoch's end on every rank: rank 0 appends the metrics to
    ``metrics.jsonl``, sends the epoch's line to the driver and writes TensorBoard
    scalars; every rank writes a checkpoint (``save_checkpoint(model, epochs_done)``
    returns the checkpoint arguments of ``ray.train.report``) and reports to Ray Train
    (a barrier every rank must reach equally often). The metrics line comes first, so
    every checkpointed epoch has its line. ``take_waited()`` returns the seconds the
    training step waited for data since the last call: ``data_wait_fraction`` is their
    share of the epoch's training time. Before each validation it calls
    ``start_validation(epoch)``. During an epoch rank 0 sends progress twice a second
    (:mod:`raytrain.progress`) and batch scalars every ``run.log_every_steps`` steps.
    (Built here: tf_keras is imported late.)"""
    import shutil

    import ray.train
    import tf_keras

    from raytrain import progress, rundir
    from raytrain.scalars import ScalarLog

    plan, run_dir, epochs = spec.plan, spec.job.run_dir, spec.job.training.epochs
    every = spec.job.run.log_every_steps
    send = progress.sender(spec.sink)
    scalars = ScalarLog(run_dir) if rank == 0 else None

    class EpochReporter(tf_keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self._supports_tf_logs = True  # logs stay tensors; read only when shown
            self.train_seconds = 0.0
            self.first_step_logged = False
            self.global_step = 0
            self.last_sent = 0.0

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if not self.first_step_logged:
                self.first_step_logged = True
                if rank == 0:
                    rundir.event(run_dir, "first_step", epoch=self.epoch + 1)

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.global_step += 1
            if rank != 0:
                return
            now = time.perf_counter()
            log_scalars = every and self.global_step % every == 0
            if not log_scalars and now - self.last_sent < progress.UPDATE_SECONDS:
                return
            values = {k: float(v) for k, v in (logs or {}).items()}
            if log_scalars:
                scalars.batch(self.global_step, values)
            if now - self.last_sent >= progress.UPDATE_SECONDS:
                self.last_sent = now
                send(progress.step_message(self.epoch + 1, epochs, batch + 1, plan.train_steps, values,
                                           (batch + 1) * plan.global_batch, now - self.started))

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch
            self.started = time.perf_counter()
            self.train_end: Optional[float] = None

        def on_test_begin(self, logs: Any = None) -> None:
            self.train_end = time.perf_counter()
            if start_validation is not None:
                start_validation(self.epoch)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            ended = time.perf_counter()
            train_time = (self.train_end or ended) - self.started
            self.train_seconds += train_time
            metrics: dict[str, Any] = {"epoch": epoch + 1}
            metrics.update({k: float(v) for k, v in (logs or {}).items()})
            metrics["samples_per_s"] = plan.train_steps * plan.global_batch / train_time
            waited = take_waited()
            metrics["data_wait_s"] = waited
            metrics["data_wait_fraction"] = min(1.0, waited / train_time)
            metrics["epoch_time_s"] = ended - self.started
            if rank == 0:
                rundir.append_metrics(run_dir, metrics)
                line = _epoch_line(epoch + 1, epochs, metrics)
                if spec.sink is None:
                    sys.stdout.write(line + "\n")
                send({"kind": "epoch", "line": line, "metrics": metrics})
                scalars.epoch(epoch + 1, metrics)
            saved = save_checkpoint(self.model, epoch + 1)
            ray.train.report(metrics, **saved)
            if "checkpoint" in saved:  # Ray Train has copied it to the run directory
                shutil.rmtree(saved["checkpoint"].path, ignore_errors=True)

        def on_train_end(self, logs: Any = None) -> None:
            if scalars is not None:
                scalars.close()

    return EpochReporter()


def make_strategy(world_size: int) -> Any:
    """The distribution strategy; call it before any other TensorFlow op.

    Several workers: ``MultiWorkerMirroredStrategy`` (each local GPU is a replica). One
    worker (local mode, or ``--num-workers 1``): ``MirroredStrategy`` over its GPUs if it
    has several, else TensorFlow's default strategy; a one-member collective costs
    ~2.4 ms per step for nothing (5% of a step of the cnn at 64x64x3 on 2 cores).
    """
    from raytrain.progress import quiet_stderr

    with quiet_stderr():
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if world_size > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    tf.get_logger().setLevel("ERROR")  # per-step collective INFO lines drown the epoch lines
    return strategy


def train_loop(config: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Train on this worker's shard; called by Ray Train with ``{"spec": WorkerSpec}``."""
    spec: WorkerSpec = config["spec"]
    strategy = make_strategy(spec.plan.world_size)

    import ray.train

    from raytrain import checkpoint, rundir
    from raytrain.errors import RaytrainError
    from raytrain.feed import QueueFeed
    from raytrain.models import build_model

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

    d = job.data
    has_val = plan.val_steps > 0

    def loader(name: str, stream: int) -> Any:
        shard = Shard.from_rows(ray.train.get_dataset_shard(name), spec.rows_per_block)
        return make_loader(spec, shard, rank, stream)

    train_loader = loader("train", TRAIN)
    val_loader = loader("validation", VALIDATION) if has_val else None

    run_dir = job.run_dir
    epochs = job.training.epochs
    local = job.scaling.num_workers == 0
    _write_worker_record(run_dir, rank, {"status": "training"})

    m = job.model
    with strategy.scope():
        model = build_model(
            m.builder, spec.sample_shape, spec.num_classes, spec.one_hot,
            m.optimizer, m.learning_rate, m.loss, tuple(m.metrics),
        )
        first_epoch = _restore(model, run_dir, rank, spec.sink)

    def save_checkpoint(model: Any, done: int) -> dict[str, Any]:
        folder = tempfile.mkdtemp(prefix=f"raytrain-checkpoint-rank{rank}-")
        checkpoint.write(model, folder, {"epoch": done, "seed": d.seed, "world_size": world, "epochs": epochs})
        if rank == 0 and not local:  # Ray Train copies it into the run directory
            return {"checkpoint": ray.train.Checkpoint.from_directory(folder),
                    "checkpoint_dir_name": checkpoint.dir_name(done)}
        if rank == 0:  # local mode has no Ray Train storage: raytrain keeps the checkpoints itself
            checkpoint.persist(folder, run_dir, done, job.run.keep_checkpoints)
        shutil.rmtree(folder, ignore_errors=True)  # the other ranks' copies only completed the collective
        return {}

    # Training: one dataset of every remaining epoch's batches and, since the steps per
    # epoch are given, one iterator that fit keeps across epochs. Validation: fit makes
    # a new iterator for each evaluation; the reporter starts feeding that epoch's batches.
    replicas, wb = local_replicas, plan.worker_batch
    batch_shape = (plan.replica_batch, *spec.sample_shape)
    to_model = batch_to_model(spec)
    train_feed = QueueFeed(batch_shape, spec.dtype, d.prefetch_batches * replicas, replicas)
    train_ds = strategy.distribute_datasets_from_function(
        lambda _: train_feed.dataset(max(epochs - first_epoch, 1) * plan.train_steps * replicas, to_model)
    )
    feeds, val_ds, start_validation = [train_feed], None, None
    if val_loader is not None:
        val_feed = QueueFeed(batch_shape, spec.dtype, d.prefetch_batches * replicas, replicas)
        feeds.append(val_feed)
        val_ds = strategy.distribute_datasets_from_function(
            lambda _: val_feed.dataset(plan.val_steps * replicas, to_model)
        )

        def start_validation(epoch: int) -> None:
            val_feed.start(val_loader.epoch(epoch, plan.val_steps, wb))

    def train_batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for epoch in range(first_epoch, epochs):
            yield from train_loader.epoch(epoch, plan.train_steps, wb)

    reporter = epoch_reporter(spec, rank, train_feed.take_waited, start_validation, save_checkpoint)
    if rank == 0:
        rundir.event(run_dir, "start", from_epoch=first_epoch + 1, world_size=world)
    try:
        if first_epoch < epochs:
            train_feed.start(train_batches())
            model.fit(
                train_ds,
                epochs=epochs,
                initial_epoch=first_epoch,
                steps_per_epoch=plan.train_steps,
                validation_data=val_ds,
                validation_steps=plan.val_steps if has_val else None,
                callbacks=[reporter],
                verbose=0,
            )
    except Exception:
        failed = next((f.error for f in feeds if f.error is not None), None)
        if failed is not None:
            raise failed from None  # the reader's error, not the queue's "cancelled"
        raise
    finally:
        for feed in feeds:
            feed.stop()

    rundir.export_model(model, run_dir, rank)
    skipped: dict[str, str] = {}
    for each in (train_loader, val_loader):
        if each is not None:
            each.close()
            skipped.update(each.skipped)
    _write_worker_record(run_dir, rank, {
        "status": "finished",
        "train_shard_samples": len(train_loader.shard),
        "local_replicas": local_replicas,
        "train_seconds": reporter.train_seconds,
        "weights_sha256": _weights_digest(model),
        "skipped_files": skipped,  # data.on_bad_sample: skip -> path: reason
    })
    return None


def _restore(model: Any, run_dir: str, rank: int, sink: Any) -> int:
    """Restore the latest checkpoint into ``model`` (in the strategy's scope) and return
    the epochs it completed (0 without one). Ray Train hands a restarted worker group its
    latest checkpoint; a resumed run (or local mode, where raytrain keeps checkpoints
    itself) finds the newest complete one in the run directory."""
    import ray.train

    from raytrain import checkpoint, rundir

    found = ray.train.get_checkpoint()
    if found is None:
        newest = checkpoint.latest(run_dir)
        found = ray.train.Checkpoint(newest[1]) if newest else None
    if found is None:
        return 0
    with found.as_directory() as folder:
        state = checkpoint.restore(model, folder)
    done = int(state["epoch"])
    if rank == 0:
        rundir.keep_metrics_through(run_dir, done)
        rundir.event(run_dir, "restored", epoch=done, checkpoint=found.path)
        from raytrain.progress import note

        note(sink, f"raytrain: restored the checkpoint of epoch {done} ({found.path})")
    return done


def decode_threads(job: JobConfig) -> int:
    """``data.decode_threads``, or (0) the CPUs the worker holds: all of this machine's in
    local mode, ``scaling.cpus_per_worker`` for a Ray worker."""
    if job.data.decode_threads:
        return job.data.decode_threads
    if job.scaling.num_workers == 0:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, int(job.scaling.cpus_per_worker))


def make_loader(spec: WorkerSpec, shard: Shard, rank: int, stream: int) -> Any:
    """The local generator of a worker's shard: :class:`raytrain.loader.Loader` over HDF5
    files or :class:`raytrain.readers.images.ImageLoader` over image files."""
    from raytrain.config import COLOR_MODES

    d = spec.job.data
    if d.kind == "images":
        from raytrain.readers.images import ImageDecoder, ImageLoader

        decoder = ImageDecoder(tuple(d.image_size), COLOR_MODES[d.color_mode], d.interpolation)
        from raytrain.progress import note

        return ImageLoader(shard, decoder, decode_threads(spec.job), d.seed, rank, stream, d.on_bad_sample,
                           notify=lambda text: note(spec.sink, text))
    from raytrain.loader import Loader, window_cache_bytes
    from raytrain.readers.hdf5 import HDF5Reader

    sample_bytes = int(np.prod(spec.sample_shape)) * np.dtype(spec.dtype).itemsize
    cache = window_cache_bytes(spec.window, spec.rows_per_block, sample_bytes)
    return Loader(shard, HDF5Reader(shard.files, d.x_key, cache), spec.window, d.seed, rank, stream)


def _write_worker_record(run_dir: str, rank: int, fields: dict[str, Any]) -> None:
    """``<run_dir>/workers/rank-N.json``: where rank N runs (written at start, so its pid can
    be found while it trains) and, at the end, what it did."""
    import ray

    from raytrain import rundir

    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    record = {"rank": rank, "node_id": node_id, "hostname": socket.gethostname(), "pid": os.getpid(),
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), **fields}  # Ray sets it per worker
    rundir.write_worker_record(run_dir, rank, record)
