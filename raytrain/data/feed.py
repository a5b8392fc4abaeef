"""Hand a worker's batches to TensorFlow through a bounded queue that TensorFlow drains.

A background thread takes batches from the worker's loader and enqueues them, one per
local replica, into a ``tf.queue.FIFOQueue`` of ``data.prefetch_batches`` entries (it
blocks while the queue is full). The training dataset is ``range(n).map(dequeue)``:
taking a batch is a C++ op that needs no Python, so the training step never waits for
the Python interpreter (``from_generator`` would put a Python call in TensorFlow's thread
at every step).

The dequeue is timed inside the pipeline, so ``waited_s`` is the time the training step
itself spent waiting for a batch (TensorFlow's automatic prefetch is switched off for
that reason: the dequeue runs when the step asks for its batch).

Training, ``raytrain evaluate`` and ``raytrain bench`` all read through this feed, so
``data.prefetch_batches`` means the same everywhere and the bench measures the path
training takes.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator, Optional

import numpy as np


def to_model(dtype: str, num_classes: int, one_hot: bool, unit: bool = True) -> Callable[[Any, Any], Any]:
    """The conversion TensorFlow applies to each batch: features to float32 (uint8
    divided by 255 when ``unit``, see ``data.scale``), labels to one-hot rows if the files
    had them."""
    import tensorflow as tf

    scale = 1.0 / 255.0 if dtype == "uint8" and unit else 1.0

    def convert(x: Any, y: Any) -> Any:
        x = tf.cast(x, tf.float32)
        if scale != 1.0:
            x = x * scale
        return x, (tf.one_hot(y, num_classes) if one_hot else y)

    return convert


class QueueFeed:
    """One bounded queue of per-replica batches, filled by a background thread.

    Args:
        batch_shape: Shape of one per-replica feature batch; a first dimension of None
            takes batches of any length (evaluation, whose last batch is shorter).
        dtype: Features dtype (as stored; converted to float32 in the pipeline).
        capacity: Queue entries (per-replica batches) held ahead of the step.
        replicas: Local replicas; every worker batch is split into this many.
    """

    def __init__(self, batch_shape: tuple[int, ...], dtype: str, capacity: int, replicas: int):
        import tensorflow as tf

        self.replicas = replicas
        self.batch_shape = batch_shape
        fixed = batch_shape[0] is not None
        self.queue = tf.queue.FIFOQueue(
            capacity, [tf.as_dtype(dtype), tf.int64], shapes=[batch_shape, batch_shape[:1]] if fixed else None
        )
        # On the CPU: it is updated inside the input pipeline, which runs on the CPU; on a
        # GPU machine it would otherwise be placed on GPU:0 and copied every step.
        with tf.device("/CPU:0"):
            self.waited = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="raytrain_data_wait")
        self.error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    def start(self, batches: Iterator[tuple[np.ndarray, np.ndarray]]) -> None:
        """Feed ``batches`` (worker batches) in the background; returns at once."""
        self.join()

        def run() -> None:
            try:
                for x, y in batches:
                    size = len(x) // self.replicas
                    for r in range(self.replicas):
                        self.queue.enqueue((x[r * size : (r + 1) * size], y[r * size : (r + 1) * size]))
            except BaseException as e:  # noqa: BLE001 - handed to the training thread
                if not self._stopping:
                    self.error = e
                    self.queue.close(cancel_pending_enqueues=True)  # wake the step, which then fails

        self._thread = threading.Thread(target=run, name="raytrain-feed", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def stop(self) -> None:
        """Stop feeding (after training, or when it failed): unblock and end the thread."""
        self._stopping = True
        self.queue.close(cancel_pending_enqueues=True)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def take_waited(self) -> float:
        """Seconds the step waited for a batch since the last call."""
        value = float(self.waited.numpy())
        self.waited.assign(0.0)
        return value

    def dataset(self, entries: int, to_model: Callable[[Any, Any], Any], endless: bool = False) -> Any:
        """A dataset of exactly ``entries`` queue entries, converted by ``to_model``.

        ``endless``: declare the dataset infinite (for ``fit``, which is given its steps
        and never asks for more than ``entries``; one more would fail, not hang). Under
        ``MultiWorkerMirroredStrategy`` a finite dataset makes every step's ``get_next``
        all-reduce across the workers whether each still has data (TensorFlow's partial
        batch handling, ``input_lib._calculate_replicas_with_values``): a second collective
        per step, and a second point where the workers wait for each other."""
        import tensorflow as tf

        queue, waited, shape = self.queue, self.waited, self.batch_shape

        def take(_: Any) -> Any:
            started = tf.timestamp()
            with tf.control_dependencies([started]):
                x, y = queue.dequeue()
                x.set_shape(shape)
                y.set_shape(shape[:1])
            with tf.control_dependencies([x, y]):
                count = waited.assign_add(tf.timestamp() - started)
            with tf.control_dependencies([count]):
                return to_model(x, y)

        options = tf.data.Options()
        options.experimental_optimization.inject_prefetch = False  # keep the dequeue on the step's path
        options.autotune.enabled = False
        dataset = tf.data.Dataset.range(entries).map(take).with_options(options)
        if endless:
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
        return dataset


def read_ahead(batches: Iterator[tuple[np.ndarray, np.ndarray]], count: int, batch_shape: tuple[Optional[int], ...],
               dtype: str, prefetch_batches: int, convert: Callable[[Any, Any], Any]) -> tuple[QueueFeed, Any]:
    """A one-replica feed of ``count`` batches, started, and its dataset (for
    ``raytrain evaluate`` and ``raytrain bench``; training builds its feeds per replica).
    Call ``feed.stop()`` when done."""
    feed = QueueFeed(batch_shape, dtype, prefetch_batches, replicas=1)
    feed.start(batches)
    return feed, feed.dataset(count, convert)
