"""Spot-proof training with real Ray workers: a SIGTERMed worker's checkpoint, an exact
mid-epoch resume, and one sample order for any worker count, checked on what the model
itself trained on."""

import json
import os
import signal
import time

import numpy as np
import pytest

from tests.conftest import run_cli, write_h5
from tests.test_failures import start

pytestmark = pytest.mark.ray

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


def recording(tmp_path, name, step_seconds=0.0):
    """A model that records its steps in ``records-<name>/``; each step takes at least
    ``step_seconds`` (a run must outlast the workers' next stop check, about 2 s of training
    after a SIGTERM: this machine's 14 ms steps finished 180 of them in under 3 s)."""
    record_dir = tmp_path / f"records-{name}"
    record_dir.mkdir()
    (tmp_path / f"{name}.py").write_text(STEP_RECORDING_MODEL.format(record_dir=str(record_dir),
                                                                      step_seconds=step_seconds))
    return record_dir, f"{tmp_path}/{name}.py:build"


def global_batches(per_process):
    """Per global step, every process's batch at that step, in process (pid) order: a
    step re-done after the restart has more than two, the newest processes' last."""
    out = {}
    for seen in per_process:
        for step, ids in seen.items():
            out.setdefault(step, []).append(ids)
    return out


def test_sigterm_checkpoints_at_a_step_and_the_restart_resumes_there_exactly(tmp_path, ids_order):
    data, n, alone = ids_order
    record_dir, model = recording(tmp_path, "spot", step_seconds=0.06)
    proc = start("train", "--data", data, "--model", model, *ORDER_ARGS, "--checkpoint-every", "1h",
                 "--num-workers", "2", "--max-failures", "1", "--name", "spot",
                 "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
    run = tmp_path / "runs" / "spot"
    deadline = time.time() + 300
    while not list(record_dir.glob("*.txt")) or sum(1 for _ in open(next(record_dir.glob("*.txt")))) < 50:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    pid = json.loads((run / "workers" / "rank-1.json").read_text())["pid"]
    signalled = time.time()
    os.kill(pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    saved = [e for e in events if e["event"] == "checkpoint" and e["preempted"]]
    assert len(saved) == 1 and signalled < saved[0]["time"]
    restored = [e for e in events if e["event"] == "restored"]
    assert [(e["epoch"], e["step"]) for e in restored] == [(saved[0]["epoch"], saved[0]["step"])]
    resumed_at = next(e["time"] for e in events if e["event"] == "first_step" and e["time"] > saved[0]["time"])
    print(f"spot: {saved[0]['time'] - signalled:.1f} s from SIGTERM to its checkpoint, "
          f"{resumed_at - signalled:.1f} s to the next training step")

    steps = n // 24
    per_step = global_batches(steps_trained(record_dir))
    assert sorted(per_step) == list(range(3 * steps))  # every step of every epoch trained
    at = saved[0]["epoch"] * steps + saved[0]["step"]
    redone = [s for s, batches in per_step.items() if len(batches) > 2]
    assert all(s >= at for s in redone) and len(redone) <= 2, redone  # only steps after the checkpoint
    for epoch in range(3):
        ids = [i for s in range(epoch * steps, (epoch + 1) * steps) for i in sum(per_step[s][-2:], [])]
        assert len(ids) == len(set(ids)) == n  # every sample exactly once (960 = 40 global batches)

    # One process trains the same global batches, step by step.
    for s in range(3 * steps):
        assert set(alone[s]) == set(sum(per_step[s][-2:], [])), (s, len(per_step[s]), at, steps)
