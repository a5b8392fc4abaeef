"""Bad input reaches the terminal as one line naming the problem and the fix, with exit code 2."""

import os

import numpy as np
import pytest

from tests.common import run_cli, write_h5


def assert_user_error(proc, message):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("raytrain: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture
def good(make_h5):
    return make_h5("good.h5", samples=40)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "missing.h5"], "does not exist"),
        (["--data", "{good}", "--y-key", "labels"], "has no dataset 'labels'"),
        (["--data", "{good}", "--batch-size", "1", "--num-workers", "2"], "smaller than the 2 workers"),
        (["--data", "{good}", "--num-workers", "3", "--cpus-per-worker", "0.5", "--batch-size", "3",
          "--validation-ratio", "0", "--storage-path", "{tmp}/r"], None),
        (["--data", "{good}", "--model", "resnet9000"], "unknown built-in model 'resnet9000'"),
        (["--data", "{good}", "--model", "nofile.py:build"], "does not exist"),
        (["--data", "{good}", "--model", "{good_dir}/m.py:nothing"], "has no function 'nothing'"),
        (["{tmp}/bad_job.yaml"], "unknown keys ['epoch'] in section 'training'"),
        (["--data", "{good}", "--batch-size", "64"], "less than one global batch of 64"),
        (["--data", "{good}", "--num-workers", "5", "--batch-size", "10"],
         "5 workers do not divide the sample order's 24 partitions (data.partitions); use --num-workers 1 or 2 or 3 "
         "or 4 or 6 or 8 or 12 or 24, or set --partitions to a multiple of 5"),
        (["--data", "{good}", "--num-workers", "3..2"],
         "scaling.min_workers 3 is above num_workers 2; an elastic range is --num-workers MIN..MAX with MIN <= MAX"),
        (["--data", "{good}", "--num-workers", "2..8", "--batch-size", "64"],
         "training.batch_size 64 (global) does not divide evenly over 3, 5, 6 and 7 workers (1 replica each) of "
         "--num-workers 2..8; the global batch sizes that fit the whole range are the multiples of 840: use "
         "--batch-size 840, or narrow the range"),
        (["--data", "{good}", "--num-workers", "2..5", "--partitions", "24", "--batch-size", "60"],
         "--num-workers 2..5: 5 workers do not divide the sample order's 24 partitions (data.partitions); use "
         "--partitions 120 (or 0 = auto)"),
        (["--data", "{good}", "--num-workers", "two"], "--num-workers must be a number of workers (4) or an elastic "
         "range MIN..MAX (2..8)"),
        (["--mlflow", "{tmp}/bad_job.yaml"], "--mlflow took {tmp}/bad_job.yaml as its tracking URI; put --mlflow "
         "after the job file"),
        (["--data", "{good}", "--mlflow", "mlruns"], "run.mlflow must be true or a tracking URI"),
        (["--data", "{good}", "--mlflow", "foo://x"], "--mlflow foo://x: MLflow cannot use it"),
        (["--data", "{good}", "--storage-path", "s3://bucket/runs", "--mlflow"], "SQLite needs a local folder"),
        (["--data", "{good}", "--cache-dir", "{good}/cache"], "is a file, not a folder; pass a folder with --cache-dir"),
        (["--data", "{good}", "--num-workers", "2..100", "--batch-size", "100"],
         "a global batch that fits every count in it is a multiple of a 41-digit number: the range is too wide; with "
         "--batch-size 100 use the elastic ranges 1..2 and 4..5 or a fixed --num-workers 1 or 2 or 4 or 5 or 10 or 20 "
         "or 25 or 50 or 100"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, good, args, message):
    (tmp_path / "bad_job.yaml").write_text("training:\n  epoch: 3\n")
    (tmp_path / "m.py").write_text("def build(input_shape, num_classes):\n    pass\n")
    args = [a.format(good=good, tmp=tmp_path, good_dir=os.path.dirname(good)) for a in args]
    if message is None:  # more workers than samples: a 2-sample file on 3 workers (half a CPU each)
        args[1] = write_h5(str(tmp_path / "two.h5"), np.zeros((2, 2, 2, 1)), np.array([0, 1]))
        message = "2 training samples make less than one global batch of 3"
    message = message.format(tmp=tmp_path)
    assert_user_error(run_cli("train", *args, cwd=str(tmp_path), MLFLOW_TRACKING_URI=""), message)


@pytest.mark.parametrize(
    "x, y, count, message",
    [
        (np.zeros((5, 4, 4, 1)), np.arange(4) % 2, None, "has 5 samples but 'Y' has 4"),
        (np.zeros((5, 4, 4, 1)), np.arange(5) % 2, 7, "sample_count=7"),
        (np.zeros((0, 4, 4, 1)), np.zeros(0, np.int64), None, "the dataset is empty"),
    ],
)
def test_bad_hdf5_content(tmp_path, x, y, count, message):
    path = write_h5(str(tmp_path / "bad.h5"), x, y, sample_count=count)
    assert_user_error(run_cli("train", "--data", path, cwd=str(tmp_path)), message)


@pytest.mark.slow
def test_model_that_does_not_fit_the_data_fails_before_workers_start(tmp_path, make_h5):
    clips = make_h5("clips.h5", samples=64, shape=(4, 1, 8, 8), classes=2)
    proc = run_cli("train", "--data", clips, "--model", "cnn", "--num-workers", "2", "--batch-size", "8",
                   "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
    assert_user_error(proc, "model 'cnn' takes images of shape (H, W, C)")


def test_existing_run_is_never_overwritten(tmp_path, good):
    run_dir = tmp_path / "runs" / "kept"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    proc = run_cli("train", "--data", good, "--batch-size", "8", "--name", "kept", "--storage-path", str(tmp_path / "runs"),
                   cwd=str(tmp_path))
    assert_user_error(proc, "already holds a run")
    assert (run_dir / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


@pytest.mark.parametrize(
    "flags, message, fix",
    [
        (["--num-workers", "3", "--cpus-per-worker", "1"], "--num-workers 3 needs 3 CPUs (1 per worker) but this machine has 2 CPUs",
         "--cpus-per-worker"),
        (["--num-workers", "1", "--gpus-per-worker", "1"], "--num-workers 1 needs 1 GPUs (1 per worker) but this machine has 0 GPUs",
         "--gpus-per-worker"),
    ],
)
def test_more_resources_than_the_machine_fails_fast_before_ray_starts(tmp_path, good, flags, message, fix):
    ray_temp = tmp_path / "ray"  # where a local Ray started by this command would put its session
    proc = run_cli("train", "--data", good, *flags, "--batch-size", "3", "--storage-path", str(tmp_path / "runs"),
                   cwd=str(tmp_path), timeout=180, RAY_TMPDIR=str(ray_temp))
    assert_user_error(proc, message)
    assert fix in proc.stderr
    assert not ray_temp.exists(), "Ray started before the check"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("metrics.jsonl"))


@pytest.mark.ray
def test_the_count_before_ray_starts_is_what_a_local_ray_finds(monkeypatch):
    import ray

    from raytrain.trainer import machine_resources

    counted = machine_resources()
    ray.init(address="local", include_dashboard=False)
    try:
        have = ray.cluster_resources()
    finally:
        ray.shutdown()
    assert counted == {"CPU": have.get("CPU", 0), "GPU": have.get("GPU", 0)}
    monkeypatch.setenv("RAY_OVERRIDE_RESOURCES", '{"CPU": 64}')  # Ray's own override counts, as in ray.init
    assert machine_resources() == {**counted, "CPU": 64}


def test_help_is_instant_and_lists_subcommands(tmp_path):
    proc = run_cli("--help", cwd=str(tmp_path))
    assert proc.returncode == 0 and "train" in proc.stdout and "synth" in proc.stdout


HEAVY = ("tensorflow", "tf_keras", "ray", "h5py", "pyarrow", "cv2", "simplejpeg", "matplotlib")


def test_help_loads_no_heavy_library():
    """Building the parser and printing every command's --help imports none of the frameworks or readers."""
    import subprocess
    import sys

    code = (
        "import contextlib, io, sys\n"
        "from raytrain.cli import build_parser\n"
        "parser = build_parser()\n"
        "commands = next(a for a in parser._actions if a.dest == 'command').choices\n"
        "assert len(commands) >= 10, sorted(commands)\n"
        "for name in ['', *commands]:\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        parser.parse_args([name, '--help'] if name else ['--help'])\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"--help loaded {proc.stdout.strip()}"


def test_plugin_compressed_hdf5_trains_and_an_undecodable_first_block_is_one_line(tmp_path):
    """Blosc (hdf5plugin) trains; a filter no plugin provides, and a damaged gzip chunk, are
    one line each naming the file, found when the driver decodes each file's first block."""
    import h5py
    import hdf5plugin

    from tests.common import unknown_filter_h5

    x = np.random.default_rng(0).integers(0, 255, (200, 4, 4, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "blosc.h5", "w") as f:
        f.create_dataset("X", data=x, chunks=(16, 4, 4, 3), **hdf5plugin.Blosc(cname="lz4"))
        f.create_dataset("Y", data=np.arange(200) % 2)
    proc = run_cli("train", "--data", str(tmp_path / "blosc.h5"), "--local", "--epochs", "1", "--batch-size", "32",
                   "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
    assert proc.returncode == 0 and "finished 1 epochs" in proc.stdout, proc.stderr[-3000:]

    with h5py.File(tmp_path / "damaged.h5", "w") as f:
        d = f.create_dataset("X", data=x, chunks=(16, 4, 4, 3), compression="gzip")
        d.id.write_direct_chunk((0, 0, 0, 0), b"not deflate", 0)
        f.create_dataset("Y", data=np.arange(200) % 2)
    odd = unknown_filter_h5(str(tmp_path / "odd.h5"))
    for path, filters in ((str(tmp_path / "damaged.h5"), "deflate"), (odd, "filter 32999")):
        proc = run_cli("train", "--data", path, "--local", cwd=str(tmp_path))
        assert_user_error(proc, f"samples of 'X' (filters: {filters}) cannot be decoded")
        assert f"raytrain: error: {path}: the first " in proc.stderr
