"""TensorBoard scalars of a run, written by rank 0 to ``<run>/tensorboard/``.

The layout is the one ``tf_keras.callbacks.TensorBoard`` uses, so TensorBoard overlays
training and validation: ``train/`` holds ``epoch_loss``, ``epoch_<metric>``,
``epoch_samples_per_s``, ``epoch_data_wait_fraction``, ``epoch_time_s`` (step = epoch)
and ``batch_loss``, ``batch_<metric>`` every ``run.log_every_steps`` steps (step = the
global step); ``validation/`` holds ``epoch_loss`` and ``epoch_<metric>`` of the
validation set. Open it with ``tensorboard --logdir runs/`` (every run) or
``--logdir runs/NAME/tensorboard``. For a run directory behind a URI the events are
written locally and copied after each epoch.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from raytrain.run import storage
from raytrain.run.rundir import TENSORBOARD


class ScalarLog:
    """Rank 0's event files. Args: run_dir: the run directory (a path or a URI)."""

    def __init__(self, run_dir: str):
        import tensorflow as tf

        self._tf = tf
        target = storage.join(run_dir, TENSORBOARD)
        local = storage.local_path(target)
        self._upload_to = None if local else target
        self.dir = local or tempfile.mkdtemp(prefix="raytrain-tensorboard-")
        self._train = tf.summary.create_file_writer(os.path.join(self.dir, "train"))
        self._validation = tf.summary.create_file_writer(os.path.join(self.dir, "validation"))

    def batch(self, step: int, metrics: dict[str, float]) -> None:
        with self._train.as_default():
            for key, value in metrics.items():
                self._tf.summary.scalar(f"batch_{key}", value, step=step)

    def epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Write an epoch's record of ``metrics.jsonl`` (``val_*`` keys to ``validation/``)."""
        tf = self._tf
        for key, value in metrics.items():
            if key in ("epoch", "data_wait_s", "time"):
                continue
            writer, tag = (self._validation, key[4:]) if key.startswith("val_") else (self._train, key)
            with writer.as_default():
                tf.summary.scalar(tag if tag.startswith("epoch_") else f"epoch_{tag}", value, step=epoch)
        self._train.flush()
        self._validation.flush()
        if self._upload_to is not None:
            storage.upload_dir(self.dir, self._upload_to)

    def close(self) -> None:
        self._train.close()
        self._validation.close()
