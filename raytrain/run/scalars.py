"""TensorBoard scalars of a run, written by rank 0 to ``<run>/tensorboard/``.

The layout is the one ``tf_keras.callbacks.TensorBoard`` uses, so TensorBoard overlays
training and validation: ``train/`` holds ``epoch_loss``, ``epoch_<metric>``,
``epoch_samples_per_s``, ``epoch_data_wait_fraction``, ``epoch_time_s`` (step = epoch)
and ``batch_loss``, ``batch_<metric>`` every ``run.log_every_steps`` steps (step = the
global step); ``validation/`` holds ``epoch_loss`` and ``epoch_<metric>`` of the
validation set. Open it with ``tensorboard --logdir runs/`` (every run) or
``--logdir runs/NAME/tensorboard``. For a run directory behind a URI the events are
written locally and copied after each epoch.

The events are written with TensorBoard's record writer and protocol buffers (the
``tensorboard`` package) into plain files, so no TensorFlow is needed (TensorBoard's
``EventFileWriter`` opens its file through TensorFlow when it is installed): a Keras 3
run on JAX writes the same files, in the format ``tf.summary.scalar`` writes (a float
tensor with the scalars plugin's metadata).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from typing import Any

from raytrain.run import storage
from raytrain.run.rundir import TENSORBOARD


class ScalarLog:
    """Rank 0's event files. Args: run_dir: the run directory (a path or a URI)."""

    def __init__(self, run_dir: str):
        target = storage.join(run_dir, TENSORBOARD)
        local = storage.local_path(target)
        self._upload_to = None if local else target
        self.dir = local or tempfile.mkdtemp(prefix="raytrain-tensorboard-")
        self._train = EventFile(os.path.join(self.dir, "train"))
        self._validation = EventFile(os.path.join(self.dir, "validation"))

    def batch(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            _scalar(self._train, f"batch_{key}", value, step)

    def epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Write an epoch's record of ``metrics.jsonl`` (``val_*`` keys to ``validation/``)."""
        for key, value in metrics.items():
            if key in ("epoch", "data_wait_s", "time"):
                continue
            writer, tag = (self._validation, key[4:]) if key.startswith("val_") else (self._train, key)
            _scalar(writer, tag if tag.startswith("epoch_") else f"epoch_{tag}", value, epoch)
        self._train.flush()
        self._validation.flush()
        if self._upload_to is not None:
            storage.upload_dir(self.dir, self._upload_to)

    def close(self) -> None:
        self._train.close()
        self._validation.close()


class EventFile:
    """One ``events.out.tfevents.*`` file in ``folder``."""

    def __init__(self, folder: str):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        os.makedirs(folder, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.raytrain"
        self._records = RecordWriter(open(os.path.join(folder, name), "ab"))
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_event(self, event: Any) -> None:
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        if not self._records.closed:
            self._records.close()


def _scalar(writer: EventFile, tag: str, value: float, step: int) -> None:
    """One scalar event, as ``tf.summary.scalar`` writes it."""
    from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2
    from tensorboard.plugins.scalar import metadata

    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=tag, metadata=metadata.create_summary_metadata(display_name=tag, description=""),
        tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[float(value)]),
    )])
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
