"""End-to-end training with real Ray Train workers (and in-process local mode)."""

import glob
import json
import os

import numpy as np
import pytest

from tests.common import RECORDING_MODEL, check_epochs, read_records, run_cli, write_h5

pytestmark = pytest.mark.ray

def test_uneven_three_workers_train_each_sample_at_most_once(tmp_path):
    """101 samples on 3 workers with a global batch of 9: must finish, not hang. The
    builder is given relative to the working directory, as a user types it: the driver
    makes it absolute, so the workers (started elsewhere) find it."""
    n = 101
    ids = np.arange(n, dtype=np.float32)
    data = write_h5(str(tmp_path / "ids.h5"), np.broadcast_to(ids[:, None, None, None], (n, 2, 2, 1)).copy(),
                    np.arange(n) % 2, sample_count=n)
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    (tmp_path / "recording.py").write_text(RECORDING_MODEL.format(record_dir=str(record_dir)))
    proc = run_cli("train", "--data", data, "--model", "recording.py:build", "--num-workers", "3",
                   "--cpus-per-worker", "0.5", "--batch-size", "9", "--epochs", "2", "--validation-ratio", "0.3",
                   "--name", "uneven", "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    from raytrain.run import rundir

    assert rundir.read_job(str(tmp_path / "runs" / "uneven")).model.builder == f"{tmp_path}/recording.py:build"
    plan = json.loads((tmp_path / "runs/uneven/dataset.json").read_text())["plan"]
    assert (plan["train_steps"], plan["val_steps"], plan["worker_batch"]) == (7, 3, 3)

    import pyarrow as pa  # noqa: F401  (split is recomputed the way the driver did)

    from raytrain.data.hdf5_index import build_hdf5_index
    from raytrain.data.split import split_index

    train, val = split_index(build_hdf5_index([data]).table, 0.3, 0)
    train_ids = set(train.column("sample_id").to_pylist())
    val_ids = set(val.column("sample_id").to_pylist())
    trained = read_records(record_dir, "train")
    assert len(trained) == 3
    check_epochs(trained, steps=7, worker_batch=3, epochs=2, population=train_ids)
    evaluated = read_records(record_dir, "eval")
    assert len(evaluated) == 3
    check_epochs(evaluated, steps=3, worker_batch=3, epochs=2, population=val_ids)


def ray_actors_of_session_with(pid):
    """Actor class names of the Ray session a worker process ``pid`` ran in, from its workers'
    log files (named ``worker-ID-JOB-PID.out``, each beginning with ``:actor_name:NAME``). Found
    by the pid, not as the newest session: another test's Ray may have started since. An older
    session may hold a log of an earlier process with the same (recycled) pid: the newest log is this one."""
    found = glob.glob(os.path.join(os.environ.get("RAY_TMPDIR", "/tmp/ray"), "session_2*", "logs", f"worker-*-{pid}.out"))
    assert found, f"no Ray session holds the log of worker process {pid}"
    session = os.path.dirname(os.path.dirname(max(found, key=os.path.getmtime)))
    names = []
    for path in glob.glob(os.path.join(session, "logs", "worker-*.out")):
        with open(path, errors="replace") as f:
            names += [line.split(":actor_name:", 1)[1].strip() for line in f if line.startswith(":actor_name:")]
    return names


def test_two_workers_learn_and_end_with_identical_weights(tmp_path, make_h5, other_ray):
    """On a private local Ray while another Ray runs on this machine (``other_ray``): Ray
    Train's placement-group cleaner must ask this run's own Ray whether its controller lives,
    or it removes the run's placement group and ends its workers."""
    data = make_h5("train.h5", samples=480, shape=(16, 16, 3), classes=3)
    proc = run_cli("train", "--data", data, "--num-workers", "2", "--batch-size", "32", "--epochs", "3",
                   "--name", "two", "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "two"
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "samples_per_s"} <= set(epochs[-1])
    ranks = [json.loads(p.read_text()) for p in sorted((run / "workers").glob("rank-*.json"))]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert len({r["pid"] for r in ranks}) == 2
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert "finished 3 epochs (2 workers)" in proc.stdout and "val_accuracy" in proc.stdout
    # Not a terminal: exactly one line per epoch, none from rank 1, no worker or TensorFlow noise.
    for epoch in (1, 2, 3):
        assert sum(line.startswith(f"epoch {epoch}/3  ") for line in proc.stdout.splitlines()) == 1
    assert "\r" not in proc.stdout and "ETA" not in proc.stdout
    assert "RayTrainWorker" not in proc.stdout + proc.stderr and "cuInit" not in proc.stderr
    # Ray Train's preemption watcher is off (raytrain.env.PREEMPTION_WATCHER_ENV): one actor process fewer.
    actors = ray_actors_of_session_with(ranks[0]["pid"])
    assert actors.count("RayTrainWorker") == 2 and "PreemptionWatcher" not in actors, actors

    import tf_keras

    model = tf_keras.models.load_model(str(run / "model.keras"))
    assert model.predict(np.zeros((2, 16, 16, 3), np.float32), verbose=0).shape == (2, 3)


def test_local_mode_trains_clips_with_one_hot_labels(tmp_path, make_h5):
    data = make_h5("clips.h5", samples=160, shape=(4, 1, 8, 8), classes=2, one_hot=True)
    proc = run_cli("train", "--data", data, "--local", "--model", "video3d", "--batch-size", "16", "--epochs", "2",
                   "--name", "local", "--storage-path", str(tmp_path / "runs"), "--verbose", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Reported metrics" in proc.stderr  # --verbose shows Ray Train's own lines
    run = tmp_path / "runs" / "local"
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 2 and "val_accuracy" in epochs[-1]
    assert json.loads((run / "workers" / "rank-0.json").read_text())["train_shard_samples"] == 128
    assert "finished 2 epochs (local, in-process)" in proc.stdout
    assert (run / "model.keras").exists() and (run / "saved_model" / "saved_model.pb").exists()
