"""Keras 3 models on the JAX backend, data-parallel over every worker's devices.

Each training process is one JAX process. With several, Ray Train's backend
(:class:`raytrain.backend.RaytrainJaxConfig`) gives every worker the coordinator's
address (rank 0's node), the process count and its id; :meth:`KerasJax.setup` hands them
to ``keras.distribution.initialize`` and sets a ``DataParallel`` distribution over all
processes' devices (``jax.devices()``), so the variables are replicated and every step's
gradients are averaged over the global batch. On CPUs the collectives are gloo's.

Keras is told not to shard the data (``auto_shard_dataset=False``): each process feeds
``fit`` its own part of every global batch, read by raytrain's loaders from its shard,
and Keras assembles the global batch from the processes' parts
(``jax.make_array_from_process_local_data``). raytrain's step plan gives every process
the same number of equal batches: an unequal last batch diverges silently and unequal
step counts hang.

Batches reach ``fit`` from a Python generator over a bounded queue that a background
thread fills with converted batches (float32, one-hot labels), so decoding and
conversion stay off the training thread; the time ``fit`` waits on that queue is the
data wait. Validation runs from the epoch reporter through ``evaluate`` (Keras's own
per-epoch validation replays the first batches of a generator every epoch).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any, Callable, Iterator, Optional

import cv2
import numpy as np

from raytrain.data.loader import Batch, BatchLoader
from raytrain.data.order import TRAIN, VALIDATION
from raytrain.frameworks import KERAS, Framework
from raytrain.run.progress import quiet_stderr

WEIGHTS = "weights.npz"  # every variable of the model and its optimizer, in order
COORDINATOR_ENV = "KERAS_DISTRIBUTION_JOB_ADDRESSES"  # keras.distribution.initialize's own variables
PROCESSES_ENV = "KERAS_DISTRIBUTION_NUM_PROCESSES"
PROCESS_ID_ENV = "KERAS_DISTRIBUTION_PROCESS_ID"


class KerasJax(Framework):
    name = KERAS

    def setup(self, world: int, threads: int) -> int:
        from raytrain.models import keras_module

        with quiet_stderr():
            import jax

            keras = keras_module(KERAS)

        if threads:
            cv2.setNumThreads(threads)
        if world > 1:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPUs; GPUs use NCCL
            keras.distribution.initialize(
                job_addresses=os.environ[COORDINATOR_ENV], num_processes=int(os.environ[PROCESSES_ENV]),
                process_id=int(os.environ[PROCESS_ID_ENV]),
            )
        devices = jax.devices()
        if len(devices) > 1:
            keras.distribution.set_distribution(
                keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
            )
        return len(jax.local_devices())

    def agree(self, world: int) -> Callable[[list[float]], list[float]]:
        if world == 1:
            return lambda values: values
        from jax.experimental import multihost_utils

        def agree(values: list[float]) -> list[float]:
            every = multihost_utils.process_allgather(np.asarray(values, np.float32))
            return [float(v) for v in np.asarray(every).reshape(world, -1).sum(axis=0)]

        return agree

    def callback_base(self) -> type:
        import keras

        return keras.callbacks.Callback

    def feeds(self, spec: Any, replicas: int, first_step: int, train: BatchLoader, validation: Optional[BatchLoader],
              unit: bool) -> "Feeds":
        return Feeds(spec, first_step, train, validation, unit)

    def write_weights(self, model: Any, folder: str) -> None:
        if hasattr(model, "jax_state_sync"):
            model.jax_state_sync()  # inside fit the newest values live outside the variables
        values = [_local(v) for v in _variables(model)]
        np.savez(os.path.join(folder, WEIGHTS), *values)

    def read_weights(self, model: Any, folder: str) -> None:
        from raytrain.errors import RaytrainError

        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        variables = _variables(model)
        with np.load(os.path.join(folder, WEIGHTS)) as saved:
            values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        shapes = [tuple(v.shape) for v in variables]
        if len(values) != len(variables) or any(tuple(a.shape) != s for a, s in zip(values, shapes)):
            raise RaytrainError(
                f"the checkpoint in {folder} holds {len(values)} arrays that do not match the model's "
                f"{len(variables)} variables; resume with the model the run was trained with"
            )
        for variable, value in zip(variables, values):
            variable.assign(value)

    def export(self, model: Any, run_dir: str, rank: int) -> None:
        from raytrain.run import rundir

        rundir.export_model(model, run_dir, rank, saved_model=False)  # a SavedModel needs TensorFlow

    def ray_backend(self) -> Any:
        from raytrain.backend import RaytrainJaxConfig

        return RaytrainJaxConfig()


def _variables(model: Any) -> list[Any]:
    """Every variable a checkpoint holds, in a fixed order: the model's (weights, and
    state such as normalization statistics and random seeds) and its optimizer's."""
    return [*model.trainable_variables, *model.non_trainable_variables, *model.optimizer.variables]


def _local(variable: Any) -> np.ndarray:
    """A variable's value on this process: the variables are replicated over every
    process's devices, and an array spread over several processes cannot be read whole."""
    value = variable.value
    if not getattr(value, "is_fully_addressable", True):
        value = value.addressable_shards[0].data
    return np.asarray(value)


def to_numpy(dtype: str, num_classes: int, one_hot: bool, unit: bool) -> Callable[[np.ndarray, np.ndarray], Batch]:
    """The conversion of each batch before ``fit``: features to float32 (uint8 divided by
    255 when ``unit``, see ``data.scale``), labels to one-hot rows if the files had them."""
    scale = np.float32(1 / 255) if dtype == "uint8" and unit else None
    eye = np.eye(num_classes, dtype=np.float32) if one_hot else None

    def convert(x: np.ndarray, y: np.ndarray) -> Batch:
        x = x.astype(np.float32)
        if scale is not None:
            x *= scale
        return x, (eye[y] if eye is not None else y)

    return convert


class BatchQueue:
    """A bounded queue of converted batches, filled by a background thread.

    Args:
        capacity: Batches held ahead of the step (``data.prefetch_batches``).
        convert: Applied to each batch in the thread.
    """

    _END = object()

    def __init__(self, capacity: int, convert: Callable[[np.ndarray, np.ndarray], Batch]):
        self.queue: queue.Queue = queue.Queue(capacity)
        self.convert = convert
        self.waited = 0.0
        self.error: Optional[BaseException] = None
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self, batches: Iterator[Batch]) -> None:
        """Feed ``batches`` in the background; returns at once."""
        if self._thread is not None:
            self._thread.join()

        def run() -> None:
            try:
                for x, y in batches:
                    if not self._put(self.convert(x, y)):
                        return
            except BaseException as e:  # noqa: BLE001 - handed to the training thread
                if not self._stopping.is_set():
                    self.error = e
                    self._put(self._END)

        self._thread = threading.Thread(target=run, name="raytrain-feed", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stopping.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def take(self, count: int) -> Iterator[Batch]:
        """``count`` batches, as ``fit`` asks for them; the time it waits is counted."""
        for _ in range(count):
            started = time.perf_counter()
            item = self.queue.get()
            self.waited += time.perf_counter() - started
            if item is self._END:
                raise self.error if self.error is not None else RuntimeError("the feed stopped")
            yield item

    def take_waited(self) -> float:
        waited, self.waited = self.waited, 0.0
        return waited

    def stop(self) -> None:
        """Stop feeding (after training, or when it failed) and end the thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class Feeds:
    """The training and validation feeds of one worker (:class:`raytrain.worker` calls
    them the same way for either framework)."""

    def __init__(self, spec: Any, first_step: int, train: BatchLoader, validation: Optional[BatchLoader], unit: bool):
        plan, read = spec.plan, spec.read
        self.plan, self.train_loader, self.val_loader = plan, train, validation
        self.first_step = first_step
        self.epochs, self.seed = spec.job.training.epochs, spec.job.data.seed
        convert = to_numpy(read.dtype, spec.num_classes, spec.one_hot, unit)
        self.train = BatchQueue(read.data.prefetch_batches, convert)
        self.validation = BatchQueue(read.data.prefetch_batches, convert) if validation is not None else None
        self.model: Any = None

    def start_training(self) -> None:
        first_epoch, first = divmod(self.first_step, self.plan.train_steps)

        def batches() -> Iterator[Batch]:
            for epoch in range(first_epoch, self.epochs):
                yield from self.train_loader.epoch(epoch, self.plan.train_steps, self.plan.worker_batch,
                                                   start=first if epoch == first_epoch else 0,
                                                   offset=self.plan.offset(TRAIN, self.seed, epoch))

        self.train.start(batches())

    def take_waited(self) -> float:
        return self.train.take_waited()

    def validate(self, epoch: int) -> dict[str, float]:
        """The validation metrics of ``epoch`` (``val_`` names, as Keras's ``fit`` gives them)."""
        if self.validation is None:
            return {}
        plan = self.plan
        self.validation.start(self.val_loader.epoch(epoch, plan.val_steps, plan.worker_batch,
                                                    offset=plan.offset(VALIDATION, self.seed, epoch)))
        logs = self.model.evaluate(self.validation.take(plan.val_steps), steps=plan.val_steps, verbose=0,
                                   return_dict=True)
        return {f"val_{k}": float(v) for k, v in logs.items()}

    def error(self) -> Optional[BaseException]:
        return next((f.error for f in (self.train, self.validation) if f is not None and f.error is not None), None)

    def stop(self) -> None:
        for feed in (self.train, self.validation):
            if feed is not None:
                feed.stop()

    def fit(self, model: Any, first_step: int, epochs: int, callbacks: list[Any]) -> None:
        plan = self.plan
        self.model = model
        first_epoch, step = divmod(first_step, plan.train_steps)
        self.start_training()
        fit = dict(callbacks=callbacks, verbose=0, shuffle=False)
        if step:  # the rest of the epoch the checkpoint was taken in
            rest = plan.train_steps - step
            model.fit(self.train.take(rest), epochs=first_epoch + 1, initial_epoch=first_epoch, steps_per_epoch=rest,
                      **fit)
            first_epoch += 1
        if first_epoch < epochs:
            model.fit(self.train.take((epochs - first_epoch) * plan.train_steps), epochs=epochs,
                      initial_epoch=first_epoch, steps_per_epoch=plan.train_steps, **fit)
