"""Data in object storage, against a real S3-protocol server on 127.0.0.1 (moto's standalone server)."""

from __future__ import annotations

import os
import socket

import h5py
import numpy as np
import pyarrow.fs as pafs
import pytest

from raytrain.config import DataSection
from raytrain.data.cache import NodeCache
from raytrain.data.hdf5_index import build_hdf5_index
from raytrain.data.hdf5_loader import HDF5Loader
from raytrain.data.hdf5_remote import RemoteHDF5Reader
from raytrain.data.loader import ReadSpec
from raytrain.data.shard import Shard
from raytrain.errors import RaytrainError
from tests.common import free_port

pytestmark = pytest.mark.slow  # every test here talks to moto's S3 server, which this module starts

BUCKET = "raytrain-test"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


class S3:
    """The running server: its endpoint and a client to put objects with."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.fs = pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True, region="us-east-1",
                                    access_key="testing", secret_key="testing")
        self.fs.create_dir(BUCKET)

    def put(self, local: str, key: str) -> str:
        pafs.copy_files(local, f"{BUCKET}/{key}", destination_filesystem=self.fs)
        return f"s3://{BUCKET}/{key}"

    def put_bytes(self, data: bytes, key: str) -> str:
        with self.fs.open_output_stream(f"{BUCKET}/{key}") as f:
            f.write(data)
        return f"s3://{BUCKET}/{key}"


@pytest.fixture(scope="module")
def s3():
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in [*AWS_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(AWS_ENV, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    try:
        yield S3(f"http://127.0.0.1:{port}")
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _clips(path: str, n: int = 90, compression: str | None = "gzip") -> tuple[np.ndarray, np.ndarray]:
    """5-D uint8 clips whose first value is the sample id (mod 256), chunked 8 rows, gzip + shuffle."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (n, 3, 2, 6, 5), dtype=np.uint8)
    y = np.arange(n) % 3
    import hdf5plugin

    plugins = {"blosc": hdf5plugin.Blosc(cname="zstd", shuffle=hdf5plugin.Blosc.SHUFFLE),
               "bitshuffle": hdf5plugin.Bitshuffle(cname="lz4"), "zstd": hdf5plugin.Zstd(), "lz4": hdf5plugin.LZ4()}
    how = plugins.get(compression) or {"compression": compression, "shuffle": compression is not None}
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=x, chunks=(8, 3, 2, 6, 5), **how)
        f.create_dataset("Y", data=y)
    return x, y


def _read_all(index, data: DataSection) -> np.ndarray:
    """Every sample of the index in sample-id order, through the loader's reader."""
    shard = Shard(index.table, index.rows_per_block)
    spec = ReadSpec(data, index.sample_shape, index.dtype, index.rows_per_block, 16, 1)
    loader = HDF5Loader.open(spec, shard, 0, 0, print)
    try:
        got = np.empty((len(shard), *index.sample_shape), np.dtype(index.dtype))
        for i in range(0, len(shard), 20):  # several windows, so prefetch runs
            j = min(i + 20, len(shard))
            if hasattr(loader.reader, "prefetch") and j < len(shard):
                loader.reader.prefetch(shard.file_codes[j : j + 20], shard.rows[j : j + 20])
            loader.reader.read_sorted(shard.file_codes[i:j], shard.rows[i:j], got[i:j])
        return got
    finally:
        loader.close()


@pytest.mark.parametrize("compression", ["gzip", None])
def test_hdf5_from_s3_reads_the_same_samples_as_the_local_file(s3, tmp_path, compression):
    x, y = _clips(str(tmp_path / "a.h5"), compression=compression)
    x2, y2 = _clips(str(tmp_path / "b.h5"), n=21, compression=compression)
    s3.put(str(tmp_path / "a.h5"), f"{compression}/clips/a.h5")
    s3.put(str(tmp_path / "b.h5"), f"{compression}/clips/b.h5")
    s3.put_bytes(b"not me", f"{compression}/clips/notes.txt")
    index = build_hdf5_index([f"s3://{BUCKET}/{compression}/clips/*.h5"])
    assert index.table.column("file").unique().to_pylist() == [f"s3://{BUCKET}/{compression}/clips/a.h5",
                                                               f"s3://{BUCKET}/{compression}/clips/b.h5"]
    assert index.table.column("label").to_pylist() == [*y.tolist(), *y2.tolist()]
    got = _read_all(index, DataSection(paths=[]))
    np.testing.assert_array_equal(got, np.concatenate([x, x2]))


def test_contiguous_hdf5_and_the_cache(s3, tmp_path):
    x = np.arange(40 * 12, dtype=np.float32).reshape(40, 12)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("X", data=x)  # contiguous
        f.create_dataset("Y", data=np.arange(40) % 2)
    uri = s3.put(str(tmp_path / "c.h5"), "contiguous/c.h5")
    index = build_hdf5_index([uri])
    data = DataSection(paths=[], cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(_read_all(index, data), x)
    cache = NodeCache(str(tmp_path / "cache"), 1 << 30)
    assert cache.size() >= x.nbytes  # every block was kept
    np.testing.assert_array_equal(_read_all(index, data), x)  # second pass from the cache


def test_requests_per_window_are_at_most_its_blocks(s3, tmp_path):
    _clips(str(tmp_path / "a.h5"), n=200)
    uri = s3.put(str(tmp_path / "a.h5"), "requests/a.h5")
    index = build_hdf5_index([uri])
    shard = Shard(index.table, {uri: 8})
    reader = RemoteHDF5Reader([uri], "X", {uri: 8})
    try:
        rows = np.sort(np.random.default_rng(1).choice(200, 60, replace=False))
        out = np.empty((60, *index.sample_shape), np.uint8)
        reader.read_sorted(shard.file_codes[rows], shard.rows[rows], out)
        blocks = len(np.unique(rows // 8))
        assert 1 <= reader.requests <= blocks
    finally:
        reader.close()


class _CountingCache(NodeCache):
    """A real node cache that counts whole-entry reads (each a new bytes object)."""

    gets = 0

    def get(self, key):
        self.gets += 1
        return super().get(key)


def test_part_of_a_cached_block_is_read_in_place(s3, tmp_path):
    """A training split holds part of each block: from the cache those rows are taken from a
    reused buffer, never a new copy of the entry (which made cached epochs 2x local disk)."""
    x, _ = _clips(str(tmp_path / "a.h5"), n=200, compression=None)
    uri = s3.put(str(tmp_path / "a.h5"), "partial/a.h5")
    cache = _CountingCache(str(tmp_path / "cache"), 1 << 30)
    reader = RemoteHDF5Reader([uri], "X", {uri: 16}, cache=cache)
    codes = np.zeros(200, np.int32)
    try:
        reader.read_sorted(codes, np.arange(200), np.empty_like(x))  # fills the cache
        rows = np.sort(np.random.default_rng(2).choice(200, 150, replace=False))
        out = np.empty((150, *x.shape[1:]), x.dtype)
        before, gets = reader.requests, cache.gets
        reader.read_sorted(codes[:150], rows, out)
        np.testing.assert_array_equal(out, x[rows])
        assert (reader.requests, cache.gets) == (before, gets)
    finally:
        reader.close()


def test_cache_evicts_the_least_recently_used(tmp_path):
    cache = NodeCache(str(tmp_path / "c"), 2000)
    for i in range(4):
        cache.put(f"k{i}", bytes(300))
        os.utime(cache._path(f"k{i}"), (i, i))  # k0 oldest
    cache.get("k0")  # used again: now the newest
    cache.max_bytes = 1000
    cache.evict()
    assert cache.get("k0") is not None and cache.get("k1") is None and cache.size() <= 900


@pytest.mark.parametrize("what, expected", [
    ("s3://no-such-bucket-zz/x.h5", "the bucket of s3://no-such-bucket-zz/x.h5 (no-such-bucket-zz) does not exist"),
    (f"s3://{BUCKET}/nothing/*.h5", "matches no object"),
    (f"s3://{BUCKET}/nothing/x.h5", "does not exist; check data.paths"),
])
def test_missing_data_in_the_store_is_one_line(s3, what, expected):
    with pytest.raises(RaytrainError) as e:
        build_hdf5_index([what])
    assert expected in str(e.value)


def test_an_object_that_is_not_hdf5_is_named(s3):
    uri = s3.put_bytes(b"hello, not hdf5" * 100, "bad/x.h5")
    with pytest.raises(RaytrainError, match="is not a readable HDF5 file"):
        build_hdf5_index([uri])


def test_an_unreachable_endpoint_is_one_line_after_a_bounded_retry(tmp_path):
    port = free_port()  # nothing listens there
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", **AWS_ENV)
    proc = run_cli_env(env, "train", "--data", "s3://bucket-x/a.h5", "--local", cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "cannot reach the endpoint" in proc.stderr, proc.stderr
    assert not os.listdir(tmp_path / "runs") if os.path.exists(tmp_path / "runs") else True  # no run was begun


def run_cli_env(env, *args, cwd):
    import subprocess
    import sys

    from tests.common import ROOT
    return subprocess.run([sys.executable, "-m", "raytrain", *args], cwd=cwd, env=dict(env, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=300)


# ---- training from the store with 2 real Ray workers, checked by what the model saw ----



def _train_and_check(tmp_path, source_flags, population_of, epochs=2, extra=(), workers=2):
    """Train ``workers`` Ray workers (0: --local) on the store with the recording model;
    check every epoch trained each training sample at most once, fewer than one global
    batch left out."""
    from raytrain.data.kinds import build_index
    from raytrain.data.split import split_index
    from tests.common import RECORDING_MODEL, check_epochs, read_records, run_cli

    record_dir = tmp_path / "records"
    record_dir.mkdir()
    (tmp_path / "recording.py").write_text(RECORDING_MODEL.format(record_dir=str(record_dir)))
    proc = run_cli("train", *source_flags, "--model", f"{tmp_path}/recording.py:build", "--num-workers", str(workers),
                   "--batch-size", "8", "--epochs", str(epochs), "--validation-ratio", "0.25", "--scale", "none",
                   "--name", "s3run", "--storage-path", str(tmp_path / "runs"), *extra, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    job = json.loads((tmp_path / "runs/s3run/dataset.json").read_text())
    plan = job["plan"]
    index = build_index(population_of)
    train, _ = split_index(index.table, 0.25, 0)
    ids = set(train.column("sample_id").to_pylist())
    trained = read_records(record_dir, "train")
    assert len(trained) == max(workers, 1)
    check_epochs(trained, steps=plan["train_steps"], worker_batch=plan["worker_batch"], epochs=epochs,
                 population=ids)
    return proc


@pytest.mark.ray
def test_two_workers_train_5d_clips_in_two_hdf5_files_from_s3_exactly_once_with_a_node_cache(s3, tmp_path):
    """Clips (frames, channels, rows, cols) in two gzip-chunked HDF5 objects matched by a
    glob; each worker reads its samples through the node cache. (Images are 4-D HDF5
    samples read by the same code; the local-mode S3 test trains on them.)"""
    for name, lo, n in (("part-0.h5", 0, 70), ("part-1.h5", 70, 50)):
        x = np.zeros((n, 2, 1, 4, 4), np.uint8)
        x[:, 0, 0, 0, 0] = np.arange(lo, lo + n)  # the sample id (ids < 256)
        with h5py.File(tmp_path / name, "w") as f:
            f.create_dataset("X", data=x, chunks=(8, 2, 1, 4, 4), compression="gzip", shuffle=True)
            f.create_dataset("Y", data=np.arange(lo, lo + n) % 3)
        s3.put(str(tmp_path / name), f"train/clips/{name}")
    uri = f"s3://{BUCKET}/train/clips/part-*.h5"
    cache = tmp_path / "node-cache"
    _train_and_check(tmp_path, ["--data", uri], DataSection(kind="hdf5", paths=[uri]),
                     extra=("--cache-dir", str(cache)))
    assert NodeCache(str(cache), 1 << 30).size() > 0


def test_local_mode_trains_from_s3_and_evaluate_reads_it_again(s3, tmp_path, make_h5):
    from tests.common import run_cli

    uri = s3.put(make_h5("small.h5", samples=96, shape=(8, 8, 3)), "local/small.h5")
    proc = run_cli("train", "--data", uri, "--local", "--epochs", "1", "--batch-size", "16", "--name", "loc",
                   "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli("evaluate", str(tmp_path / "runs" / "loc"), cwd=str(tmp_path))
    assert proc.returncode == 0 and "on 96 samples" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    other = s3.put(make_h5("other.h5", samples=48, shape=(8, 8, 3)), "local/other.h5")
    proc = run_cli("evaluate", str(tmp_path / "runs" / "loc"), "--data", other, cwd=str(tmp_path))  # a URI stays one
    assert proc.returncode == 0 and "on 48 samples" in proc.stdout and other in proc.stdout, proc.stdout + proc.stderr[-2000:]


def _upload_image_tree(s3, tmp_path, prefix, n=60):
    """PNG images whose first pixel is their sample id, in 2 class folders, sorted as the index sorts them."""
    from tests.common import write_image

    local = tmp_path / "tree"
    for i in range(n):
        cls = "a-cats" if i < n // 2 else "b-dogs"
        folder = local / cls
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.full((5, 5, 3), 200, np.uint8)
        pixels[0, 0, 0] = i
        write_image(str(folder / f"img{i:03d}.png"), pixels)
        s3.put(str(folder / f"img{i:03d}.png"), f"{prefix}/{cls}/img{i:03d}.png")
    return local


@pytest.mark.ray
def test_two_workers_train_class_folders_from_s3(s3, tmp_path):
    _upload_image_tree(s3, tmp_path, "photos")
    uri = f"s3://{BUCKET}/photos/"
    _train_and_check(tmp_path, ["--directory", uri, "--image-size", "5,5"],
                     DataSection(kind="images", directory=uri, image_size=[5, 5]))


@pytest.mark.ray
def test_local_mode_trains_a_parquet_manifest_in_s3(s3, tmp_path):
    """The manifest's paths are relative to its own folder in the store. Local mode: the
    workers' exactly-once reading of images from S3 is the class-folder test's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _upload_image_tree(s3, tmp_path, "listed/images")
    rows = [f"images/{'a-cats' if i < 30 else 'b-dogs'}/img{i:03d}.png" for i in range(60)]
    pq.write_table(pa.table({"path": rows, "label": ["cat" if i < 30 else "dog" for i in range(60)]}),
                   tmp_path / "train.parquet")
    uri = s3.put(str(tmp_path / "train.parquet"), "listed/train.parquet")
    _train_and_check(tmp_path, ["--manifest", uri, "--image-size", "5,5"],
                     DataSection(kind="images", manifest=uri, image_size=[5, 5]), workers=0)


def test_index_a_folder_in_s3_and_bad_image_sources_are_one_line(s3, tmp_path):
    from tests.common import run_cli

    _upload_image_tree(s3, tmp_path, "small", n=6)
    proc = run_cli("index", f"s3://{BUCKET}/small/", "--out", str(tmp_path / "idx.parquet"), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "idx.parquet")
    assert table.column("path").to_pylist()[0] == f"s3://{BUCKET}/small/a-cats/img000.png"
    assert table.column("label").to_pylist() == [0, 0, 0, 1, 1, 1]
    for flags, expected in (
        (["--directory", f"s3://{BUCKET}/nothing-here/"], "holds no class folders"),
        (["--manifest", f"s3://{BUCKET}/nothing.csv"], "manifest s3://raytrain-test/nothing.csv does not exist"),
        (["--directory", "s3://no-such-bucket-zz/photos/"], "(no-such-bucket-zz) does not exist"),
        (["--directory", "ftp://host/photos/"], "has the scheme ftp://"),
        (["--data", f"s3://{BUCKET}/a.h5", "--storage-options", "bogus=1"], "unknown keys ['bogus']"),
        (["--data", f"s3://{BUCKET}/a.h5,{tmp_path}/local.h5"], "mixes local files and URIs"),
    ):
        proc = run_cli("train", *flags, "--local", "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
        assert proc.returncode == 2 and expected in proc.stderr and proc.stderr.count("\n") == 1, (flags, proc.stderr)


def test_the_index_reads_metadata_and_labels_not_the_features(s3, tmp_path):
    from raytrain.data import hdf5_remote

    x = np.random.default_rng(0).integers(0, 255, (4000, 32, 32, 3), dtype=np.uint8)  # 12 MB of features
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.create_dataset("X", data=x, chunks=(64, 32, 32, 3))
        f.create_dataset("Y", data=np.arange(4000) % 5)
    uri = s3.put(str(tmp_path / "big.h5"), "meta/big.h5")
    before = hdf5_remote.FETCHED[0]
    index = build_hdf5_index([uri])
    assert len(index.table) == 4000 and index.num_classes == 5
    fetched = hdf5_remote.FETCHED[0] - before
    assert fetched <= 2 * hdf5_remote.META_BLOCK_BYTES < x.nbytes / 5, fetched  # the header's block, the labels' block


def test_credentials_the_store_refuses_are_one_line(tmp_path):
    """A second moto server that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0): the
    test's made-up keys are refused as S3 refuses an unknown key, a 403."""
    import subprocess
    import sys
    import time

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", **AWS_ENV)
        proc = run_cli_env(env, "train", "--data", "s3://locked-bucket/a.h5", "--local",
                           "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
    finally:
        server.terminate()
        server.wait(10)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "access denied to s3://locked-bucket/a.h5; check the credentials" in proc.stderr


def test_bench_reads_an_object_already_in_the_store(s3, tmp_path, make_h5):
    import json

    from tests.common import run_cli

    uri = s3.put(make_h5("b.h5", samples=128, shape=(8, 8, 3)), "bench/b.h5")
    out = tmp_path / "b.json"
    proc = run_cli("bench", uri, "--batch-size", "16", "--workdir", str(tmp_path / "w"), "--out", str(out),
                   cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["samples"] == 128 and "delayed" not in result["rows"]
    assert "epoch 2 from the node cache" in proc.stdout and "delay_vs_no_delay" not in result["bars"]
    proc = run_cli("bench", f"s3://{BUCKET}/bench/none.h5", cwd=str(tmp_path))
    assert proc.returncode == 2 and "bench file s3://raytrain-test/bench/none.h5 does not exist" in proc.stderr


def test_storage_options_endpoint_reaches_the_index_and_the_loader(s3, tmp_path):
    """No AWS_ENDPOINT_URL in the environment: only data.storage_options says where the store is."""
    _upload_image_tree(s3, tmp_path, "opts", n=24)
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    proc = run_cli_env(env, "train", "--directory", f"s3://{BUCKET}/opts/", "--image-size", "5,5", "--local",
                       "--epochs", "1", "--batch-size", "4", "--storage-options", f"endpoint={s3.endpoint}",
                       "--storage-path", str(tmp_path / "runs"), "--name", "o", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "finished 1 epoch" in proc.stdout, proc.stdout


def test_cache_keeps_its_cap_while_two_processes_write(tmp_path):
    """Two processes fill one cache folder past its cap; it ends at or under the cap (plus
    what a process may write between its checks) and every entry left is whole."""
    import subprocess
    import sys

    from tests.common import ROOT

    script = (
        "import sys\nfrom raytrain.data import cache as c\nc.CHECK_EVERY_BYTES = 1 << 16\n"
        "k = c.NodeCache(sys.argv[1], 1 << 20)\n"
        "for i in range(200):\n    k.put(f'{sys.argv[2]}-{i}', bytes([i % 256]) * 20000)\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "c"), name], env=env) for name in "ab"]
    assert [p.wait(60) for p in procs] == [0, 0]
    cache = NodeCache(str(tmp_path / "c"), 1 << 20)
    assert cache.size() <= (1 << 20) + 2 * (1 << 16)
    for _, path, size in cache._entries():
        assert size == 20000  # renamed into place whole


@pytest.mark.parametrize("compression", ["blosc", "bitshuffle", "zstd", "lz4", "lzf"])
def test_files_compressed_with_hdf5_plugins_read_the_same_from_disk_and_from_s3(s3, tmp_path, compression):
    x, _ = _clips(str(tmp_path / "a.h5"), n=40, compression=compression)
    uri = s3.put(str(tmp_path / "a.h5"), f"plugins/{compression}.h5")
    for source in (str(tmp_path / "a.h5"), uri):  # h5py with hdf5plugin's filters; HDF5's pipeline on raw chunks
        np.testing.assert_array_equal(_read_all(build_hdf5_index([source]), DataSection(paths=[])), x)


def test_a_filter_no_plugin_provides_is_named_on_the_driver(s3, tmp_path):
    from tests.common import unknown_filter_h5

    path = unknown_filter_h5(str(tmp_path / "odd.h5"))
    uri = s3.put(path, "filters/odd.h5")
    for source in (path, uri):
        with pytest.raises(RaytrainError, match=r"the first 32 samples of 'X' \(filters: filter 32999\) cannot be "
                                                r"decoded .*a filter no installed HDF5 plugin provides"):
            build_hdf5_index([source])


@pytest.mark.parametrize("runs_in", ["local", "store"])
def test_a_store_that_dies_mid_run_is_a_failure_to_resume_from(tmp_path, make_h5, runs_in):
    """A private moto server, stopped once the first epoch's checkpoint exists: the reads of
    a later epoch fail (the loader reads ahead up to two epochs of this small file), and that
    is a failed run (exit 1) naming the checkpoint, not bad input.
    With the runs in the same store, the clean-up that cannot reach it (status, pruning,
    the claim) says so in a line each and does not bury the error under tracebacks."""
    import subprocess
    import sys
    import time

    from tests.common import recording

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.time() < deadline, "moto did not start"
                time.sleep(0.2)
        store = S3(f"http://127.0.0.1:{port}")
        uri = store.put(make_h5("d.h5", samples=256, shape=(8, 8, 3)), "dies/d.h5")
        runs = str(tmp_path / "runs") if runs_in == "local" else f"s3://{BUCKET}/runs"
        _, model = recording(tmp_path, "m", step_seconds=0.3)
        env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", **AWS_ENV)
        from tests.common import ROOT
        proc = subprocess.Popen([sys.executable, "-m", "raytrain", "train", "--data", uri, "--local", "--model",
                                 model, "--epochs", "6", "--batch-size", "32", "--validation-ratio", "0",
                                 "--name", "r", "--storage-path", runs],
                                cwd=str(tmp_path), env=dict(env, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        first = "r/checkpoint-epoch-0001/raytrain_state.json"

        def saved() -> bool:
            if runs_in == "local":
                return (tmp_path / "runs" / first).exists()
            return store.fs.get_file_info(f"{BUCKET}/runs/{first}").type != pafs.FileType.NotFound

        deadline = time.time() + 300
        while not saved():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(10)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("raytrain: error:")]
    assert len(lines) == 1, err[-3000:]
    line = lines[0]
    assert "continue with: raytrain train --resume --name r" in line and "Traceback" not in err
    if runs_in == "local":
        assert "cannot reach the endpoint" in line and "the newest checkpoint is epoch " in line
    assert "Exception ignored" not in err and "During handling" not in err, err[-3000:]
