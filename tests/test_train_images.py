"""Training on image files: 2 Ray workers on a class-folder tree, and bad files under both policies."""

import json
import os

import pytest

from raytrain.data.synth import make_image_tree
from tests.common import run_cli

pytestmark = pytest.mark.ray


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_workers_learn_from_an_index_of_mixed_formats(tmp_path):
    tree = str(tmp_path / "tree")
    make_image_tree(tree, 480, (40, 40), classes=4, formats=("jpg", "png", "bmp", "gif"))
    index = str(tmp_path / "tree.parquet")
    assert run_cli("index", tree, "--out", index, cwd=str(tmp_path)).returncode == 0
    proc = run_cli("train", "--manifest", index, "--image-size", "24,24", "--num-workers", "2",
                   "--batch-size", "32", "--epochs", "4", "--learning-rate", "0.003",
                   "--name", "img", "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "img"
    epochs = metrics(run)
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["val_accuracy"] > 0.5  # chance is 0.25
    ranks = [json.loads(p.read_text()) for p in sorted((run / "workers").glob("rank-*.json"))]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["train_shard_samples"] + ranks[1]["train_shard_samples"] == 384
    meta = json.loads((run / "dataset.json").read_text())
    assert meta["class_names"] == ["class0", "class1", "class2", "class3"]
    assert meta["sample_shape"] == [24, 24, 3]


@pytest.fixture
def tree_with_a_bad_file(tmp_path):
    tree = str(tmp_path / "tree")
    paths = make_image_tree(tree, 96, (16, 16), classes=2)
    bad = paths[5]
    with open(bad, "r+b") as f:  # a truncated JPEG
        f.truncate(os.path.getsize(bad) // 2)
    return tree, bad


def test_bad_file_stops_a_run_with_one_line(tmp_path, tree_with_a_bad_file):
    tree, bad = tree_with_a_bad_file
    proc = run_cli("train", "--directory", tree, "--image-size", "16,16", "--local", "--batch-size", "16",
                   "--epochs", "1", "--validation-ratio", "0", "--name", "err",
                   "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("raytrain: error:")]
    assert len(errors) == 1 and f"image {bad} cannot be decoded" in errors[0] and "on_bad_sample" in errors[0]
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "runs" / "err" / "job.yaml").exists()  # what was written stays


def test_skip_trains_without_the_bad_file_and_reports_it(tmp_path, tree_with_a_bad_file):
    tree, bad = tree_with_a_bad_file
    proc = run_cli("train", "--directory", tree, "--image-size", "16,16", "--local", "--batch-size", "16",
                   "--epochs", "2", "--validation-ratio", "0", "--on-bad-sample", "skip", "--name", "skip",
                   "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "skip"
    assert len(metrics(run)) == 2
    assert (run / "skipped_files.txt").read_text().startswith(f"{bad}\tcannot be decoded")
    assert "skipped       1 bad files" in proc.stdout
    assert proc.stdout.count(f"skipped bad image {bad}") == 1  # once, not once per epoch
