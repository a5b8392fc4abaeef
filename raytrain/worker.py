"""The per-worker training loop, run by every Ray Train worker (or in-process).

Order matters: the strategy is created first, before any other TensorFlow op
("collective ops must be configured at program startup"); the model is built and
compiled in its scope. Each epoch's batches reach ``fit`` through
``strategy.distribute_datasets_from_function``: every local replica pulls its own
per-replica batches, so every sample of a worker's batch is trained on (a ``Sequence``
handed to ``fit`` under the strategy silently trains on 1 of every N samples).

TensorFlow, tf_keras and Ray Train are imported inside the functions that run on the
worker, so commands that do not train never load them, and TensorFlow's C++ start-up
lines are silenced around its import (:func:`raytrain.run.progress.quiet_stderr`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import cv2
import numpy as np

from raytrain import compat
from raytrain.config import JobConfig, checkpoint_interval
from raytrain.data.feed import QueueFeed, to_model
from raytrain.data.kinds import make_loader
from raytrain.data.loader import Batch, BatchLoader, ReadSpec
from raytrain.data.order import TRAIN, VALIDATION
from raytrain.data.plan import StepPlan
from raytrain.data.shard import Shard
from raytrain.errors import RaytrainError
from raytrain.models import build_model, scales_uint8, steps_per_execution
from raytrain.run import checkpoint, preemption, progress, rundir
from raytrain.run.progress import quiet_stderr


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, computed once on the driver."""

    job: JobConfig
    plan: StepPlan
    read: ReadSpec  # how the worker reads its shard
    num_classes: int
    one_hot: bool
    sink: Any = None  # the driver's raytrain.run.progress.ProgressSink (None: print instead)
    in_process: bool = False  # the loop runs in the driver's process (raytrain.modes.InProcess)
    # In-process only: each dataset's index table itself, handed to the loop instead of as a
    # Ray Dataset (an in-process run starts no Ray; raytrain.modes).
    tables: Optional[dict[str, Any]] = None


def make_strategy(world_size: int, threads: int = 0) -> Any:
    """The distribution strategy; call it before any other TensorFlow op.

    ``threads`` (a Ray worker's CPUs; 0 in local mode = the whole machine) sizes
    TensorFlow's intra-op and inter-op pools and OpenCV's own threads: by default every
    worker's TensorFlow sizes its pools for the whole machine, so N workers on a node
    start N times as many threads as it has cores, competing with each other and with
    the readers.

    Several workers: ``MultiWorkerMirroredStrategy`` (each local GPU is a replica). One
    worker (local mode, or ``--num-workers 1``): ``MirroredStrategy`` over its GPUs if it
    has several, else TensorFlow's default strategy; a one-member collective costs
    ~2.4 ms per step for nothing (5% of a step of the cnn at 64x64x3 on 2 cores).
    """
    with quiet_stderr():
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
            cv2.setNumThreads(threads)
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


def _handle_sigterm(in_process: bool) -> None:
    """Install :mod:`raytrain.run.preemption`'s SIGTERM handler, after the strategy: with
    several workers TensorFlow's coordination service replaces the process's SIGTERM
    handler with its own when the strategy starts. A Ray worker trains in a thread of its
    actor, and only the main thread can install a handler: its actor is asked to do it."""
    if in_process:
        preemption.install()  # the loop trains in the main thread
        return
    compat.run_in_worker_main_thread(preemption.install)


def _agree(strategy: Any, world: int) -> Callable[[list[float]], list[float]]:
    """Sum a few floats over the workers (an all-reduce through the strategy); with one
    worker, the values themselves."""
    if world == 1:
        return lambda values: values
    import tensorflow as tf

    local = strategy.num_replicas_in_sync // world

    def agree(values: list[float]) -> list[float]:
        per_replica = strategy.run(lambda: tf.constant(values, tf.float64))
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
        return [float(v) / local for v in total]  # each local replica added this worker's values

    return agree


def _local_replicas(strategy: Any, plan: StepPlan, rank: int, world: int) -> int:
    """The strategy's replicas on this worker, checked against the plan."""
    if world != plan.world_size:
        raise RaytrainError(f"planned for {plan.world_size} workers but Ray Train started {world}")
    local = strategy.num_replicas_in_sync // world
    if local * plan.replica_batch != plan.worker_batch:
        raise RaytrainError(
            f"worker {rank} has {local} local replicas but was planned for "
            f"{plan.worker_batch // plan.replica_batch}; set --gpus-per-worker to the GPUs each worker sees"
        )
    return local


def _open_loader(spec: WorkerSpec, name: str, rank: int, stream: int) -> BatchLoader:
    """The loader of this worker's shard of the dataset ``name`` that Ray Train handed it
    (in local mode, the whole index table the driver put in ``spec.tables``)."""
    if spec.tables is not None:
        shard = Shard(spec.tables[name], spec.read.rows_per_block, spec.job.data.partitions)
    else:
        import ray.train

        shard = Shard.from_rows(ray.train.get_dataset_shard(name), spec.read.rows_per_block, spec.job.data.partitions)
    return make_loader(spec.read, shard, rank, stream, notify=lambda text: progress.note(spec.sink, text))


def _build(spec: WorkerSpec, strategy: Any, rank: int) -> tuple[Any, int]:
    """The compiled model in the strategy's scope, restored from the newest checkpoint
    if there is one, and the global step it continues from."""
    m = spec.job.model
    with strategy.scope():
        t = spec.job.training
        model = build_model(m, t, spec.read.sample_shape, spec.num_classes, spec.one_hot,
                            steps_per_execution(t.steps_per_execution, spec.job.run.log_every_steps))
        epochs, steps = _restore(model, spec, rank)
        return model, epochs * spec.plan.train_steps + steps


def _checkpoint_saver(job: JobConfig, rank: int, world: int, in_process: bool) -> Callable[..., dict[str, Any]]:
    """``save(model, epochs_done, steps_done)``: write this rank's checkpoint and return
    the checkpoint arguments for ``ray.train.report`` (rank 0's is kept)."""
    import ray.train

    state = {"seed": job.data.seed, "world_size": world, "epochs": job.training.epochs,
             "partitions": job.data.partitions, "batch_size": job.training.batch_size}

    def save(model: Any, done: int, step: int = 0) -> dict[str, Any]:
        folder = tempfile.mkdtemp(prefix=f"raytrain-checkpoint-rank{rank}-")
        checkpoint.write(model, folder, dict(state, epoch=done, step=step))
        if rank == 0 and not in_process and not step:  # Ray Train copies it into the run directory
            return {"checkpoint": ray.train.Checkpoint.from_directory(folder),
                    "checkpoint_dir_name": checkpoint.dir_name(done)}
        if rank == 0:  # in-process, and step checkpoints (not a report): raytrain keeps them itself
            checkpoint.persist(folder, job.run_dir, done, job.run.keep_checkpoints, step)
        shutil.rmtree(folder, ignore_errors=True)  # the other ranks' copies only completed the collective
        return {}

    return save


class _Feeds:
    """The training and validation feeds of one worker and the datasets ``fit`` reads.

    Training: one dataset of every remaining epoch's batches and, since the steps per
    epoch are given, one iterator that ``fit`` keeps across epochs; a run resumed within
    an epoch first fits that epoch's remaining steps from a dataset of exactly those
    (``resumed_ds``: an iterator cannot take a batch meant for the next ``fit``).
    Validation: ``fit`` makes a new iterator for each evaluation; :meth:`start_validation`
    starts feeding that epoch's batches.
    """

    def __init__(self, spec: WorkerSpec, strategy: Any, replicas: int, first_step: int,
                 train: BatchLoader, validation: Optional[BatchLoader], unit: bool):
        plan, read = spec.plan, spec.read
        self.plan, self.train_loader, self.val_loader = plan, train, validation
        self.first_epoch, self.first_step = divmod(first_step, plan.train_steps)
        self.epochs, self.seed = spec.job.training.epochs, spec.job.data.seed
        batch_shape = (plan.replica_batch, *read.sample_shape)
        capacity = read.data.prefetch_batches * replicas
        convert = to_model(read.dtype, spec.num_classes, spec.one_hot, unit)
        self.train = QueueFeed(batch_shape, read.dtype, capacity, replicas)
        self.resumed_ds = None
        whole = self.first_epoch
        if self.first_step:
            rest = (plan.train_steps - self.first_step) * replicas
            self.resumed_ds = strategy.distribute_datasets_from_function(
                lambda _: self.train.dataset(rest, convert, endless=True)
            )
            whole += 1
        entries = max(self.epochs - whole, 1) * plan.train_steps * replicas
        self.train_ds = strategy.distribute_datasets_from_function(
            lambda _: self.train.dataset(entries, convert, endless=True)
        )
        self.validation, self.val_ds = None, None
        if validation is not None:
            self.validation = QueueFeed(batch_shape, read.dtype, capacity, replicas)
            self.val_ds = strategy.distribute_datasets_from_function(
                lambda _: self.validation.dataset(plan.val_steps * replicas, convert, endless=True)
            )

    def start_training(self) -> None:
        def batches() -> Iterator[Batch]:
            for epoch in range(self.first_epoch, self.epochs):
                start = self.first_step if epoch == self.first_epoch else 0
                yield from self.train_loader.epoch(epoch, self.plan.train_steps, self.plan.worker_batch, start=start,
                                                   offset=self.plan.offset(TRAIN, self.seed, epoch))

        self.train.start(batches())

    def start_validation(self, epoch: int) -> None:
        self.validation.start(self.val_loader.epoch(epoch, self.plan.val_steps, self.plan.worker_batch,
                                                    offset=self.plan.offset(VALIDATION, self.seed, epoch)))

    def error(self) -> Optional[BaseException]:
        """A reader's error, if a feed stopped on one."""
        return next((f.error for f in (self.train, self.validation) if f is not None and f.error is not None), None)

    def stop(self) -> None:
        for feed in (self.train, self.validation):
            if feed is not None:
                feed.stop()


def train_loop(config: dict[str, Any]) -> None:
    """Train on this worker's shard; called by Ray Train with ``{"spec": WorkerSpec}``."""
    import ray.train

    spec: WorkerSpec = config["spec"]
    s = spec.job.scaling
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()  # an elastic run's size varies by restart
    strategy = make_strategy(world, 0 if spec.in_process else max(1, int(s.cpus_per_worker)))

    from raytrain.run.reporter import (  # imports tf_keras: after the strategy
        CHECK_SECONDS,
        EpochReporter,
        StepClock,
    )

    job = spec.job
    spec = dataclasses.replace(spec, plan=spec.plan.for_world(world))
    plan = spec.plan
    replicas = _local_replicas(strategy, plan, rank, world)
    train_loader = _open_loader(spec, "train", rank, TRAIN)
    val_loader = _open_loader(spec, "validation", rank, VALIDATION) if plan.val_steps > 0 else None
    loaders = [each for each in (train_loader, val_loader) if each is not None]
    run_dir, epochs = job.run_dir, job.training.epochs
    _write_worker_record(run_dir, rank, {"status": "training"})
    model, first_step = _build(spec, strategy, rank)
    first_epoch, step = divmod(first_step, plan.train_steps)
    unit = scales_uint8(job.data.scale, model)
    if rank == 0 and spec.read.dtype == "uint8" and not unit:
        progress.note(spec.sink, "raytrain: the model scales its own inputs (data.scale: "
                      f"{job.data.scale}): it gets uint8 features as 0-255 values, not divided by 255")
    feeds = _Feeds(spec, strategy, replicas, first_step, train_loader, val_loader, unit)
    every_steps, every_seconds = checkpoint_interval(job.run.checkpoint_every)
    clock = StepClock(every_steps, every_seconds, _agree(strategy, world), rank, first_step,
                      check_seconds=CHECK_SECONDS if world > 1 else 0)
    reporter = EpochReporter(plan, run_dir, epochs, job.run.log_every_steps, rank, spec.sink,
                             feeds.train.take_waited, feeds.start_validation if val_loader else None,
                             _checkpoint_saver(job, rank, world, spec.in_process), clock, first_step=first_step)
    if rank == 0:
        rundir.event(run_dir, "start", from_epoch=first_epoch + 1, from_step=step, world_size=world)
        rundir.drop_worker_records(run_dir, world)
    _handle_sigterm(spec.in_process)
    fit = dict(validation_data=feeds.val_ds, validation_steps=plan.val_steps if val_loader else None,
               callbacks=[reporter], verbose=0)
    try:
        _fit_epochs(model, feeds, plan, first_step, epochs, fit)
    finally:
        for each in loaders:  # files and decoding threads, also when training failed
            each.close()
    rundir.export_model(model, run_dir, rank)
    skipped: dict[str, str] = {}
    for each in loaders:
        skipped.update(each.skipped)
    _write_worker_record(run_dir, rank, {
        "status": "finished",
        "train_shard_samples": len(train_loader.shard),
        "local_replicas": replicas,
        "train_seconds": reporter.train_seconds,
        "weights_sha256": _weights_digest(model),
        "skipped_files": skipped,  # data.on_bad_sample: skip -> path: reason
    })


def _fit_epochs(model: Any, feeds: _Feeds, plan: StepPlan, first_step: int, epochs: int, fit: dict[str, Any]) -> None:
    """``fit`` from global step ``first_step`` to the end: first the rest of the epoch a
    checkpoint was taken in (if any), then whole epochs."""
    first_epoch, step = divmod(first_step, plan.train_steps)
    try:
        if first_epoch < epochs:
            feeds.start_training()
            if feeds.resumed_ds is not None:  # the rest of the epoch the checkpoint was taken in
                model.fit(feeds.resumed_ds, epochs=first_epoch + 1, initial_epoch=first_epoch,
                          steps_per_epoch=plan.train_steps - step, **fit)
                first_epoch += 1
            if first_epoch < epochs:
                model.fit(feeds.train_ds, epochs=epochs, initial_epoch=first_epoch, steps_per_epoch=plan.train_steps,
                          **fit)
    except Exception:
        failed = feeds.error()
        if failed is not None:
            raise failed from None  # the reader's error, not the queue's "cancelled"
        raise
    finally:
        feeds.stop()


def _restore(model: Any, spec: WorkerSpec, rank: int) -> tuple[int, int]:
    """Restore the newest checkpoint into ``model`` (in the strategy's scope) and return
    the (epochs, steps of the next epoch) it completed ((0, 0) without one). Every
    checkpoint is in the run directory: the epoch ones Ray Train copied there (the one it
    hands a restarted group is among them), the step ones and local mode's raytrain wrote."""
    import ray.train

    run_dir, sink = spec.job.run_dir, spec.sink
    newest = checkpoint.found(run_dir)
    if not newest:
        if rank == 0:  # a run that died before its first checkpoint starts over: so do its metrics
            rundir.keep_metrics_through(run_dir, 0)
        return 0, 0
    found = ray.train.Checkpoint(newest[-1][1])
    with found.as_directory() as folder:
        state = checkpoint.restore(model, folder)
    done, step = int(state["epoch"]), int(state.get("step", 0))
    if step and (state.get("batch_size"), state.get("partitions"), state.get("seed")) != (
            spec.job.training.batch_size, spec.job.data.partitions, spec.job.data.seed):
        step = 0  # another order: the epoch's remaining steps are not known; it is trained again whole
    if rank == 0:
        rundir.keep_metrics_through(run_dir, done)
        rundir.event(run_dir, "restored", epoch=done, step=step, checkpoint=found.path)
        at = f"epoch {done}" + (f", step {step} of epoch {done + 1}" if step else "")
        progress.note(sink, f"raytrain: restored the checkpoint of {at} ({found.path})")
    return done, step


def _weights_digest(model: Any) -> str:
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def _write_worker_record(run_dir: str, rank: int, fields: dict[str, Any]) -> None:
    """``<run_dir>/workers/rank-N.json``: where rank N runs (written at start, so its pid can
    be found while it trains) and, at the end, what it did."""
    import ray

    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    record = {"rank": rank, "node_id": node_id, "hostname": socket.gethostname(), "pid": os.getpid(),
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), **fields}  # Ray sets it per worker
    rundir.write_worker_record(run_dir, rank, record)
