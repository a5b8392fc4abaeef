"""Helpers the tests share: data builders, recording models, CLI runners. Test modules import
from here, never from each other."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


RAY_PROCESS_MARKERS = ("raylet", "gcs_server", "ray::", "default_worker.py", "dashboard.py", "log_monitor.py")


def simulated_cluster_pids() -> set[int]:
    """The Ray processes of a simulated cluster (``raytrain up`` runs it with RAY_FAKE_CLUSTER=1,
    which every process it starts inherits, re-parented or renamed): a test's own, whatever
    another test running beside it starts."""
    own = set()
    for pid in ray_pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if b"RAY_FAKE_CLUSTER=1" in f.read().split(b"\0"):
                    own.add(pid)
        except OSError:  # ended meanwhile
            pass
    return own


def ray_pids() -> set[int]:
    from raytrain.cluster.processes import process_cmdlines

    return {pid for pid, cmd in process_cmdlines() if any(m in cmd for m in RAY_PROCESS_MARKERS)}


def write_h5(path: str, x: np.ndarray, y: np.ndarray, sample_count: int | None = None, x_key="X", y_key="Y") -> str:
    """Write given arrays as an HDF5 dataset file."""
    with h5py.File(path, "w") as f:
        f.create_dataset(x_key, data=x, chunks=(min(8, max(len(x), 1)), *x.shape[1:]) if len(x) else None)
        f.create_dataset(y_key, data=y)
        if sample_count is not None:
            f.attrs["sample_count"] = sample_count
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(python: str, **env_vars: str) -> dict[str, str]:
    """This checkout on the path, unless ``python`` is another environment's (which has raytrain installed)."""
    paths = {"PYTHONPATH": ROOT} if python == sys.executable else {}
    return dict({k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **paths, **env_vars)


def run_cli(*args: str, cwd: str, timeout: float = 600, python: str = sys.executable,
            **env_vars: str) -> subprocess.CompletedProcess:
    """Run ``python -m raytrain ARGS`` (with ``env_vars`` added to its environment) and capture its output."""
    return subprocess.run([python, "-m", "raytrain", *args], cwd=cwd, env=_env(python, **env_vars),
                          capture_output=True, text=True, timeout=timeout)


def write_image(path: str, pixels: np.ndarray) -> str:
    """Write an RGB (H, W, 3) or grayscale (H, W) uint8 image; the format follows the extension."""
    from PIL import Image

    Image.fromarray(pixels).save(path, format={"jpg": "JPEG"}.get(path.rsplit(".", 1)[-1].lower()))
    return path


def start(*args, cwd, python=sys.executable):
    return subprocess.Popen([python, "-m", "raytrain", *args], cwd=cwd, env=_env(python),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def numbered(path: str, n: int, shape=(4, 4, 3), chunks=None) -> str:
    """Samples whose every value encodes their row (mod 256), so reads can be checked."""
    x = (np.arange(n, dtype=np.int64)[:, None] % 256 * np.ones(int(np.prod(shape)), np.int64)).reshape(n, *shape)
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=x.astype(np.uint8), chunks=chunks)
        f.create_dataset("Y", data=np.arange(n) % 3)
    return path


STEP_RECORDING_MODEL = '''
import os
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

RECORD_DIR = {record_dir!r}
STEP_SECONDS = {step_seconds!r}


class RecordSteps(keras.layers.Layer):
    """Appends "global step: sample ids" for every training batch. The step counter is a
    weight, so it is saved in checkpoints and restored with them."""

    def build(self, input_shape):
        self.step = self.add_weight(name="step", shape=(), dtype=tf.int64, trainable=False, initializer="zeros",
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def call(self, x, training=None):
        if not training:
            return x

        def record(step, ids):
            time.sleep(STEP_SECONDS)
            with open(os.path.join(RECORD_DIR, f"train-{{os.getpid()}}.txt"), "a") as f:
                f.write(f"{{int(step)}}:" + ",".join(str(int(round(float(i)))) for i in ids.numpy()) + "\\n")
            return np.int32(0)

        done = tf.py_function(record, [self.step.read_value(), tf.reshape(x, [tf.shape(x)[0], -1])[:, 0]],
                              Tout=tf.int32)
        with tf.control_dependencies([done]):
            self.step.assign_add(1)
        return x


def build(input_shape, num_classes):
    return keras.Sequential([
        keras.Input(input_shape), RecordSteps(), keras.layers.Flatten(),
        keras.layers.Dense(num_classes, activation="softmax"),
    ])
'''


# The same for Keras 3 on JAX: the step runs under jit, so the ids reach Python through a
# callback, once per process with its own part of the global batch (partitioned=True).
KERAS3_STEP_RECORDING_MODEL = '''
import os
import time

import jax
import keras
import numpy as np

RECORD_DIR = {record_dir!r}
STEP_SECONDS = {step_seconds!r}


def record(step, ids):
    time.sleep(STEP_SECONDS)
    with open(os.path.join(RECORD_DIR, f"train-{{os.getpid()}}.txt"), "a") as f:
        f.write(f"{{int(step)}}:" + ",".join(str(int(round(float(i)))) for i in np.asarray(ids)) + "\\n")


@keras.saving.register_keras_serializable()  # so that model.keras loads again (raytrain evaluate)
class RecordSteps(keras.layers.Layer):
    def build(self, input_shape):
        self.step = self.add_weight(name="step", shape=(), dtype="int32", trainable=False, initializer="zeros")

    def call(self, x, training=None):
        if not training:
            return x
        ids = keras.ops.reshape(x, (keras.ops.shape(x)[0], -1))[:, 0]
        jax.debug.callback(record, self.step.value, ids, partitioned=True)
        self.step.assign(self.step + 1)
        return x


def build(input_shape, num_classes):
    return keras.Sequential([
        keras.Input(input_shape), RecordSteps(), keras.layers.Flatten(),
        keras.layers.Dense(num_classes, activation="softmax"),
    ])
'''


def steps_trained(record_dir):
    """{global step: [sample ids of every worker's batch]}, the last record of a step winning
    per process; and {step: number of processes that trained it} (re-done steps count twice)."""
    per_process = []
    for name in sorted(os.listdir(record_dir)):
        seen = {}
        for line in open(os.path.join(record_dir, name)):
            step, ids = line.strip().split(":")
            seen[int(step)] = [int(i) for i in ids.split(",")]
        per_process.append(seen)
    return per_process


# How the 960-sample ids data is trained wherever its order is compared: 40 global batches
# of 24 an epoch (24: every count of an elastic 2..3 run divides it), one step per execution.
ORDER_ARGS = ("--batch-size", "24", "--validation-ratio", "0", "--epochs", "3", "--steps-per-execution", "1")


def local_order(root):
    """960 samples whose features are their ids, in ``root``, and the global batches a
    ``--local`` run of :data:`ORDER_ARGS` trains on them, step by step: the one order every
    worker count must train (conftest's ``ids_order`` runs this once for the session)."""
    n = 960
    ids = np.arange(n, dtype=np.float32)
    data = write_h5(str(root / "ids.h5"), np.broadcast_to(ids[:, None, None, None], (n, 2, 2, 1)).copy(),
                    np.arange(n) % 3)
    record_dir, model = recording(root, "one")
    proc = run_cli("train", "--data", data, "--model", model, *ORDER_ARGS, "--local", "--name", "one",
                   "--storage-path", str(root / "runs"), cwd=str(root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (alone,) = steps_trained(record_dir)
    return data, n, alone


def recording(tmp_path, name, step_seconds=0.0, template=STEP_RECORDING_MODEL):
    """A model that records its steps in ``records-<name>/``; each step takes at least
    ``step_seconds`` (a run must outlast the workers' next stop check, about 2 s of training
    after a SIGTERM: this machine's 14 ms steps finished 180 of them in under 3 s).
    ``template``: :data:`KERAS3_STEP_RECORDING_MODEL` for a Keras 3 model."""
    record_dir = tmp_path / f"records-{name}"
    record_dir.mkdir()
    (tmp_path / f"{name}.py").write_text(template.format(record_dir=str(record_dir), step_seconds=step_seconds))
    return record_dir, f"{tmp_path}/{name}.py:build"


def global_batches(per_process):
    """Per global step, every process's batch at that step, in process (pid) order: a
    step re-done after the restart has more than two, the newest processes' last."""
    out = {}
    for seen in per_process:
        for step, ids in seen.items():
            out.setdefault(step, []).append(ids)
    return out


RECORDING_MODEL = '''
import os

import numpy as np
import tensorflow as tf
import tf_keras as keras

RECORD_DIR = {record_dir!r}


class RecordIds(keras.layers.Layer):
    """Appends the sample ids of every batch it runs on to a file of its process."""

    def call(self, x, training=None):
        kind = "train" if training else "eval"

        def record(ids):
            path = os.path.join(RECORD_DIR, f"{{kind}}-{{os.getpid()}}.txt")
            with open(path, "a") as f:
                f.write(",".join(str(int(round(float(i)))) for i in ids.numpy()) + "\\n")
            return np.int32(0)

        # The first value of each sample is its id (any sample shape: images, clips).
        tf.py_function(record, [tf.reshape(x, [tf.shape(x)[0], -1])[:, 0]], Tout=tf.int32)
        return x


def build(input_shape, num_classes):
    return keras.Sequential([
        keras.Input(input_shape), RecordIds(), keras.layers.Flatten(),
        keras.layers.Dense(num_classes, activation="softmax"),
    ])
'''


def read_records(record_dir, kind):
    """Per worker process: the list of per-step id batches, in order."""
    out = []
    for path in sorted(glob.glob(os.path.join(record_dir, f"{kind}-*.txt"))):
        with open(path) as f:
            out.append([[int(i) for i in line.split(",")] for line in f if line.strip()])
    return out


def check_epochs(per_worker, steps, worker_batch, epochs, population):
    """The exactly-once rules, checked on what the model itself saw."""
    left_out = []
    for epoch in range(epochs):
        seen = []
        for batches in per_worker:
            assert len(batches) == steps * epochs  # equal steps on every worker
            for batch in batches[epoch * steps : (epoch + 1) * steps]:
                assert len(batch) == worker_batch  # every sample of the batch is trained on
                seen.extend(batch)
        assert len(seen) == len(set(seen)), f"epoch {epoch}: a sample was used twice"
        assert set(seen) <= population
        missing = population - set(seen)
        assert len(missing) < worker_batch * len(per_worker)  # fewer than one global batch
        left_out.append(missing)
    assert left_out[0] != left_out[1], "the left-out samples must change between epochs"


def unknown_filter_h5(path: str) -> str:
    """An HDF5 file whose features need a filter no plugin provides (id 32999, optional at
    creation, so the chunk can be stored without it): what a file from an exotic tool is here."""
    with h5py.File(path, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((16, 4, 4))
        dcpl.set_filter(32999, 1, ())
        dsid = h5py.h5d.create(f.id, b"X", h5py.h5t.py_create(np.dtype("uint8")), h5py.h5s.create_simple((32, 4, 4)),
                               dcpl=dcpl)
        for row in (0, 16):
            dsid.write_direct_chunk((row, 0, 0), bytes(256), 0)
        f.create_dataset("Y", data=np.arange(32) % 2)
    return path
