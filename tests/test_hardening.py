"""Defects found by trying raytrain as a new user would: each test failed before its fix."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest

from raytrain import config as cfg
from raytrain.data import image_index
from raytrain.data.hdf5_index import build_hdf5_index
from raytrain.data.image_index import read_manifest
from raytrain.errors import RaytrainError
from raytrain.config import ModelSection, TrainingSection
from raytrain.models import build_model
from raytrain.run import rundir
from raytrain.run.runs import _best
from tests.common import ROOT, run_cli, write_h5


def write_builder(path, *layers):
    """A builder file: Input, ``layers`` (Python source), Flatten, a softmax Dense."""
    middle = "".join(f"{layer}, " for layer in layers)
    path.write_text(
        "import tensorflow as tf\nimport tf_keras as keras\n\n"
        "def build(input_shape, num_classes):\n"
        f"    return keras.Sequential([keras.Input(shape=input_shape), {middle}keras.layers.Flatten(),\n"
        "                             keras.layers.Dense(num_classes, activation='softmax')])\n"
    )


def validated(**sections):
    job = cfg.from_dict({"data": {"paths": ["x.h5"]}, **sections})
    return cfg.validate(job)


# --- 3: non-finite numbers, 12: a negative seed, a binary job file ---------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_in_the_job_are_rejected(value):
    with pytest.raises(RaytrainError, match=r"model.learning_rate must be a finite number.*--learning-rate"):
        validated(model={"learning_rate": value})


def test_a_negative_seed_is_rejected():
    with pytest.raises(RaytrainError, match=r"data.seed must be non-negative"):
        validated(data={"paths": ["x.h5"], "seed": -1})


def test_a_binary_job_file_is_one_line(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(RaytrainError, match="is not a text file"):
        cfg.load_job(str(path))


# --- 6: a relative builder path ---------------------------------------------------------------

def test_a_relative_builder_file_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = validated(model={"builder": "models/net.py:build"})
    assert job.model.builder == f"{tmp_path}/models/net.py:build"
    assert validated(model={"builder": "cnn"}).model.builder == "cnn"
    assert validated(model={"builder": "pkg.mod:build"}).model.builder == "pkg.mod:build"
    # Ray workers training with a relative builder: test_train.py, uneven three workers.


# --- 12, 13: files and models that fail on the driver, with one line -------------------------

def test_string_labels_in_hdf5(tmp_path):
    path = str(tmp_path / "s.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=np.zeros((4, 2, 2, 1), np.uint8))
        f.create_dataset("Y", data=np.array([b"cat", b"dog", b"cat", b"dog"]))
    with pytest.raises(RaytrainError, match=r"labels 'Y' are .* values; store class indices"):
        build_hdf5_index([path])


def test_string_features_in_hdf5(tmp_path):
    path = str(tmp_path / "s.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=np.array([[b"a"], [b"b"]]))
        f.create_dataset("Y", data=np.array([0, 1]))
    with pytest.raises(RaytrainError, match=r"features 'X' are .* values; a model trains on numbers"):
        build_hdf5_index([path])


def test_big_endian_features(tmp_path):
    path = write_h5(str(tmp_path / "be.h5"), np.zeros((4, 2, 2, 1), ">f4"), np.array([0, 1, 0, 1]))
    with pytest.raises(RaytrainError, match=r"big-endian \(>f4\).*astype\('<f4'\)"):
        build_hdf5_index([path])


def test_a_non_numeric_sample_count(tmp_path):
    path = write_h5(str(tmp_path / "c.h5"), np.zeros((4, 2, 2, 1), np.uint8), np.array([0, 1, 0, 1]))
    with h5py.File(path, "a") as f:
        f.attrs["sample_count"] = "four"
    with pytest.raises(RaytrainError, match=r"sample_count='four' is not a whole number"):
        build_hdf5_index([path])


def test_a_builder_whose_input_does_not_match_the_data(tmp_path):
    (tmp_path / "m.py").write_text(
        "import tf_keras as keras\n"
        "def build(input_shape, num_classes):\n"
        "    return keras.Sequential([keras.Input(shape=(8, 8, 1)), keras.layers.Flatten(),\n"
        "                             keras.layers.Dense(num_classes, activation='softmax')])\n"
    )
    with pytest.raises(RaytrainError, match=r"takes inputs of shape \(8, 8, 1\) but the samples have shape \(4, 4, 3\)"):
        build_model(ModelSection(builder=f"{tmp_path}/m.py:build"), TrainingSection(), (4, 4, 3), 2, False)


def test_an_unknown_metric_is_named():
    with pytest.raises(RaytrainError, match="unknown metric 'bogus'"):
        build_model(ModelSection(metrics=["accuracy", "bogus"]), TrainingSection(), (8, 8, 3), 2, False)
    build_model(ModelSection(metrics=["accuracy", "AUC", "mse"]), TrainingSection(), (8, 8, 3), 2, False)  # known names pass


def test_storage_path_that_is_a_file_fails_before_indexing(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    proc = run_cli("train", "--data", str(tmp_path / "missing.h5"), "--storage-path", "runs", cwd=str(tmp_path))
    assert proc.returncode == 2
    assert "run.storage_path" in proc.stderr and "is a file, not a folder" in proc.stderr  # before the data check
    assert (tmp_path / "runs").read_text() == "not a folder"
    proc = run_cli("train", "--data", str(tmp_path / "missing.h5"), "--storage-path", "runs/sub", cwd=str(tmp_path))
    assert proc.returncode == 2 and "is not writable" in proc.stderr and "Traceback" not in proc.stderr


# --- 4: duplicate rows in a manifest ----------------------------------------------------------

def test_duplicate_manifest_rows_are_refused_naming_them(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "m.csv").write_text("path,label\na.jpg,cat\nb.jpg,dog\na.jpg,cat\n")
    with pytest.raises(RaytrainError, match=r"more than once: .*a.jpg \(rows 1 and 3\)"):
        read_manifest(str(tmp_path / "m.csv"))


# --- 9: two commands on one run ---------------------------------------------------------------

def test_a_claimed_run_is_refused_and_a_stale_claim_taken_over(tmp_path):
    run = str(tmp_path / "run")
    with rundir.claim(run):
        with pytest.raises(RaytrainError, match="is in use by another raytrain"):
            with rundir.claim(run):
                pass
    assert not os.path.exists(run)  # nothing was written: the claim leaves no folder behind
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    os.makedirs(run)
    (tmp_path / "run" / rundir.CLAIM).write_text(json.dumps({"pid": gone.pid, "host": os.uname().nodename}))
    with rundir.claim(run):  # its process is gone
        assert json.loads((tmp_path / "run" / rundir.CLAIM).read_text())["pid"] == os.getpid()


# --- 10: Ctrl-C while scanning a large tree ---------------------------------------------------

def test_ctrl_c_while_scanning_ends_at_once(tmp_path, monkeypatch):
    """Ctrl-C during a scan ends it at once and drops the listings still queued (leaving a
    `with ThreadPoolExecutor` block would first run every one of them)."""
    import _thread

    listed = []

    def slow_listing(path):  # every folder has 8 sub-folders: thousands of listings get queued
        listed.append(path)
        time.sleep(0.01)
        return [], [os.path.join(path, str(i)) for i in range(8)] if path.count(os.sep) < 12 else []

    monkeypatch.setattr(image_index, "_list_folder", slow_listing)
    # Python's own Ctrl-C handler: a process started in the background (as CI may start
    # pytest) inherits SIGINT ignored, and interrupt_main() would then do nothing.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.5, _thread.interrupt_main).start()  # Ctrl-C, as the terminal would send it
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            image_index._walk([str(tmp_path)], threads=4)
        assert time.monotonic() - started < 1.5
    finally:
        signal.signal(signal.SIGINT, previous)
    done = len(listed)
    time.sleep(0.5)
    assert len(listed) <= done + 4  # only the listings already running finish


# --- 16: the data-wait counter lives on the CPU; 15: the driver hides its GPUs ----------------

def test_the_data_wait_counter_is_on_the_cpu():
    from raytrain.data.feed import QueueFeed

    feed = QueueFeed((2, 2), "uint8", capacity=2, replicas=1)
    assert feed.waited.device.endswith("CPU:0")


@pytest.mark.slow
def test_the_driver_hides_its_gpus_before_building():
    code = ("import tensorflow as tf\nfrom raytrain.trainer import hide_gpus\nhide_gpus()\n"
            "print(len(tf.config.get_visible_devices('GPU')), len(tf.config.get_visible_devices('CPU')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["0", "1"]


# --- smaller: the best validation metric of an error metric is its minimum --------------------

def test_runs_shows_the_minimum_of_an_error_metric():
    epochs = [{"val_mse": 0.5, "val_loss": 1.0}, {"val_mse": 0.2, "val_loss": 0.8}, {"val_mse": 0.3, "val_loss": 0.9}]
    assert _best(epochs, ["mse"]) == ("val_mse", 0.2)
    accuracy = [{"val_accuracy": 0.5, "val_loss": 1.0}, {"val_accuracy": 0.7, "val_loss": 0.8}]
    assert _best(accuracy, ["accuracy"]) == ("val_accuracy", 0.7)
    assert _best([{"val_loss": 2.0}, {"val_loss": 1.0}], []) == ("val_loss", 1.0)


# --- runs with real processes (local mode: Ray starts in-process) -----------------------------

def metrics_epochs(run):
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.ray
def test_storage_on_another_filesystem_resume_extend_and_metrics_once(tmp_path, make_h5):
    """7: a storage path on another filesystem than /tmp (here /dev/shm, a tmpfs); 14: --resume
    with more --epochs continues a finished run, fewer is refused; 8: a run that lost its
    checkpoints starts over without counting its epochs twice."""
    if os.stat("/dev/shm").st_dev == os.stat("/tmp").st_dev:
        pytest.skip("/dev/shm is on the same filesystem as /tmp here: no second filesystem to write to")
    data = make_h5("d.h5", samples=64, shape=(8, 8, 3))
    storage = f"/dev/shm/raytrain-test-{os.getpid()}"
    run = __import__("pathlib").Path(storage) / "r"
    common = ("--data", data, "--batch-size", "16", "--validation-ratio", "0", "--storage-path", storage,
              "--name", "r", "--local", "--log-every-steps", "1")
    try:
        proc = run_cli("train", *common, "--epochs", "1", cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (run / "model.keras").is_file() and metrics_epochs(run) == [1]
        proc = run_cli("train", *common, "--epochs", "2", "--resume", cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "already finished" not in proc.stdout and metrics_epochs(run) == [1, 2]
        # TensorBoard's batch curve continues after the resume (4 steps an epoch) instead of restarting at 1
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        board = EventAccumulator(str(run / "tensorboard" / "train"), size_guidance={"tensors": 0})
        board.Reload()
        assert sorted(e.step for e in board.Tensors("batch_loss")) == [1, 2, 3, 4, 5, 6, 7, 8]
        proc = run_cli("train", *common, "--epochs", "1", "--resume", cwd=str(tmp_path))
        assert proc.returncode == 2 and "has already trained 2 epochs; pass --epochs 2 or more" in proc.stderr
        for name in os.listdir(run):
            if name.startswith(rundir.CHECKPOINT_PREFIX):
                subprocess.run(["rm", "-r", str(run / name)], check=True)
        rundir.write_status(str(run), "failed")
        proc = run_cli("train", *common, "--epochs", "2", "--resume", cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert metrics_epochs(run) == [1, 2]
    finally:
        subprocess.run(["rm", "-rf", storage], check=True)


@pytest.mark.ray
def test_a_loss_that_turns_nan_stops_the_run_keeping_the_last_checkpoint(tmp_path, make_h5):
    """3: one line naming the epoch and step, exit 1, status failed, epoch 1's checkpoint kept."""
    data = make_h5("d.h5", samples=64, shape=(8, 8, 3))
    (tmp_path / "blowup.py").write_text(
        "import tensorflow as tf\nimport tf_keras as keras\n\n"
        "class Blowup(keras.layers.Layer):  # NaN from its 7th training call on\n"
        "    def build(self, shape):\n"
        "        self.calls = self.add_weight(name='calls', shape=(), initializer='zeros', trainable=False)\n"
        "    def call(self, x, training=None):\n"
        "        if training:\n"
        "            self.calls.assign_add(1.0)\n"
        "        return x * tf.where(self.calls > 6.0, float('nan'), 1.0)\n\n"
        "def build(input_shape, num_classes):\n"
        "    return keras.Sequential([keras.Input(shape=input_shape), keras.layers.Flatten(), Blowup(),\n"
        "                             keras.layers.Dense(num_classes, activation='softmax')])\n"
    )
    proc = run_cli("train", "--data", data, "--model", "blowup.py:build", "--batch-size", "16", "--epochs", "3",
                   "--validation-ratio", "0", "--storage-path", "runs", "--name", "nan", "--local",
                   "--steps-per-execution", "1", cwd=str(tmp_path))
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("raytrain: error:")]
    assert len(errors) == 1 and "the training loss became nan at epoch 2, step 3" in errors[0], proc.stderr[-3000:]
    assert "the newest checkpoint is epoch 1" in errors[0]
    run = tmp_path / "runs" / "nan"
    assert rundir.read_status(str(run))["status"] == "failed"
    assert metrics_epochs(run) == [1]
    # Several steps per call into TensorFlow (the default): the line names the call's steps.
    # Logged to MLflow: the failed run is FAILED there too.
    mlflow_uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_cli("train", "--data", data, "--model", "blowup.py:build", "--batch-size", "16", "--epochs", "3",
                   "--validation-ratio", "0", "--storage-path", "runs", "--name", "nan4", "--local",
                   "--steps-per-execution", "4", "--mlflow", mlflow_uri, cwd=str(tmp_path))
    assert proc.returncode == 1 and "at epoch 2, one of steps 1-4 (run in one call)" in proc.stderr, proc.stderr[-3000:]
    from mlflow import MlflowClient

    run_id = json.loads((tmp_path / "runs" / "nan4" / "mlflow.json").read_text())["run_id"]
    logged = MlflowClient(mlflow_uri).get_run(run_id)
    assert logged.info.status == "FAILED" and logged.data.metrics["loss"] > 0, logged


@pytest.mark.ray
def test_a_second_command_on_a_running_run_is_refused(tmp_path, make_h5):
    """9: two runs with one --name at once: the second stops with one line, the first finishes."""
    data = make_h5("d.h5", samples=256, shape=(16, 16, 3))
    args = ("train", "--data", data, "--epochs", "3", "--batch-size", "16", "--storage-path", "runs", "--name", "same",
            "--local")
    first = subprocess.Popen([sys.executable, "-m", "raytrain", *args], cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=ROOT),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    claim = tmp_path / "runs" / "same" / rundir.CLAIM
    deadline = time.time() + 120
    while not claim.exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.1)
    second = run_cli(*args, cwd=str(tmp_path))
    out, err = first.communicate(timeout=600)
    assert second.returncode == 2 and "is in use by another raytrain" in second.stderr, second.stderr[-2000:]
    assert first.returncode == 0, err[-3000:]
    assert metrics_epochs(tmp_path / "runs" / "same") == [1, 2, 3]
    assert not claim.exists()


# --- 1: every worker's part is a fair sample, even of data stored class by class ---------------

@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("kind", ["hdf5", "images"])
def test_each_worker_trains_on_every_class_in_proportion(tmp_path, kind, world):
    from raytrain.data.loader import auto_window
    from raytrain.data.kinds import build_index, make_loader
    from raytrain.data.loader import ReadSpec
    from raytrain.data.order import TRAIN
    from raytrain.data.plan import plan_steps
    from raytrain.data.shard import Shard
    from raytrain.data.split import cut_shards, split_index
    from raytrain.data.synth import make_image_tree

    if kind == "hdf5":  # written class by class: 3 classes of 400, 200 and 600 samples
        labels = np.repeat([0, 1, 2], [400, 200, 600])
        path = write_h5(str(tmp_path / "sorted.h5"), np.zeros((len(labels), 4, 4, 1), np.uint8), labels)
        d = cfg.validate(cfg.from_dict({"data": {"paths": [path]}})).data
    else:  # a class-folder tree: the index lists class0/ first, then class1/, ...
        make_image_tree(str(tmp_path / "tree"), 240, (8, 8), classes=3)
        d = cfg.validate(cfg.from_dict({"data": {"directory": str(tmp_path / "tree"), "image_size": [8, 8]}})).data
    index = build_index(d)
    train, _ = split_index(index.table, d.validation_ratio, d.seed)
    overall = np.bincount(train.column("label").to_numpy(), minlength=3) / train.num_rows
    plan = plan_steps(train.num_rows, 0, world, 12 * world, 1)
    read = ReadSpec(d, index.sample_shape, index.dtype, index.rows_per_block, auto_window(index.sample_bytes), 1)
    block_rows = max(index.rows_per_block.values(), default=1)
    for rank, part in enumerate(cut_shards(train, world, d.partitions, block_rows)):
        loader = make_loader(read, Shard(part, index.rows_per_block, d.partitions), rank, TRAIN)
        seen = np.concatenate([y for _, y in loader.epoch(0, plan.train_steps, plan.worker_batch)])
        loader.close()
        share = np.bincount(seen, minlength=3) / len(seen)
        assert np.all(np.abs(share - overall) < 0.08), (rank, share.round(2), overall.round(2))


# --- 5: a model that scales its own inputs is not scaled twice ---------------------------------

def test_data_scale_follows_a_leading_rescaling_layer():
    import tf_keras as keras

    from raytrain.data.feed import to_model
    from raytrain.models import scales_uint8, starts_with_rescaling

    own = keras.Sequential([keras.Input(shape=(4, 4, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                            keras.layers.Dense(2, activation="softmax")])
    plain = build_model(ModelSection(), TrainingSection(), (8, 8, 3), 2, False)
    assert starts_with_rescaling(own) and not starts_with_rescaling(plain)
    assert scales_uint8("auto", plain) and not scales_uint8("auto", own)
    assert scales_uint8("unit", own) and not scales_uint8("none", plain)
    x = np.full((1, 2), 255, np.uint8)
    assert float(to_model("uint8", 2, False, unit=True)(x, np.zeros(1))[0][0, 0]) == 1.0
    assert float(to_model("uint8", 2, False, unit=False)(x, np.zeros(1))[0][0, 0]) == 255.0
    with pytest.raises(RaytrainError, match=r"data.scale must be one of \['auto', 'unit', 'none'\]"):
        validated(data={"paths": ["x.h5"], "scale": "255"})


@pytest.mark.ray
def test_a_model_with_rescaling_gets_0_255_and_says_so(tmp_path, make_h5):
    data = make_h5("d.h5", samples=64, shape=(8, 8, 3))
    write_builder(tmp_path / "own.py", "keras.layers.Rescaling(1 / 255)")
    proc = run_cli("train", "--data", data, "--model", "own.py:build", "--batch-size", "16", "--epochs", "1",
                   "--validation-ratio", "0", "--storage-path", "runs", "--local", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the model scales its own inputs (data.scale: auto)" in proc.stdout + proc.stderr


def _start_training(tmp_path, data, name, *flags):
    """A driver training for long enough to be killed while it trains."""
    driver = subprocess.Popen(
        [sys.executable, "-m", "raytrain", "train", "--data", data, "--epochs", "50", "--batch-size", "16", *flags,
         "--storage-path", "runs", "--name", name], cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "runs" / name / "metrics.jsonl"
    deadline = time.time() + 180
    while not metrics.exists() and time.time() < deadline:  # an epoch is done: everything is up
        assert driver.poll() is None
        time.sleep(0.2)
    return driver


@pytest.mark.ray
def test_a_local_run_starts_no_process_and_a_killed_driver_leaves_no_ray_process(tmp_path, make_h5):
    """A --local run trains in the driver alone: no Ray, no child process (raytrain.modes.InProcess).
    After SIGKILL of a driver with Ray workers, the reaper ends its Ray within seconds."""
    from raytrain.cluster.processes import alive, descendants

    data = make_h5("d.h5", samples=2048, shape=(16, 16, 3))
    driver = _start_training(tmp_path, data, "local", "--local")
    assert descendants([driver.pid]) == []
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()

    driver = _start_training(tmp_path, data, "workers", "--num-workers", "1", "--cpus-per-worker", "1")
    ray_processes = [p for p in descendants([driver.pid]) if "reaper" not in open(f"/proc/{p}/cmdline").read()]
    commands = [open(f"/proc/{p}/cmdline").read() for p in ray_processes]
    assert any("RayTrainWorker" in cmd for cmd in commands) and any("gcs_server" in cmd for cmd in commands), commands
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    deadline = time.time() + 15
    while any(alive(p) for p in ray_processes) and time.time() < deadline:
        time.sleep(0.2)
    assert [p for p in ray_processes if alive(p)] == []


@pytest.mark.ray
def test_loaders_are_closed_when_training_fails(tmp_path):
    """A failed run leaves no decoding threads (or open files) behind. Local
    mode trains in this process, so the worker's threads are visible here."""
    from raytrain import trainer
    from raytrain.data.synth import make_image_tree

    paths = make_image_tree(str(tmp_path / "tree"), 32, (16, 16), classes=2)
    with open(paths[3], "r+b") as f:
        f.truncate(40)
    job = cfg.validate(cfg.from_dict({
        "data": {"directory": str(tmp_path / "tree"), "image_size": [16, 16], "validation_ratio": 0,
                 "decode_threads": 2},
        "training": {"epochs": 1, "batch_size": 4},
        "run": {"storage_path": str(tmp_path / "runs"), "name": "fails"},
    }))
    import ray

    with pytest.raises(RaytrainError, match="cannot be decoded"):
        trainer.run(job)
    assert [t.name for t in threading.enumerate() if t.name.startswith("raytrain-decode")] == []
    assert not ray.is_initialized()  # an in-process run starts no Ray (raytrain.modes)


CUSTOM_LAYER_MODEL = '''
import tf_keras as keras

{decorator}
class Doubled(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def build(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), Doubled(), keras.layers.Flatten(),
                             keras.layers.Dense(num_classes, activation="softmax")])
'''


@pytest.mark.parametrize("registered", [True, False])
@pytest.mark.slow
def test_evaluate_loads_custom_layers_of_the_builder_or_says_how(tmp_path, make_h5, registered):
    """Found while testing object storage: evaluate crashed with a traceback on a model with a custom layer."""
    decorator = "@keras.saving.register_keras_serializable()" if registered else ""
    (tmp_path / "custom.py").write_text(CUSTOM_LAYER_MODEL.format(decorator=decorator))
    data = make_h5("d.h5", samples=64, shape=(4, 4, 1))
    proc = run_cli("train", "--data", data, "--model", f"{tmp_path}/custom.py:build", "--local", "--epochs", "1",
                   "--batch-size", "8", "--name", "c", "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli("evaluate", str(tmp_path / "runs" / "c"), cwd=str(tmp_path))
    if registered:
        assert proc.returncode == 0 and "on 64 samples" in proc.stdout, proc.stderr[-2000:]
    else:
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "register_keras_serializable" in proc.stderr and "cannot be loaded" in proc.stderr


@pytest.mark.slow
def test_resume_refuses_data_that_changed_since_the_run_began(tmp_path):
    """--resume checks the data against the index's fingerprint the run saved."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (96, 4, 4, 1), dtype=np.uint8)
    y = np.arange(96) % 2
    data = write_h5(str(tmp_path / "d.h5"), x, y)
    common = ["--storage-path", str(tmp_path / "runs"), "--name", "r"]
    proc = run_cli("train", "--data", data, "--local", "--epochs", "1", "--batch-size", "8", *common, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    write_h5(data, x, 1 - y)  # same file, same count, other labels
    proc = run_cli("train", "--resume", "--epochs", "2", *common, cwd=str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "changed since the run began (the same count, other files, rows or labels)" in proc.stderr
    assert len((tmp_path / "runs/r/metrics.jsonl").read_text().splitlines()) == 1  # nothing trained or lost
    write_h5(data, x, y)  # the data it began with: resumes
    proc = run_cli("train", "--resume", "--epochs", "2", *common, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len((tmp_path / "runs/r/metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_resume_from_a_step_checkpoint_with_another_batch_size_is_refused(tmp_path, make_h5):
    data = make_h5(samples=64, shape=(8, 8, 3))
    runs = str(tmp_path / "runs")
    first = run_cli("train", "--data", data, "--local", "--framework", "keras", "--epochs", "1", "--batch-size", "16",
                    "--validation-ratio", "0", "--name", "r", "--storage-path", runs, cwd=str(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    import shutil

    run = tmp_path / "runs" / "r"  # as if the run had stopped at step 2 of epoch 2
    step = run / "checkpoint-epoch-0001-step-000002"
    shutil.copytree(run / "checkpoint-epoch-0001", step)
    state = json.loads((step / "raytrain_state.json").read_text())
    (step / "raytrain_state.json").write_text(json.dumps(dict(state, step=2)))
    resumed = run_cli("train", "--resume", "--name", "r", "--storage-path", runs, "--epochs", "2", "--batch-size", "8",
                      cwd=str(tmp_path))
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    assert len(resumed.stderr.strip().splitlines()) == 1
    assert "at step 2 of epoch 2, whose sample order was set by --batch-size 16; resume with --batch-size 16" \
        in resumed.stderr
    assert step.is_dir() and json.loads((run / "status.json").read_text())["status"] == "finished"  # nothing lost


WIDE = '''
import tf_keras as keras


def build(input_shape, num_classes):  # about 3.5 MB a checkpoint (weights and Adam's two moments)
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(1500),
                             keras.layers.Dense(num_classes, activation="softmax")])
'''


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs: room for one checkpoint of WIDE, not two. Mounting needs root (this
    machine and CI run as root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
def test_a_full_disk_is_one_line_keeps_the_last_checkpoint_and_resumes_once_there_is_room(tmp_path, small_disk,
                                                                                           make_h5):
    data = make_h5("d.h5", samples=256, shape=(8, 8, 3))
    (tmp_path / "wide.py").write_text(WIDE)
    args = ["train", "--data", data, "--model", f"{tmp_path}/wide.py:build", "--local", "--batch-size", "32",
            "--name", "full", "--storage-path", str(small_disk)]
    proc = run_cli(*args, "--epochs", "3", cwd=str(tmp_path))
    assert proc.returncode == 1, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("raytrain: error:")]
    assert f"no space left on the device of run.storage_path {small_disk}" in line
    assert "the newest checkpoint is epoch 1" in line and "raytrain train --resume --name full" in line
    assert "Traceback" not in proc.stderr
    run = small_disk / "full"
    assert not [p for p in run.iterdir() if ".tmp-" in p.name], list(run.iterdir())
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-epoch-0001"]
    assert json.loads((run / "status.json").read_text())["status"] == "failed"

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = run_cli("train", "--resume", "--name", "full", "--storage-path", str(small_disk), cwd=str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
