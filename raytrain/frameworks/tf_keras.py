"""tf_keras models under TensorFlow's distribution strategies.

Order matters: the strategy is created first, before any other TensorFlow op
("collective ops must be configured at program startup"); the model is built and
compiled in its scope. Each epoch's batches reach ``fit`` through
``strategy.distribute_datasets_from_function``: every local replica pulls its own
per-replica batches, so every sample of a worker's batch is trained on (a ``Sequence``
handed to ``fit`` under the strategy silently trains on 1 of every N samples).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Optional

import cv2

from raytrain import compat
from raytrain.data.feed import QueueFeed, to_model
from raytrain.data.loader import Batch, BatchLoader
from raytrain.data.order import TRAIN, VALIDATION
from raytrain.frameworks import TF_KERAS, Framework
from raytrain.run.progress import quiet_stderr

WEIGHTS = "weights"  # a tf.train.Checkpoint's prefix in a checkpoint folder


class TfKeras(Framework):
    name = TF_KERAS

    def setup(self, world: int, threads: int) -> int:
        self.strategy = make_strategy(world, threads)
        return self.strategy.num_replicas_in_sync // world

    def scope(self) -> contextlib.AbstractContextManager:
        return self.strategy.scope()

    def agree(self, world: int) -> Callable[[list[float]], list[float]]:
        return _agree(self.strategy, world)

    def callback_base(self) -> type:
        import tf_keras

        return tf_keras.callbacks.Callback

    def feeds(self, spec: Any, replicas: int, first_step: int, train: BatchLoader, validation: Optional[BatchLoader],
              unit: bool) -> "Feeds":
        return Feeds(spec, self.strategy, replicas, first_step, train, validation, unit)

    def write_weights(self, model: Any, folder: str) -> None:
        import tensorflow as tf

        tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(os.path.join(folder, WEIGHTS))

    def read_weights(self, model: Any, folder: str) -> None:
        """Call in the strategy's scope, after the model is compiled: the optimizer's slot
        variables are created here so that they are restored, not lazily created later."""
        import tensorflow as tf

        optimizer = model.optimizer
        if callable(getattr(optimizer, "build", None)):  # tf_keras optimizers
            optimizer.build(model.trainable_variables)
        else:  # tf_keras.optimizers.legacy (what optimizers.get(name, config) returns)
            compat.create_optimizer_slots(optimizer, model.trainable_variables)
        status = tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(os.path.join(folder, WEIGHTS))
        status.assert_existing_objects_matched()

    def export(self, model: Any, run_dir: str, rank: int) -> None:
        from raytrain.run import rundir

        rundir.export_model(model, run_dir, rank, saved_model=True)

    def trainer(self, **kwargs: Any) -> Any:
        from ray.train.tensorflow import TensorflowTrainer

        from raytrain.backend import RaytrainTensorflowConfig

        return TensorflowTrainer(tensorflow_config=RaytrainTensorflowConfig(), **kwargs)


def make_strategy(world_size: int, threads: int = 0) -> Any:
    """The distribution strategy; call it before any other TensorFlow op.

    ``threads`` (a Ray worker's CPUs; 0 in local mode = the whole machine) sizes
    TensorFlow's intra-op and inter-op pools and OpenCV's own threads: by default every
    worker's TensorFlow sizes its pools for the whole machine, so N workers on a node
    start N times as many threads as it has cores, competing with each other and with
    the readers.

    Several workers: ``MultiWorkerMirroredStrategy`` (each local GPU is a replica). One
    worker (local mode, or ``--num-workers 1``): ``MirroredStrategy`` over its GPUs if it
    has several, else TensorFlow's default strategy; a one-member collective costs a
    collective per step for nothing (docs/benchmarks.md).
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


class Feeds:
    """The training and validation feeds of one worker and the datasets ``fit`` reads.

    Training: one dataset of every remaining epoch's batches and, since the steps per
    epoch are given, one iterator that ``fit`` keeps across epochs; a run resumed within
    an epoch first fits that epoch's remaining steps from a dataset of exactly those
    (``resumed_ds``: an iterator cannot take a batch meant for the next ``fit``).
    Validation: ``fit`` makes a new iterator for each evaluation; :meth:`start_validation`
    starts feeding that epoch's batches.
    """

    def __init__(self, spec: Any, strategy: Any, replicas: int, first_step: int,
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

    def take_waited(self) -> float:
        """Seconds the training step waited for a batch since the last call."""
        return self.train.take_waited()

    validate = None  # validation runs inside fit (validation_data)

    def fit(self, model: Any, first_step: int, epochs: int, callbacks: list[Any]) -> None:
        """``fit`` from global step ``first_step`` to the end: first the rest of the epoch a
        checkpoint was taken in (if any), then whole epochs."""
        plan = self.plan
        fit = dict(validation_data=self.val_ds, validation_steps=plan.val_steps if self.val_loader else None,
                   callbacks=callbacks, verbose=0)
        first_epoch, step = divmod(first_step, plan.train_steps)
        self.start_training()
        if self.resumed_ds is not None:  # the rest of the epoch the checkpoint was taken in
            model.fit(self.resumed_ds, epochs=first_epoch + 1, initial_epoch=first_epoch,
                      steps_per_epoch=plan.train_steps - step, **fit)
            first_epoch += 1
        if first_epoch < epochs:
            model.fit(self.train_ds, epochs=epochs, initial_epoch=first_epoch, steps_per_epoch=plan.train_steps, **fit)

