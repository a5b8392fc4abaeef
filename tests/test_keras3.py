"""Keras 3 models on JAX: the framework's choice, its checkpoints, runs in an environment
without TensorFlow (``pip install 'raytrain[jax]'``, built once per session), and real Ray
workers training the same global batches as a tf_keras run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from raytrain import frameworks
from raytrain.config import ModelSection, TrainingSection
from raytrain.errors import RaytrainError
from raytrain.models import build_model
from raytrain.run import checkpoint
from tests.common import (
    KERAS3_STEP_RECORDING_MODEL,
    ORDER_ARGS,
    global_batches,
    recording,
    run_cli,
    start,
    steps_trained,
)

KERAS3_BUILDER = """
import keras


def build(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(num_classes, activation="softmax")])
"""
TF_KERAS_BUILDER = KERAS3_BUILDER.replace("import keras", "import tf_keras as keras")
TF_ONLY_LAYER = KERAS3_BUILDER.replace("import keras", "import keras\nimport tensorflow as tf").replace(
    "keras.layers.Flatten(),", "keras.layers.Lambda(lambda x: tf.image.flip_left_right(x)), keras.layers.Flatten(),")


def _builder(tmp_path, name, text):
    (tmp_path / f"{name}.py").write_text(text)
    return f"{tmp_path}/{name}.py:build"


def test_the_framework_is_the_one_the_builder_imports(tmp_path):
    k3, tfk = _builder(tmp_path, "k3", KERAS3_BUILDER), _builder(tmp_path, "tfk", TF_KERAS_BUILDER)
    assert frameworks.resolve(ModelSection(builder=k3)) == "keras"
    assert frameworks.resolve(ModelSection(builder=tfk)) == "tf_keras"
    assert frameworks.resolve(ModelSection(builder="cnn")) == "tf_keras"  # both installed: TensorFlow's is the default
    assert frameworks.resolve(ModelSection(builder="cnn", framework="keras")) == "keras"
    with pytest.raises(RaytrainError, match="builds its model with tf_keras but model.framework is keras; pass "
                                            "--framework tf_keras"):
        frameworks.resolve(ModelSection(builder=tfk, framework="keras"))


def test_a_keras3_checkpoint_restores_the_weights_and_the_optimizer(tmp_path):
    section = ModelSection(builder=_builder(tmp_path, "k3", KERAS3_BUILDER))
    x, y = np.random.RandomState(0).rand(32, 4, 4, 1).astype("float32"), np.arange(32) % 3

    def model():
        return build_model(section, TrainingSection(), (4, 4, 1), 3, False, framework="keras")

    trained = model()
    trained.fit(x, y, batch_size=8, epochs=2, verbose=0)
    checkpoint.write(trained, str(tmp_path / "c"), {"epoch": 2})
    fresh = model()
    assert checkpoint.restore(fresh, str(tmp_path / "c"))["epoch"] == 2
    assert int(fresh.optimizer.iterations.numpy()) == 8
    for a, b in zip(trained.trainable_variables + trained.optimizer.variables,
                    fresh.trainable_variables + fresh.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    other = build_model(ModelSection(), TrainingSection(), (8, 8, 3), 3, False, framework="keras")
    with pytest.raises(RaytrainError, match="do not match the model's"):
        checkpoint.restore(other, str(tmp_path / "c"))


@pytest.mark.parametrize("framework", ["keras", "tf_keras"])
def test_a_model_that_ends_in_logits_is_refused_in_one_line(tmp_path, framework):
    text = KERAS3_BUILDER.replace('activation="softmax"', "")
    if framework == "tf_keras":
        text = text.replace("import keras", "import tf_keras as keras")
    section = ModelSection(builder=_builder(tmp_path, "logits", text))
    with pytest.raises(RaytrainError, match="without an activation \\(logits\\), but the loss takes probabilities"):
        build_model(section, TrainingSection(), (4, 4, 1), 3, False, framework=framework)


def test_a_keras3_model_with_a_tensorflow_only_layer_is_one_line(tmp_path):
    section = ModelSection(builder=_builder(tmp_path, "tfonly", TF_ONLY_LAYER))
    with pytest.raises(RaytrainError, match=r"cannot run on samples of shape \(4, 4, 1\) with Keras 3 on JAX"):
        build_model(section, TrainingSection(), (4, 4, 1), 3, False, framework="keras")


def test_keras3_mixed_precision_computes_in_bfloat16_on_cpus_with_float32_weights(tmp_path):
    section = ModelSection(builder="cnn")
    try:
        model = build_model(section, TrainingSection(mixed_precision=True), (8, 8, 3), 3, False, framework="keras")
        assert model.layers[0].dtype_policy.name == "mixed_bfloat16"
        assert model.layers[0].compute_dtype == "bfloat16" and model.layers[0].kernel.dtype == "float32"
        assert model.layers[-1].compute_dtype == "float32"  # the softmax stays float32
        history = model.fit(np.zeros((8, 8, 8, 3), "float32"), np.arange(8) % 3, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        import keras

        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_framework_bad_input_is_one_line_and_exit_2_before_ray(tmp_path, make_h5, jax_python):
    data = make_h5(samples=32)
    tfk = _builder(tmp_path, "tfk", TF_KERAS_BUILDER)
    common = ("train", "--data", data, "--num-workers", "2", "--storage-path", str(tmp_path / "runs"))
    cases = [
        (("--model", tfk, "--framework", "keras"), {}, False, "builds its model with tf_keras but model.framework is keras"),
        (("--framework", "keras"), {"KERAS_BACKEND": "torch"}, False, "KERAS_BACKEND is 'torch'"),
        (("--framework", "tf_keras"), {}, True, "pip install 'raytrain[tensorflow]'"),
        (("--model", tfk), {}, True, "pip install 'raytrain[tensorflow]'"),  # the builder's import names the extra
        (("--framework", "jax"), {}, False, "model.framework must be one of ['auto', 'tf_keras', 'keras']"),
        (("--model", tfk, "--y-key", "nope"), {}, False, "has no dataset 'nope'"),  # no TensorFlow start-up lines
    ]
    for args, env, without_tf, message in cases:  # without_tf: in the environment without TensorFlow
        proc = run_cli(*common, *args, cwd=str(tmp_path), python=jax_python if without_tf else sys.executable, **env)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr[-2000:])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("status.json"))


def _load_keras_model(python, builder, path):
    """``keras.saving.load_model`` in ``python``, after the builder's module registered its layer."""
    code = ("import runpy, sys, keras; runpy.run_path(sys.argv[1]); m = keras.saving.load_model(sys.argv[2]); "
            "print(type(m).__module__)")
    return subprocess.run([python, "-c", code, builder.rsplit(":", 1)[0], path], capture_output=True, text=True,
                          env=dict(os.environ, KERAS_BACKEND="jax"))


@pytest.mark.slow
def test_a_keras3_run_without_tensorflow_trains_the_tf_keras_order_resumes_and_evaluates(tmp_path, ids_order,
                                                                                         jax_python):
    data, n, alone = ids_order
    record_dir, model = recording(tmp_path, "k3", template=KERAS3_STEP_RECORDING_MODEL)
    runs = tmp_path / "runs"
    args = ("--data", data, "--model", model, *ORDER_ARGS, "--storage-path", str(runs), "--name", "k3")
    proc = run_cli("train", *args, "--local", "--checkpoint-every", "17", cwd=str(tmp_path), python=jax_python)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (seen,) = steps_trained(record_dir)
    steps = n // 24
    assert sorted(seen) == list(range(3 * steps))
    assert all(sorted(seen[s]) == sorted(alone[s]) for s in seen)  # the tf_keras run's global batches
    run = runs / "k3"
    assert "framework: keras" in (run / "job.yaml").read_text()  # auto, resolved from the builder's imports
    assert (run / "checkpoint-epoch-0003").is_dir() and not (run / "saved_model").exists()
    boards = {p.parent.name for p in (run / "tensorboard").rglob("events.out.tfevents.*")}
    assert boards == {"train", "validation"}

    resumed = run_cli("train", *args, "--resume", "--epochs", "4", cwd=str(tmp_path), python=jax_python)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first, then = sorted(steps_trained(record_dir), key=min)  # the first run's process, the resumed one's
    assert sorted(first) == list(range(3 * steps)) and sorted(then) == list(range(3 * steps, 4 * steps))
    assert [m["epoch"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3, 4]

    evaluated = run_cli("evaluate", str(run), cwd=str(tmp_path), python=jax_python)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((run / "evaluations.jsonl").read_text())["samples"] == n
    loaded = _load_keras_model(jax_python, model, str(run / "model.keras"))
    assert loaded.returncode == 0 and loaded.stdout.startswith("keras"), loaded.stderr[-2000:]


@pytest.mark.ray
def test_keras3_workers_train_the_same_batches_and_resume_where_a_sigterm_checkpointed(tmp_path, ids_order,
                                                                                     jax_python):
    data, n, alone = ids_order
    record_dir, model = recording(tmp_path, "k3spot", step_seconds=0.06, template=KERAS3_STEP_RECORDING_MODEL)
    proc = start("train", "--data", data, "--model", model, *ORDER_ARGS, "--checkpoint-every", "1h",
                 "--num-workers", "2", "--max-failures", "1", "--name", "k3spot",
                 "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path), python=jax_python)
    run = tmp_path / "runs" / "k3spot"
    deadline = time.time() + 300
    while not list(record_dir.glob("*.txt")) or sum(1 for _ in open(next(record_dir.glob("*.txt")))) < 50:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    os.kill(json.loads((run / "workers" / "rank-1.json").read_text())["pid"], signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    saved = [e for e in events if e["event"] == "checkpoint" and e["preempted"]]
    assert len(saved) == 1
    restored = [e for e in events if e["event"] == "restored"]
    assert [(e["epoch"], e["step"]) for e in restored] == [(saved[0]["epoch"], saved[0]["step"])]

    steps = n // 24
    per_step = global_batches(steps_trained(record_dir))
    assert sorted(per_step) == list(range(3 * steps))
    at = saved[0]["epoch"] * steps + saved[0]["step"]
    redone = [s for s, batches in per_step.items() if len(batches) > 2]
    assert all(s >= at for s in redone) and len(redone) <= 2, redone
    for s, batches in per_step.items():  # each step: the two workers' parts make the tf_keras run's global batch
        assert sorted(batches[-2] + batches[-1]) == sorted(alone[s]), s
    records = [json.loads(p.read_text()) for p in sorted((run / "workers").glob("rank-*.json"))]
    assert {r["framework"] for r in records} == {"keras"} and len({r["weights_sha256"] for r in records}) == 1


@pytest.mark.ray
def test_three_keras3_workers_survive_a_killed_worker_redoing_at_most_the_checkpoint_interval(tmp_path, ids_order):
    data, n, alone = ids_order
    record_dir, model = recording(tmp_path, "k3kill", step_seconds=0.03, template=KERAS3_STEP_RECORDING_MODEL)
    proc = start("train", "--data", data, "--model", model, *ORDER_ARGS, "--checkpoint-every", "5",
                 "--num-workers", "3", "--cpus-per-worker", "0.5", "--max-failures", "1", "--name", "k3kill",
                 "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
    run = tmp_path / "runs" / "k3kill"
    deadline = time.time() + 300
    while not list(record_dir.glob("*.txt")) or sum(1 for _ in open(next(record_dir.glob("*.txt")))) < 50:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    os.kill(json.loads((run / "workers" / "rank-2.json").read_text())["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    restored = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    restored = [e for e in restored if e["event"] == "restored"]
    assert len(restored) == 1 and restored[0]["step"] % 5 == 0  # a step checkpoint, every 5 steps

    steps = n // 24
    per_step = global_batches(steps_trained(record_dir))
    assert sorted(per_step) == list(range(3 * steps))
    at = restored[0]["epoch"] * steps + restored[0]["step"]
    redone = [s for s, batches in per_step.items() if len(batches) > 3]
    assert all(s >= at for s in redone) and len(redone) <= 5, redone  # at most the interval trained twice
    for s, batches in per_step.items():  # the newest three parts make the tf_keras run's global batch of the step
        assert sorted(sum(batches[-3:], [])) == sorted(alone[s]), s


BLOWUP = """
import keras


class Blowup(keras.layers.Layer):  # NaN from its 7th training call on
    def build(self, shape):
        self.calls = self.add_weight(name="calls", shape=(), initializer="zeros", trainable=False)

    def call(self, x, training=None):
        if training:
            self.calls.assign(self.calls + 1.0)
        return x * keras.ops.where(self.calls > 6.0, float("nan"), 1.0)


def build(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), Blowup(),
                             keras.layers.Dense(num_classes, activation="softmax")])
"""


@pytest.mark.slow
def test_a_keras3_loss_that_turns_nan_stops_the_run_keeping_the_last_checkpoint(tmp_path, make_h5):
    data = make_h5("d.h5", samples=64, shape=(8, 8, 3))
    model = _builder(tmp_path, "blowup", BLOWUP)
    proc = run_cli("train", "--data", data, "--model", model, "--batch-size", "16", "--epochs", "3",
                   "--validation-ratio", "0", "--storage-path", "runs", "--name", "nan", "--local",
                   "--steps-per-execution", "1", cwd=str(tmp_path))
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("raytrain: error:")]
    assert len(errors) == 1 and "the training loss became nan at epoch 2, step 3" in errors[0], proc.stderr[-3000:]
    assert "the newest checkpoint is epoch 1" in errors[0]
    run = tmp_path / "runs" / "nan"
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]


@pytest.mark.slow
def test_a_sigterm_to_a_local_keras3_run_checkpoints_its_step_and_resume_continues_there(tmp_path, ids_order):
    data, n, alone = ids_order
    record_dir, model = recording(tmp_path, "k3term", step_seconds=0.05, template=KERAS3_STEP_RECORDING_MODEL)
    args = ("--data", data, "--model", model, *ORDER_ARGS, "--storage-path", str(tmp_path / "runs"), "--name", "k3term")
    proc = start("train", *args, "--local", "--checkpoint-every", "1h", cwd=str(tmp_path))
    deadline = time.time() + 300
    while not list(record_dir.glob("*.txt")) or sum(1 for _ in open(next(record_dir.glob("*.txt")))) < 50:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    run = tmp_path / "runs" / "k3term"
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    saved = [e for e in map(json.loads, (run / "events.jsonl").read_text().splitlines())
             if e["event"] == "checkpoint" and e["preempted"]]
    assert len(saved) == 1 and saved[0]["step"] > 0  # mid-epoch

    resumed = run_cli("train", "--resume", "--name", "k3term", "--storage-path", str(tmp_path / "runs"),
                      cwd=str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = n // 24
    per_step = global_batches(steps_trained(record_dir))
    assert sorted(per_step) == list(range(3 * steps))
    at = saved[0]["epoch"] * steps + saved[0]["step"]
    redone = [s for s, batches in per_step.items() if len(batches) > 1]
    assert all(s >= at for s in redone) and len(redone) <= 1, redone
    for s, batches in per_step.items():
        assert sorted(batches[-1]) == sorted(alone[s]), s
