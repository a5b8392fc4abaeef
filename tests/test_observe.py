"""What a person watching sees: a live bar on a terminal, TensorBoard scalars, report.png, raytrain runs."""

import hashlib
import json
import os
import pty
import shutil
import subprocess
import sys

import numpy as np
import pytest

from raytrain.data.synth import make_image_tree
from raytrain.run.progress import ProgressPrinter, render_bar, step_message
from tests.common import ROOT, run_cli


def run_in_terminal(*args, cwd):
    """Run the CLI with a pseudo-terminal as stdout/stderr; return (exit code, everything it wrote)."""
    main, child = pty.openpty()
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "raytrain", *args], cwd=cwd, env=env, stdout=child, stderr=child)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    return proc.wait(timeout=600), out.decode(errors="replace")


def test_bar_shows_steps_eta_metrics_and_throughput():
    line = render_bar(step_message(2, 5, 30, 120, {"loss": 0.5, "accuracy": 0.75}, 30 * 64, 3.0))
    assert line.startswith("epoch 2/5 [") and "30/120" in line and "ETA 0:09" in line
    assert "loss 0.5000  accuracy 0.7500" in line and "640 samples/s" in line


def test_non_terminal_output_is_one_line_per_epoch(tmp_path):
    import io

    out = io.StringIO()
    printer = ProgressPrinter(sink=None, out=out, tty=False)
    printer.show([step_message(1, 2, 5, 10, {"loss": 1.0}, 320, 1.0), {"kind": "epoch", "line": "epoch 1/2  a"},
                  step_message(2, 2, 5, 10, {"loss": 0.5}, 320, 1.0), {"kind": "note", "text": "restored"},
                  {"kind": "epoch", "line": "epoch 2/2  b"}])
    assert out.getvalue() == "epoch 1/2  a\nrestored\nepoch 2/2  b\n"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A local run on a terminal (module-scoped: several tests read it)."""
    tmp = tmp_path_factory.mktemp("observe")
    from raytrain.data.synth import make_hdf5

    make_hdf5(str(tmp / "d.h5"), 1200, (16, 16, 3), classes=3)
    code, out = run_in_terminal("train", "--data", str(tmp / "d.h5"), "--local", "--epochs", "3", "--batch-size", "16",
                                "--log-every-steps", "20", "--name", "ok", "--storage-path", str(tmp / "runs"), cwd=str(tmp))
    assert code == 0, out[-3000:]
    return tmp, out


@pytest.mark.ray
def test_terminal_shows_a_live_bar_and_each_epoch_once(finished_run):
    _, out = finished_run
    assert "\r" in out and "ETA" in out and "samples/s" in out
    for epoch in (1, 2, 3):
        assert sum(line.startswith(f"epoch {epoch}/3  loss") for line in out.replace("\r", "\n").splitlines()) == 1
    assert "cuInit" not in out and "cudart" not in out and "INFO" not in out  # start-up noise stays hidden


@pytest.mark.ray
def test_tensorboard_scalars_read_back(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, _ = finished_run
    board = tmp / "runs" / "ok" / "tensorboard"
    train = EventAccumulator(str(board / "train"), size_guidance={"tensors": 0})
    train.Reload()
    tags = set(train.Tags()["tensors"])
    assert {"epoch_loss", "epoch_accuracy", "epoch_samples_per_s", "epoch_data_wait_fraction", "batch_loss"} <= tags
    assert [e.step for e in train.Tensors("epoch_loss")] == [1, 2, 3]
    steps_per_epoch = json.loads((tmp / "runs" / "ok" / "dataset.json").read_text())["plan"]["train_steps"]
    assert [e.step for e in train.Tensors("batch_loss")] == list(range(20, 3 * steps_per_epoch + 1, 20))
    metrics = [json.loads(line) for line in (tmp / "runs" / "ok" / "metrics.jsonl").read_text().splitlines()]
    import tensorflow as tf

    logged = [float(tf.make_ndarray(e.tensor_proto)) for e in train.Tensors("epoch_loss")]
    np.testing.assert_allclose(logged, [m["loss"] for m in metrics], rtol=1e-6)
    validation = EventAccumulator(str(board / "validation"), size_guidance={"tensors": 0})
    validation.Reload()
    assert [e.step for e in validation.Tensors("epoch_accuracy")] == [1, 2, 3]


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@pytest.mark.ray
def test_report_draws_the_run(finished_run, tmp_path):
    tmp, _ = finished_run
    run = tmp / "runs" / "ok"
    proc = run_cli("report", str(run), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "epoch" in proc.stdout and "val_accuracy" in proc.stdout and f"report: {run}/report.png" in proc.stdout
    assert png_size(run / "report.png")[0] >= 600 and os.path.getsize(run / "report.png") > 20_000
    other = tmp_path / "other"  # the same run with different numbers draws a different picture
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("report*.png"))
    lines = [json.loads(line) for line in (other / "metrics.jsonl").read_text().splitlines()]
    (other / "metrics.jsonl").write_text("".join(json.dumps(dict(m, loss=m["loss"] * 3)) + "\n" for m in lines))
    assert run_cli("report", str(other), cwd=str(tmp_path)).returncode == 0
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(run / "report.png") != digest(other / "report.png")
    both = run_cli("report", str(run), str(other), cwd=str(tmp_path))
    assert both.returncode == 0 and (run / "report-vs-other.png").exists()
    bad = run_cli("report", str(tmp_path / "nothing"), cwd=str(tmp_path))
    assert bad.returncode == 2 and "is not a raytrain run" in bad.stderr


@pytest.mark.ray
def test_runs_lists_finished_and_failed_runs(finished_run):
    tmp, _ = finished_run
    tree = str(tmp / "tree")
    paths = make_image_tree(tree, 64, (16, 16), classes=2)
    with open(paths[3], "r+b") as f:
        f.truncate(100)
    failed = run_cli("train", "--directory", tree, "--image-size", "16,16", "--local", "--batch-size", "16",
                     "--validation-ratio", "0", "--name", "bad", "--storage-path", str(tmp / "runs"), cwd=str(tmp))
    assert failed.returncode == 2
    proc = run_cli("runs", str(tmp / "runs"), cwd=str(tmp))
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:]}
    assert rows["ok"][1:4] == ["finished", "3/3", "val_accuracy"] and rows["ok"][5] == "local"
    assert rows["bad"][1:3] == ["failed", "0/5"]
