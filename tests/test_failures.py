"""Surviving failures with real Ray workers: a killed worker is replaced, a stopped run is resumed,
checkpoints are kept as asked, and the exported model is evaluated."""

import json
import os
import signal
import time

import numpy as np
import pytest

from raytrain.run import checkpoint
from tests.common import start

pytestmark = pytest.mark.ray


def wait_for_checkpoint(run, epoch, proc, timeout=300):
    """Wait until the checkpoint of ``epoch`` is complete in the run directory."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        newest = checkpoint.latest(str(run))
        if newest and newest[0] >= epoch:
            return newest[0]
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint of epoch {epoch} after {timeout} s")


def epochs_in(run):
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def kill_rank_1_in_epoch_2(run, proc):
    wait_for_checkpoint(run, 1, proc)
    time.sleep(0.5)  # into epoch 2 (an epoch takes ~2.5 s here)
    pid = json.loads((run / "workers" / "rank-1.json").read_text())["pid"]
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    return killed_at


@pytest.fixture
def data(make_h5):
    return make_h5("train.h5", samples=4000, shape=(32, 32, 3), classes=4)


def train_args(data, tmp_path, name, *extra):
    return ("train", "--data", data, "--num-workers", "2", "--epochs", "4", "--batch-size", "64",
            "--name", name, "--storage-path", str(tmp_path / "runs"), *extra)


def test_killed_worker_is_restarted_and_every_epoch_is_logged_once(tmp_path, data):
    proc = start(*train_args(data, tmp_path, "restart", "--max-failures", "1", "--keep-checkpoints", "3"),
                 cwd=str(tmp_path))
    run = tmp_path / "runs" / "restart"
    killed_at = kill_rank_1_in_epoch_2(run, proc)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert epochs_in(run) == [1, 2, 3, 4]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    restored = [e for e in events if e["event"] == "restored"]
    assert [e["epoch"] for e in restored] == [1]
    first_step = min(e["time"] for e in events if e["event"] == "first_step" and e["time"] > killed_at)
    print(f"restart: {first_step - killed_at:.1f} s from kill to the next training step")
    assert [e for e, _ in checkpoint.on_storage(str(run))] == [2, 3, 4]  # keep_checkpoints 3
    ranks = [json.loads(p.read_text()) for p in sorted((run / "workers").glob("rank-*.json"))]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    import tf_keras

    model = tf_keras.models.load_model(str(run / "model.keras"))
    assert model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0).shape == (2, 4)
    assert json.loads((run / "status.json").read_text())["status"] == "finished"


def test_without_max_failures_a_kill_ends_the_run_then_resume_finishes_it(tmp_path, data):
    proc = start(*train_args(data, tmp_path, "failed"), cwd=str(tmp_path))
    run = tmp_path / "runs" / "failed"
    kill_rank_1_in_epoch_2(run, proc)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("raytrain: error:")]
    assert len(errors) == 1
    assert "the process of worker 1 died" in errors[0] and "newest checkpoint is epoch 1" in errors[0]
    assert "--resume" in errors[0]
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
    assert epochs_in(run) == [1]
    epoch, path = checkpoint.latest(str(run))
    assert epoch == 1 and checkpoint.read_state(path)["epoch"] == 1

    resumed = start("train", "--resume", "--name", "failed", "--storage-path", str(tmp_path / "runs"),
                    cwd=str(tmp_path))
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert "restored the checkpoint of epoch 1" in out
    assert "epoch 1/4" not in out and "epoch 2/4" in out and "epoch 4/4" in out
    assert epochs_in(run) == [1, 2, 3, 4]
    assert [e for e, _ in checkpoint.on_storage(str(run))] == [3, 4]  # keep_checkpoints 2 (default)


def test_stopped_local_run_resumes_after_its_last_checkpoint_and_evaluates(tmp_path, make_h5):
    data = make_h5("train.h5", samples=3000, shape=(32, 32, 3), classes=4)
    args = ("train", "--data", data, "--local", "--epochs", "6", "--batch-size", "32", "--name", "stop",
            "--storage-path", str(tmp_path / "runs"))
    proc = start(*args, cwd=str(tmp_path))
    run = tmp_path / "runs" / "stop"
    wait_for_checkpoint(run, 2, proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "raytrain: interrupted" in err
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    done = checkpoint.latest(str(run))[0]
    assert 2 <= done < 6

    resumed = start("train", "--resume", "--name", "stop", "--storage-path", str(tmp_path / "runs"),
                    cwd=str(tmp_path))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    shown = [int(line.split()[1].split("/")[0]) for line in out.splitlines() if line.startswith("epoch ")]
    assert shown == list(range(done + 1, 7))  # only the epochs after the checkpoint
    assert epochs_in(run) == [1, 2, 3, 4, 5, 6]
    assert len(checkpoint.on_storage(str(run))) == 2

    again = start("train", "--resume", "--name", "stop", "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0 and "already finished its 6 epochs; nothing to do" in out
    assert epochs_in(run) == [1, 2, 3, 4, 5, 6]

    evaluated = start("evaluate", str(run), "--data", data, "--batch-size", "128", cwd=str(tmp_path))
    out, err = evaluated.communicate(timeout=300)
    assert evaluated.returncode == 0, err[-3000:]
    assert "on 3,000 samples" in out and "accuracy" in out
    record = json.loads((run / "evaluations.jsonl").read_text().splitlines()[-1])
    assert record["samples"] == 3000 and 0.5 < record["metrics"]["accuracy"] <= 1.0
    assert os.path.isfile(run / "saved_model" / "saved_model.pb")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_ends_the_workers_and_keeps_the_checkpoints(tmp_path, data, signum):
    """SIGTERM (kill, timeout, a scheduler) ends a run as Ctrl-C does: no native stack dump
    from Ray's handler, exit 130, the resume command, and the status written last (MLflow's
    run too: KILLED)."""
    mlflow_uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = start(*train_args(data, tmp_path, "ctrlc", "--mlflow", mlflow_uri), cwd=str(tmp_path))
    run = tmp_path / "runs" / "ctrlc"
    wait_for_checkpoint(run, 1, proc)
    pids = [json.loads((run / "workers" / f"rank-{r}.json").read_text())["pid"] for r in (0, 1)]
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "raytrain: interrupted; the newest checkpoint is epoch" in err and "raytrain train --resume --name ctrlc" in err
    assert "PC: @" not in err and "SIGTERM received" not in err
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    written = [p.stat().st_mtime for p in run.glob("checkpoint-*/**/*") if p.is_file()]
    assert max(written) <= (run / "status.json").stat().st_mtime
    deadline = time.time() + 20
    while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids), "a training worker outlived Ctrl-C"
    epoch, path = checkpoint.latest(str(run))
    assert epoch >= 1 and checkpoint.read_state(path)["epoch"] == epoch
    from mlflow import MlflowClient

    logged = MlflowClient(mlflow_uri).get_run(json.loads((run / "mlflow.json").read_text())["run_id"])
    assert logged.info.status == "KILLED", logged.info
