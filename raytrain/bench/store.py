"""``raytrain bench --store``: how fast raytrain reads HDF5 from object storage, in one run.

With ``--store`` alone (or ``--store local``) it starts moto's S3-protocol server on
127.0.0.1 in a process of its own (``moto[server]``, in the bench and test extras),
uploads the file (yours, or a synthetic one) and measures reading (no model):

- **sequential download**: the whole object in one streaming GET, the store's own speed;
- **raytrain loader**: one shuffled epoch through :class:`raytrain.data.hdf5_remote.
  RemoteHDF5Reader` (block ranges, coalesced, :data:`FETCH_THREADS` requests in flight, the
  next window fetched while one is cut into batches), with the ranged requests per
  window against the window's blocks;
- **loader, 20 ms per request**: the same through a small delaying proxy (a process of
  its own, in front of the server), which adds ``--delay-ms`` to every request, as a
  store in another zone would;
- **node cache, epoch 2**: with ``data.cache_dir``, the second epoch (the first filled
  the cache) against the loader reading the same file from local disk, both on the
  training split (``data.validation_ratio`` 0.2), which holds part of every block;

then training: ``raytrain train --local`` with a one-layer model, on the local copy and
on the store with ``--cache-dir``, the median epoch after the first (the node cache's
promise is local-disk speed from epoch 2 on).

The synthetic data is ``--shards`` objects (default 8, as datasets in object storage usually
are): moto answers a ranged GET by reading the whole object (``FakeKey.value``) and slicing
it, so one 96 MiB object made every range cost ~70 ms here (the loader read 927 samples/s),
where S3 and GCS serve a range in time proportional to the range; at 12 MiB a block's
range costs 4.1 ms, 3.1 ms of it moto's fixed cost per request. A file you pass is
uploaded as one object.

``--store s3://bucket/prefix`` (or ``gs://``) uploads the file there with your
credentials and measures the same rows except the delay row (there is no proxy in front
of a real store). Results are printed as a table and written as JSON (``--out``).
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

import numpy as np
import pyarrow.fs as pafs

from raytrain.bench import bars_table, judge, machine, python_env, table, train_run, workspace
from raytrain.config import DataSection
from raytrain.data import store
from raytrain.data.cache import NodeCache
from raytrain.data.hdf5_index import build_hdf5_index
from raytrain.data.hdf5_loader import HDF5Loader, window_cache_bytes
from raytrain.data.loader import auto_window
from raytrain.data.hdf5_reader import HDF5Reader
from raytrain.data.hdf5_remote import FETCH_THREADS, RemoteHDF5Reader
from raytrain.data.image_index import scan_directory, to_table
from raytrain.data.image_loader import ImageLoader
from raytrain.data.image_reader import ImageDecoder
from raytrain.data.order import TRAIN
from raytrain.data.shard import Shard
from raytrain.data.split import split_index
from raytrain.data.synth import make_hdf5, make_image_tree
from raytrain.errors import RaytrainError

BUCKET = "raytrain-bench"
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}

BARS = [
    ("loader_vs_download", "loader >= 0.8x one sequential download from the same store", lambda v: v >= 0.8),
    ("requests_over_blocks", "ranged requests per window <= the window's blocks + 2", lambda v: v <= 2),
    ("delay_vs_no_delay", "loader with 20 ms per request >= 0.5x without", lambda v: v >= 0.5),
    ("cache_vs_local_disk", "epoch 2 from the node cache >= 0.9x the local-disk loader", lambda v: v >= 0.9),
    ("train_cache_vs_local_disk", "a training epoch from the node cache <= 1.1x the same epoch from local disk",
     lambda v: v <= 1.1),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RaytrainError(f"bench: {what} exited at start (exit {proc.returncode}); is moto[server] installed? "
                                "pip install -e '.[bench]'")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RaytrainError(f"bench: {what} did not start listening on 127.0.0.1:{port} within {timeout:.0f} s")


def _start(args: list[str], port: int, what: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=python_env())
    try:
        _wait_for(port, proc, what)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _stop(proc: Optional[subprocess.Popen]) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def proxy_main(upstream_port: int, port: int, delay_s: float) -> None:
    """A delaying HTTP proxy: every request waits ``delay_s``, then goes to the upstream
    server on 127.0.0.1 as it came (headers included, so signatures still match)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            time.sleep(delay_s)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
            conn.request(self.command, self.path, body=body or None, headers=dict(self.headers))
            response = conn.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            # A HEAD's length is the object's (its body is empty).
            length = response.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def _loader(uri: str, index: Any, window: int, options: dict, cache: Optional[NodeCache],
            table: Any = None) -> HDF5Loader:
    """The loader a worker would open (on ``table``, default the whole index); the file's
    layout is read before any timing (once per worker)."""
    shard = Shard(index.table if table is None else table, index.rows_per_block)
    reader = RemoteHDF5Reader(shard.files, "X", index.rows_per_block, options, cache)
    reader.sample_layout()
    return HDF5Loader(shard, reader, window, seed=0, rank=0, stream=TRAIN)


def _epoch_rate(loader: Any, epoch: int, batch: int) -> float:
    steps = len(loader.shard) // batch
    start = time.perf_counter()
    n = sum(len(x) for x, _ in loader.epoch(epoch, steps, batch))
    return n / (time.perf_counter() - start)


def _measure(uri: str, local_files: list[str], batch: int, workdir: str, endpoint: Optional[str],
             delayed: Optional[str], progress: Callable[[str], None]) -> dict[str, Any]:
    """Every reading row on the same objects: the store's download speed, the loader (with
    and without a delay per request), epoch 2 from the node cache, and the local copy."""
    options = {"endpoint": endpoint} if endpoint else {}
    index = build_hdf5_index([uri], options=options)
    objects = index.table.column("file").unique().to_pylist()
    fs, _ = store.filesystem(uri, options)
    size = sum(fs.get_file_info(store.filesystem(o, options)[1]).size for o in objects)
    window = auto_window(index.sample_bytes)
    n = len(index.table)
    rows: dict[str, Any] = {}

    progress("sequential download")
    start = time.perf_counter()
    for o in objects:
        with fs.open_input_stream(store.filesystem(o, options)[1]) as f:
            while f.read(16 << 20):
                pass
    rows["download"] = {"samples_per_s": n / (time.perf_counter() - start)}
    progress("raytrain loader")
    rows["loader"] = _loader_row(uri, index, window, options, batch)
    if delayed:
        progress("raytrain loader, delayed requests")
        loader = _loader(uri, index, window, {"endpoint": delayed}, None)
        try:
            rows["delayed"] = {"samples_per_s": float(np.median([_epoch_rate(loader, e, batch) for e in range(2)]))}
        finally:
            loader.close()
    progress("node cache: epoch 1 fills it, epoch 2 reads it")
    rows["cache_epoch_2"] = _cache_row(uri, index, window, options, batch, os.path.join(workdir, "node-cache"))
    rows["local_disk"] = _local_row(local_files, window, batch)
    rows.update(_training_rows(uri, ",".join(local_files), options, batch, workdir, progress))
    return {"rows": rows, "file_bytes": size, "samples": n, "sample_shape": list(index.sample_shape),
            "dtype": index.dtype, "window": window, "rows_per_block": max(index.rows_per_block.values())}


def _loader_row(uri: str, index: Any, window: int, options: dict, batch: int) -> dict[str, Any]:
    """The loader's rate over 2 epochs, and its ranged requests against the blocks it read."""
    loader = _loader(uri, index, window, options, None)
    try:
        rates = [_epoch_rate(loader, e, batch) for e in range(2)]
        requests = loader.reader.requests
        shard = loader.shard
        steps = len(shard) // batch
        windows, blocks = 0, 0
        for e in range(2):
            positions, bounds = shard.epoch_order(window, 0, e, TRAIN)
            need = steps * batch
            for a, b in zip(bounds[:-1], bounds[1:]):
                if a >= need:
                    break
                pos = np.sort(positions[a : min(b, need)])
                windows += 1
                blocks += len(np.unique(np.stack([shard.file_codes[pos], shard.rows[pos] // max(
                    index.rows_per_block.values())]), axis=1).T)
    finally:
        loader.close()
    return {"samples_per_s": float(np.median(rates)), "requests_per_window": requests / windows,
            "blocks_per_window": blocks / windows}


def _training_split(table: Any) -> Any:
    """The rows training reads with the default ``data.validation_ratio``: part of every block,
    which reads the node cache differently from whole blocks."""
    return split_index(table, DataSection.validation_ratio, 0)[0]


def _cache_row(uri: str, index: Any, window: int, options: dict, batch: int, cache_dir: str) -> dict[str, Any]:
    """Epoch 2's rate and requests on the training split, after epoch 1 filled a fresh node cache."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    loader = _loader(uri, index, window, options, NodeCache(cache_dir, 1 << 40), _training_split(index.table))
    try:
        _epoch_rate(loader, 0, batch)
        before = loader.reader.requests
        return {"samples_per_s": _epoch_rate(loader, 1, batch), "requests": loader.reader.requests - before}
    finally:
        loader.close()


def _local_row(local_files: list[str], window: int, batch: int) -> dict[str, Any]:
    """The loader on the local copy's training split, after one epoch that warms the page
    cache (as the cache's epoch 1 did), with the chunk cache training gives it."""
    local_index = build_hdf5_index(local_files)
    shard = Shard(_training_split(local_index.table), local_index.rows_per_block)
    chunk_cache = window_cache_bytes(window, local_index.rows_per_block, local_index.sample_bytes)
    local = HDF5Loader(shard, HDF5Reader(shard.files, "X", chunk_cache), window, seed=0, rank=0, stream=TRAIN)
    try:
        _epoch_rate(local, 0, batch)
        return {"samples_per_s": float(np.median([_epoch_rate(local, e, batch) for e in (1, 2)]))}
    finally:
        local.close()


DENSE_MODEL = """# Written by raytrain bench --store: a model small enough that reading shows in the epoch time.
import {keras} as keras


def build(input_shape, num_classes):
    return keras.Sequential([keras.layers.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(num_classes, activation="softmax")])
"""
TRAIN_EPOCHS = 4  # epoch 1 fills the node cache; the median of the others is reported


def _training_rows(uri: str, local: str, options: dict, batch: int, folder: str,
                   progress: Callable[[str], None]) -> dict[str, Any]:
    """``raytrain train --local`` on the local copy (``local``: its files, comma-separated),
    then on the store with ``--cache-dir``: the median epoch time after epoch 1, with a
    one-layer model so that reading, not the model, sets the pace."""
    import importlib.util

    model = os.path.join(folder, "dense_model.py")
    with open(model, "w") as f:
        f.write(DENSE_MODEL.format(keras="tf_keras" if importlib.util.find_spec("tf_keras") else "keras"))
    flags = ["--local", "--epochs", str(TRAIN_EPOCHS), "--batch-size", str(batch), "--x-key", "X", "--y-key", "Y"]
    runs = {"train_local_disk": (local, flags),
            "train_cache": (uri, [*flags, "--cache-dir", os.path.join(folder, "train-cache"),
                                  *(["--storage-options", f"endpoint={options['endpoint']}"] if options else [])])}
    rows = {}
    for key, (data, extra) in runs.items():
        progress(f"training {TRAIN_EPOCHS} epochs: {data}")
        run_dir = train_run(data, folder, 900, f"raytrain train {data}", *extra, model=f"{model}:build")
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            epochs = [json.loads(line)["epoch_time_s"] for line in f if line.strip()]
        rows[key] = {"epoch_s": float(np.median(epochs[1:])), "epochs_s": epochs}
    return rows


def _range_cost(fs: Any, uri: str, measured: dict[str, Any], endpoint: str,
                progress: Callable[[str], None]) -> dict[str, float]:
    """Milliseconds of one block-sized ranged GET from a bench object and from a 1 MiB one:
    what the server's cost per request owes to the object's size."""
    progress("the cost of one ranged GET against the object's size")
    block = measured["rows_per_block"] * int(np.prod(measured["sample_shape"])) * np.dtype(measured["dtype"]).itemsize
    small = f"{BUCKET}/range-probe.bin"
    with fs.open_output_stream(small) as f:
        f.write(bytes(1 << 20))
    big = store.filesystem(uri.replace("*", "000"), {"endpoint": endpoint})[1]
    out = {}
    for name, path in (("bench_object", big), ("one_mib_object", small)):
        with fs.open_input_file(path) as f:
            start = time.perf_counter()
            for _ in range(20):
                f.read_at(min(block, (1 << 20) - 1), 0)
            out[name] = 1000 * (time.perf_counter() - start) / 20
    return out


def _image_rates(folder: str, fs: Any, endpoint: str, delayed: str, images: int, batch: int,
                 progress: Callable[[str], None]) -> dict[str, Any]:
    """The image loader (2 decoding threads, its fetch threads) on the same 64x64 JPEGs from
    local disk, from the store, and from the store with the proxy's delay per request."""
    tree = os.path.join(folder, "images")
    progress(f"writing and uploading {images:,} 64x64 JPEGs")
    paths = make_image_tree(tree, images, size=(64, 64))
    for path in paths:
        pafs.copy_files(path, f"{BUCKET}/images/{os.path.relpath(path, tree)}", destination_filesystem=fs)
    out = {}
    found, _, _ = scan_directory(f"s3://{BUCKET}/images", options={"endpoint": endpoint})
    progress("images fetched one after another (the store's request rate)")
    start = time.perf_counter()
    for uri in found:
        store.read_bytes(uri, {"endpoint": endpoint})
    out["one_by_one"] = {"samples_per_s": len(found) / (time.perf_counter() - start)}
    for name, root, options in (("local_disk", tree, {}), ("store", f"s3://{BUCKET}/images", {"endpoint": endpoint}),
                                ("delayed", f"s3://{BUCKET}/images", {"endpoint": delayed})):
        progress(f"image loader: {name}")
        found, labels, _ = scan_directory(root, options=options)
        loader = ImageLoader(Shard(to_table(found, labels)), ImageDecoder((64, 64), 3), 2, 0, 0, TRAIN,
                             options=options)
        try:
            out[name] = {"samples_per_s": float(np.median([_epoch_rate(loader, e, batch) for e in range(2)]))}
        finally:
            loader.close()
    return out


def run_bench(file: Optional[str], target: str, samples: int, shape: tuple[int, ...], chunk_rows: int, batch: int,
              delay_ms: float, shards: int, workdir: Optional[str], progress: Callable[[str], None],
              images: int = 2000) -> dict[str, Any]:
    with workspace(workdir) as folder:
        if file is not None and store.is_uri(file):
            return _existing_object(file, batch, folder, progress)
        local_files = [file] if file else [os.path.join(folder, f"bench-{i:03d}.h5") for i in range(shards)]
        if file is None:
            progress(f"writing {samples:,} samples of {shape} in {shards} files (chunks of {chunk_rows} rows)")
            for i, path in enumerate(local_files):
                part = samples // shards + (i < samples % shards)
                make_hdf5(path, part, shape=shape, chunk_rows=chunk_rows, seed=i)
        server = proxy = None
        saved = dict(os.environ)
        try:
            if target == "local":
                port, proxy_port = _free_port(), _free_port()
                progress(f"starting moto's S3 server on 127.0.0.1:{port} and a {delay_ms:g} ms proxy")
                server = _start(["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, "moto's server")
                proxy = _start(["-m", "raytrain.bench", "proxy", json.dumps(
                    {"upstream": port, "port": proxy_port, "delay_s": delay_ms / 1000})], proxy_port, "the proxy")
                os.environ.update(LOCAL_CREDENTIALS)
                endpoint, delayed = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{proxy_port}"
                fs = pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True, region="us-east-1")
                fs.create_dir(BUCKET)
                folder_uri = f"s3://{BUCKET}"
            else:
                endpoint, delayed = None, None
                folder_uri = target.rstrip("/")
                fs, _ = store.filesystem(folder_uri)
            total = sum(os.path.getsize(p) for p in local_files)
            progress(f"uploading {total / (1 << 20):,.0f} MiB in {len(local_files)} objects to {folder_uri}/")
            names = [f"raytrain-bench-{i:03d}.h5" for i in range(len(local_files))]
            for path, name in zip(local_files, names):
                dest = store.filesystem(f"{folder_uri}/{name}", {"endpoint": endpoint} if endpoint else {})[1]
                try:
                    pafs.copy_files(path, dest, destination_filesystem=fs)
                except OSError as e:
                    raise store.explain(e, f"{folder_uri}/{name}") from None
            uri = f"{folder_uri}/raytrain-bench-*.h5" if len(names) > 1 else f"{folder_uri}/{names[0]}"
            measured = _measure(uri, local_files, batch, folder, endpoint, delayed, progress)
            if target == "local":
                measured["range_ms"] = _range_cost(fs, uri, measured, endpoint, progress)
            if target == "local" and images:
                measured["images"] = _image_rates(folder, fs, endpoint, delayed, images, batch, progress)
        finally:
            _stop(proxy)
            _stop(server)
            os.environ.clear()
            os.environ.update(saved)
    return _result(measured, target, delay_ms, batch, len(names))


def _existing_object(uri: str, batch: int, folder: str, progress: Callable[[str], None]) -> dict[str, Any]:
    """``raytrain bench s3://bucket/data.h5``: the rows for an object already in a store (no
    upload, no delay row); the local-disk row reads a copy downloaded first (not timed)."""
    found = store.info(uri)
    if found.type != pafs.FileType.File:
        store.check_bucket(uri)
        raise RaytrainError(f"bench file {uri} does not exist; check the URI")
    local = os.path.join(folder, "local-copy.h5")
    progress(f"downloading {found.size / (1 << 20):,.0f} MiB of {uri} for the local-disk row")
    fs, path = store.filesystem(uri)
    pafs.copy_files(path, local, source_filesystem=fs)
    measured = _measure(uri, [local], batch, folder, None, None, progress)
    return _result(measured, store.parent(uri), 0.0, batch, 1)


def _result(measured: dict[str, Any], target: str, delay_ms: float, batch: int, objects: int) -> dict[str, Any]:
    r = measured["rows"]
    ratios = {
        "loader_vs_download": r["loader"]["samples_per_s"] / r["download"]["samples_per_s"],
        "requests_over_blocks": r["loader"]["requests_per_window"] - r["loader"]["blocks_per_window"],
        "cache_vs_local_disk": r["cache_epoch_2"]["samples_per_s"] / r["local_disk"]["samples_per_s"],
        "train_cache_vs_local_disk": r["train_cache"]["epoch_s"] / r["train_local_disk"]["epoch_s"],
    }
    if "delayed" in r:
        ratios["delay_vs_no_delay"] = r["delayed"]["samples_per_s"] / r["loader"]["samples_per_s"]
    return {
        "bench": "store", "date": datetime.date.today().isoformat(), "machine": machine(), "store": target,
        "delay_ms": delay_ms, "batch": batch, "objects": objects, "fetch_threads": FETCH_THREADS, **measured,
        "ratios": ratios,
        "bars": judge([b for b in BARS if b[0] in ratios], ratios),
    }


def render(result: dict[str, Any]) -> str:
    r = result["rows"]
    mb = 1 << 20
    base = r["loader"]["samples_per_s"]
    names = [
        ("download", "sequential download of every object, one after another (the store's speed)"),
        ("loader", f"raytrain loader: shuffled epoch, blocks of {result['rows_per_block']} rows, window "
                   f"{result['window']}, {result['fetch_threads']} requests in flight"),
        ("delayed", f"the same, {result['delay_ms']:g} ms added to every request (proxy)"),
        ("cache_epoch_2", "epoch 2 from the node cache (data.cache_dir), training split"),
        ("local_disk", "the loader on the same file on local disk (warm page cache), training split"),
    ]
    rows = [[name, f"{r[key]['samples_per_s']:,.0f}", f"{r[key]['samples_per_s'] / base:,.2f}x"]
            for key, name in names if key in r]
    loader = r["loader"]
    where = "moto's S3 server on 127.0.0.1" if result["store"] == "local" else result["store"]
    return "\n".join([
        f"raytrain bench --store, {result['date']}, {result['machine']['cpus']} cores, {where}: "
        f"{result['samples']:,} samples of {tuple(result['sample_shape'])} {result['dtype']}, "
        f"{result['file_bytes'] / mb:,.0f} MiB in {result['objects']} objects; batch {result['batch']}; "
        "reading only (no model), then training",
        "",
        *table(["reader", "samples/s", "vs the loader"], rows, right=(1, 2)),
        "",
        *_training_lines(result),
        *_image_lines(result),
        *_range_lines(result),
        f"ranged requests per window: {loader['requests_per_window']:,.1f} for {loader['blocks_per_window']:,.1f} "
        f"blocks per window; epoch 2 from the cache made {r['cache_epoch_2']['requests']} requests",
        "",
        *bars_table(result["bars"],
                    lambda b: f"blocks {b['value']:+.1f}" if "requests" in b["bar"] else f"{b['value']:,.2f}x"),
    ])


def _training_lines(result: dict[str, Any]) -> list[str]:
    r = result["rows"]
    base = r["train_local_disk"]["epoch_s"]
    names = [("train_local_disk", "the local copy"), ("train_cache", "the store, with --cache-dir (epoch 1 fills it)")]
    rows = [[name, f"{r[k]['epoch_s']:.3f}", f"{r[k]['epoch_s'] / base:,.2f}x"] for k, name in names]
    return [f"raytrain train --local, {TRAIN_EPOCHS} epochs of a one-layer model (reading sets the pace), "
            "median epoch after the first:",
            *table(["data", "epoch s", "vs local disk"], rows, right=(1, 2)), ""]


def _range_lines(result: dict[str, Any]) -> list[str]:
    cost = result.get("range_ms")
    if not cost:
        return []
    mb = (1 << 20)
    size = result["file_bytes"] / result["objects"] / mb
    rows = result["rows_per_block"]
    return [f"one ranged GET of a block ({rows} rows, at most 1 MiB): {cost['bench_object']:.1f} ms "
            f"from a {size:,.0f} MiB object, {cost['one_mib_object']:.1f} ms from a 1 MiB object (moto reads the "
            "whole object for every range)", ""]


def _image_lines(result: dict[str, Any]) -> list[str]:
    images = result.get("images")
    if not images:
        return []
    base = images["local_disk"]["samples_per_s"]
    names = [("local_disk", "image loader (2 decoding threads), 64x64 JPEGs on local disk"),
             ("one_by_one", "the images fetched one after another, not decoded (the store's request rate)"),
             ("store", "the same images from the store (one GET each, on the fetch threads)"),
             ("delayed", f"the same, {result['delay_ms']:g} ms added to every request (proxy)")]
    rows = [[name, f"{images[k]['samples_per_s']:,.0f}", f"{images[k]['samples_per_s'] / base:,.2f}x"]
            for k, name in names]
    return [*table(["images", "images/s", "vs local disk"], rows, right=(1, 2)), ""]


def check_args(target: str, samples: int, batch: int, delay_ms: float, shards: int = 1) -> None:
    if target != "local" and store.scheme(target) not in ("s3", "gs", "gcs") if store.is_uri(target) else \
            target != "local":
        raise RaytrainError(f"bench --store takes local (a moto server on 127.0.0.1) or a folder URI such as "
                            f"s3://bucket/bench. Received: {target}")
    if samples < 2 * batch or batch < 1 or delay_ms < 0 or not 1 <= shards <= samples // batch:
        raise RaytrainError(
            "bench --store needs --batch-size >= 1, --samples >= 2 x batch size, --delay-ms >= 0 and 1 <= --shards "
            f"<= samples / batch size. Received: samples={samples}, batch_size={batch}, delay_ms={delay_ms}, "
            f"shards={shards}"
        )


def proxy_child(args: dict[str, Any]) -> dict[str, Any]:
    proxy_main(int(args["upstream"]), int(args["port"]), float(args["delay_s"]))
    return {}


