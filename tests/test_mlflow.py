"""MLflow tracking (``--mlflow``): real runs logged to a real MLflow server started on
127.0.0.1 and to a SQLite store, each read back with ``MlflowClient``."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from tests.common import free_port, run_cli

pytestmark = pytest.mark.slow

TRAIN = ["--epochs", "2", "--batch-size", "32", "--log-every-steps", "2"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` with a SQLite backend in a temporary folder; its process group is
    ended by its id at the end (it starts a uvicorn and a job runner below it)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen([mlflow, "server", "--backend-store-uri", f"sqlite:///{folder}/db.sqlite",
                             "--default-artifact-root", str(folder / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def run_id(run_dir):
    return json.loads((run_dir / "mlflow.json").read_text())["run_id"]


def history(c, run, key):
    return [(m.step, m.value) for m in sorted(c.get_metric_history(run, key), key=lambda m: (m.step, m.timestamp))]


def metrics_jsonl(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_local_run_and_its_resume_are_one_mlflow_run_on_a_server(server, tmp_path, make_h5):
    data = make_h5("d.h5", samples=256)
    first = run_cli("train", "--data", data, "--local", *TRAIN, "--name", "r", "--storage-path", "runs",
                    "--mlflow", server, "--mlflow-experiment", "exp", cwd=str(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "runs" / "r"
    run = run_id(run_dir)
    assert f"logged to MLflow {server}, experiment 'exp', run {run}" in first.stdout
    again = run_cli("train", "--resume", "--name", "r", "--storage-path", "runs", "--epochs", "3",
                    cwd=str(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert run_id(run_dir) == run  # the saved job keeps --mlflow; the run's id is read back

    c = client(server)
    found = c.get_run(run)
    assert found.info.status == "FINISHED" and found.info.run_name == "r"
    assert c.get_experiment(found.info.experiment_id).name == "exp"
    params, tags = found.data.params, found.data.tags
    assert params["training.batch_size"] == "32" and params["data.paths"] == data
    assert params["training.epochs"] == "2" and tags["resumed.training.epochs"] == "3"
    assert tags["raytrain.workers"] == "local" and tags["raytrain.framework"] == "tf_keras"
    assert tags["raytrain.dataset"] == json.loads((run_dir / "dataset.json").read_text())["fingerprint"]
    epochs = metrics_jsonl(run_dir)
    for key in ("loss", "val_accuracy", "samples_per_s", "data_wait_fraction"):
        assert history(c, run, key) == [(e["epoch"], pytest.approx(e[key])) for e in epochs]
    steps = [step for step, _ in history(c, run, "batch_loss")]
    assert steps == list(range(2, 3 * 6 + 1, 2))  # 6 steps an epoch (205 samples, 32 a step), every 2nd, once each
    assert {a.path for a in c.list_artifacts(run)} == {"model.keras", "report.png", "summary.json"}


@pytest.mark.ray
def test_two_workers_log_to_the_sqlite_store_beside_the_runs(tmp_path, make_h5):
    data = make_h5("d.h5", samples=256)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-m", "raytrain", "train", "--data", data, "--num-workers", "2", *TRAIN,
                           "--name", "w", "--storage-path", "runs", "--mlflow"],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = f"sqlite:///{tmp_path}/runs/mlflow.db"
    c = client(store)
    run = run_id(tmp_path / "runs" / "w")
    found = c.get_run(run)
    assert found.info.status == "FINISHED" and found.data.tags["raytrain.workers"] == "2"
    assert c.get_experiment(found.info.experiment_id).name == "raytrain"  # no job file to name it
    assert history(c, run, "val_loss") == [(e["epoch"], pytest.approx(e["val_loss"]))
                                           for e in metrics_jsonl(tmp_path / "runs" / "w")]
    assert [s for s, _ in history(c, run, "batch_loss")] == list(range(2, 13, 2))
    assert (tmp_path / "runs" / "mlartifacts" / run / "artifacts" / "model.keras").exists()


def test_a_dead_server_loses_no_training_and_says_what_was_not_logged(tmp_path, make_h5):
    data = make_h5("d.h5", samples=256)
    dead = f"http://127.0.0.1:{free_port()}"
    proc = run_cli("train", "--data", data, "--local", "--epochs", "1", "--batch-size", "32", "--name", "r",
                   "--storage-path", "runs", "--mlflow", dead, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert out.count(f"MLflow at {dead} failed") == 1 and "training goes on" in out
    assert f"MLflow at {dead} did not take the start of r, metrics" in out
    assert (tmp_path / "runs" / "r" / "model.keras").exists()
    assert json.loads((tmp_path / "runs" / "r" / "status.json").read_text())["status"] == "finished"


def test_a_continued_run_logs_each_step_once_and_keeps_changed_params_as_tags(tmp_path):
    from raytrain.run.tracking import Tracker

    uri, state = f"sqlite:///{tmp_path}/m.db", str(tmp_path / "run" / "mlflow.json")
    first = Tracker(uri, "e", print)
    first.start("run", state, "r", {"training.epochs": "2", "training.batch_size": "8"}, {})
    first.metrics("run", {"loss": 1.0}, 1)
    first.metrics("run", {"loss": 0.9}, 2)
    assert first.flush(force=True)
    again = Tracker(uri, "e", print)  # a resumed run, or a restart that trains epoch 2 again
    again.start("run", state, "r", {"training.epochs": "4", "training.batch_size": "8", "new.key": "x"}, {})
    again.metrics("run", {"loss": 0.8}, 2)
    again.metrics("run", {"loss": 0.7}, 3)
    assert again.flush(force=True)
    assert again.runs["run"] == first.runs["run"]
    c = client(uri)
    assert history(c, first.runs["run"], "loss") == [(1, 1.0), (2, 0.9), (3, 0.7)]
    found = c.get_run(first.runs["run"]).data
    assert found.params == {"training.epochs": "2", "training.batch_size": "8", "new.key": "x"}
    assert found.tags["resumed.training.epochs"] == "4"


@pytest.mark.ray
def test_a_search_is_a_parent_run_with_a_child_per_trial(server, tmp_path, make_h5):
    data = make_h5("d.h5", samples=256)
    proc = run_cli("tune", "--data", data, "--epochs", "1", "--batch-size", "32", "--name", "s",
                   "--storage-path", "runs", "--search", "model.learning_rate=grid(0.01,0.001)",
                   "--mlflow", server, "--mlflow-experiment", "search", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    search_dir = tmp_path / "runs" / "s"
    parent = run_id(search_dir)
    c = client(server)
    found = c.get_run(parent)
    assert found.info.status == "FINISHED"
    assert found.data.params["search.model.learning_rate"] == "grid(0.01, 0.001)"
    best = json.loads((search_dir / "best.json").read_text())
    assert found.data.tags["raytrain.best_trial"] == best["name"]
    assert found.data.metrics["best_val_accuracy"] == pytest.approx(best["best"])
    assert {"best_model.keras", "trials.txt", "best.json", "report.png"} <= {a.path for a in c.list_artifacts(parent)}
    children = c.search_runs([found.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in children) == ["trial_00000", "trial_00001"]
    for child in children:
        trial_dir = search_dir / child.info.run_name
        assert child.info.status == "FINISHED"
        saved = yaml.safe_load((trial_dir / "job.yaml").read_text())
        assert child.data.params["model.learning_rate"] == str(saved["model"]["learning_rate"])
        assert history(c, child.info.run_id, "val_accuracy") == [
            (e["epoch"], pytest.approx(e["val_accuracy"])) for e in metrics_jsonl(trial_dir)]
        assert {"model.keras", "summary.json"} <= {a.path for a in c.list_artifacts(child.info.run_id)}


def test_mlflow_not_installed_is_one_line_naming_the_extra(jax_python, tmp_path, make_h5):
    proc = run_cli("train", "--data", make_h5("d.h5", samples=64), "--local", "--mlflow", cwd=str(tmp_path),
                   python=jax_python)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--mlflow needs MLflow, which is not installed here; pip install 'raytrain[mlflow]'" in proc.stderr
    assert "Traceback" not in proc.stderr
