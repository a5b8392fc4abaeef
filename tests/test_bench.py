import json

import pytest

from raytrain.data.synth import make_hdf5
from tests.common import run_cli

ROWS = [
    "raytrain loader: shuffled epoch",
    "tutorial: sorted random indices per batch",
    "one sample at a time",
    "sequential read in 16 MiB slices",
    "`raytrain train --local`",
    "in-memory `tf_keras` fit",
    "loader peak RSS:",
    "the same loader reading and batching only, without the feed",
    "loader reading (without the feed) >= 0.5x sequential read",
    "loader >= 30x tutorial pattern",
    "raytrain --local epoch <= 1.15x in-memory fit",
    "loader peak RSS grows < 10% for a 4x file",
]


@pytest.mark.ray
def test_bench_prints_every_row_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli(
        "bench", "--samples", "256", "--shape", "8,8,3", "--chunk-rows", "16", "--batch-size", "16",
        "--epochs", "1", "--budget", "0.5", "--workdir", str(tmp_path / "work"), "--out", str(out),
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for row in ROWS:
        assert row in proc.stdout, f"missing row {row!r} in:\n{proc.stdout}"
    result = json.loads(out.read_text())
    assert result["data"]["samples"] == 256 and result["machine"]["cpus"] >= 1
    for name in ("loader", "loader_x4", "tutorial", "one_at_a_time", "sequential"):
        assert result["readers"][name]["samples_per_s"] > 0
    assert result["readers"]["loader"]["samples"] == 256  # a whole epoch: 16 batches of 16
    assert result["readers"]["loader_x4"]["samples"] == 4 * 256
    assert result["readers"]["loader"]["peak_rss_bytes"] > 10 << 20
    e = result["end_to_end"]
    assert e["raytrain_epoch_s"] > 0 and e["in_memory_epoch_s"] > 0
    assert 0 <= e["raytrain_data_wait_fraction"] <= 1
    assert set(result["bars"]) == {"loader_vs_sequential", "loader_vs_tutorial", "epoch_vs_in_memory", "rss_growth"}


@pytest.mark.slow
def test_workers_bench_times_the_in_memory_fit_between_epoch_ends(tmp_path):
    """bench --workers compares marginal epochs, the gaps between consecutive epoch ends,
    in every row: the in-memory fit's gaps hold its epochs and what fit does between them."""
    from raytrain.bench.hdf5 import in_memory_child
    from raytrain.bench.workers import _marginal

    path = str(tmp_path / "tiny.h5")
    make_hdf5(path, 64, (8, 8, 1), classes=2)
    got = in_memory_child({"path": path, "x_key": "X", "y_key": "Y", "batch": 16, "epochs": 3})
    ends, times = got["epoch_ends"], got["epoch_times_s"]
    assert len(ends) == len(times) == 3
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    assert all(gap >= own for gap, own in zip(gaps, times[1:]))
    assert _marginal(ends) == pytest.approx(sum(gaps) / 2)


def test_a_row_of_several_rounds_shows_the_median_of_each_timing():
    from raytrain.bench.workers import _median_row

    rounds = [{"marginal_epoch_s": m, "steps_s": s, "steps_per_epoch": 312} for m, s in ((12.0, 11.0), (30.0, 9.0),
                                                                                           (11.0, 10.5))]
    assert _median_row(rounds) == {"marginal_epoch_s": 12.0, "steps_s": 10.5, "steps_per_epoch": 312}
    assert rounds[0]["marginal_epoch_s"] == 12.0  # the rounds stay as they were (they go to the JSON)


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.h5"], "bench file missing.h5 does not exist"),
        (["--batch-size", "0"], "bench needs --batch-size >= 1"),
        (["--samples", "10", "--batch-size", "32"], "--samples >= 2 x batch size"),
        (["--workers", "0"], "bench --workers needs --workers >= 1"),
        (["--workers", "2", "--epochs", "2"], "--epochs >= 3 (marginal epochs need two gaps after the first)"),
        (["--workers", "2", "--batch-size", "33"], "a --batch-size that divides over the workers"),
        (["--workers", "2", "--repeats", "0"], "--repeats >= 1. Received: workers=2, epochs=4, batch_size=64"),
        (["--store", "ftp://host/x"], "bench --store takes local"),
        (["--store", "--shards", "0"], "1 <= --shards <= samples / batch size"),
    ],
)
def test_bench_bad_input_is_one_line(tmp_path, args, message):
    proc = run_cli("bench", *args, cwd=str(tmp_path))
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


IMAGE_ROWS = [
    "raytrain image loader (",
    "tf.data: list_files -> map(read, decode_jpeg, resize), AUTOTUNE",
    "Ray Data: read_images -> iter_batches",
    "tutorial pattern, one file at a time, raytrain's decoder, 1 thread",
    "tutorial as written: skimage imread + resize, 1 thread",
    "image loader >= 1.0x tf.data",
    "image loader >= 3x tutorial",
]


@pytest.mark.ray
def test_images_bench_prints_every_row_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli(
        "bench", "--images", "--samples", "96", "--shape", "40,40", "--image-size", "24,24", "--batch-size", "16",
        "--budget", "0.5", "--workdir", str(tmp_path / "work"), "--out", str(out), cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for row in IMAGE_ROWS:
        assert row in proc.stdout, f"missing row {row!r} in:\n{proc.stdout}"
    result = json.loads(out.read_text())
    assert result["kind"] == "images" and result["data"]["images"] == 96
    for name in ("loader", "tf_data", "ray_data", "tutorial", "tutorial_opencv"):
        assert result["readers"][name]["samples_per_s"] > 0
    assert result["readers"]["loader"]["samples"] == 96  # a whole epoch: 6 batches of 16
    assert result["readers"]["tf_data"]["samples"] == 96 and result["readers"]["ray_data"]["samples"] == 96
    assert set(result["bars"]) == {"loader_vs_tf_data", "loader_vs_tutorial"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--images", "nowhere"], "bench --images folder nowhere does not exist"),
        (["--images", "--shape", "8,8,3"], "--shape H,W"),
        (["--images", "--decode-threads", "-1"], "--decode-threads >= 0"),
    ],
)
def test_images_bench_bad_input_is_one_line(tmp_path, args, message):
    proc = run_cli("bench", *args, cwd=str(tmp_path))
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_store_bench_prints_every_row_and_writes_json(tmp_path):
    """moto's server and the delaying proxy are started, measured through and stopped."""
    out = tmp_path / "store.json"
    proc = run_cli("bench", "--store", "--samples", "256", "--shape", "8,8,3", "--chunk-rows", "16", "--shards", "2",
                   "--batch-size", "16", "--delay-ms", "5", "--workdir", str(tmp_path / "work"), "--out", str(out),
                   cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for row in ("sequential download of every object", "raytrain loader: shuffled epoch", "5 ms added to every request",
                "epoch 2 from the node cache", "on local disk", "ranged requests per window:",
                "loader >= 0.8x one sequential download", "the same images from the store",
                "the store, with --cache-dir", "a training epoch from the node cache"):
        assert row in proc.stdout, f"missing row {row!r} in:\n{proc.stdout}"
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert result["samples"] == 256 and result["objects"] == 2
    assert all(rows[k]["samples_per_s"] > 0 for k in ("download", "loader", "delayed", "cache_epoch_2", "local_disk"))
    assert rows["cache_epoch_2"]["requests"] == 0  # epoch 2 read the node cache only
    assert all(result["images"][k]["samples_per_s"] > 0 for k in ("local_disk", "store", "delayed"))
    assert 1 <= rows["loader"]["requests_per_window"] <= rows["loader"]["blocks_per_window"]
    assert all(len(rows[k]["epochs_s"]) == 4 and rows[k]["epoch_s"] > 0 for k in ("train_local_disk", "train_cache"))
    assert set(result["bars"]) == {"loader_vs_download", "requests_over_blocks", "delay_vs_no_delay",
                                   "cache_vs_local_disk", "train_cache_vs_local_disk"}


@pytest.mark.ray
def test_the_recipe_rows_split_each_epoch_into_steps_and_boundary(tmp_path):
    """Ray Train's recipe, run for real with 2 workers on a tiny file: every epoch's steps
    fit inside its gap; fit splits to_tf's batch of 32 over the 2 replicas, so each
    worker's 64 samples take 4 steps."""
    from raytrain.bench.workers import recipe_child

    path = str(tmp_path / "tiny.h5")
    make_hdf5(path, 128, (8, 8, 1), classes=2)
    got = recipe_child({"path": path, "workers": 2, "to_tf_batch": 32, "epochs": 2, "storage": str(tmp_path / "ray")})
    ends = got["epoch_ends"]
    assert len(ends) == 2 and got["steps_per_epoch"] == 128 // 32
    # Each epoch's steps against its own gap: a median over epochs may exceed the shortest gap.
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    assert all(0 < steps <= gap for steps, gap in zip(got["epochs_steps_s"][1:], gaps)), (got, gaps)
    assert got["steps_s"] > 0
