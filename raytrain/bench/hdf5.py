"""``raytrain bench``: how fast raytrain feeds a model from HDF5, against the usual ways, in one run.

On one file (yours, or a synthetic one it writes) it measures, in this order:

- **sequential**: the whole file in large slices, the upper bound for any reader;
- **raytrain loader**: one shuffled epoch as a worker reads it (block order, window,
  through the training feed: background thread, bounded TensorFlow queue, conversion
  to float32, consumed inside TensorFlow as ``fit`` does), in a child process that also
  reports its peak resident memory (TensorFlow included); and the same epochs read and
  batched without the feed, which the sequential-read bar compares;
  then the same on a copy of the file four times as long, for the memory growth;
- **tutorial**: sorted random indices per batch, ``np.array(X[idx])``, as in the HDF5
  tutorial raytrain replaces;
- **one at a time**: ``X[i]`` per sample in a random order;
- **end to end**: ``raytrain train --local`` with the built-in ``cnn`` against a plain
  single-process ``tf_keras`` ``fit`` on the same data held in memory as float32,
  comparing the time of the last epoch (the first includes graph tracing for both),
  and the share of the raytrain epoch spent waiting for data.

Reading rows run on a warm page cache (the file is read once before timing) with
batches of ``--batch-size`` samples in the stored dtype; the slow patterns stop after
``--budget`` seconds (their rate is steady). Results are printed as a table and written
as JSON (``--out``).

Run it as ``raytrain bench`` (20,000 samples of 64x64x3 uint8 in 32-row chunks) or ``raytrain bench data.h5``. Image files:
``raytrain bench --images`` (:mod:`raytrain.bench.images`).
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any, Iterator, Optional

import h5py
import numpy as np

from raytrain.bench import (
    REPEATS,
    bars_table,
    child,
    feed_rates,
    judge,
    machine,
    peak_rss_bytes,
    rate,
    table,
    train_run,
    workspace,
)
from raytrain.data.hdf5_index import build_hdf5_index
from raytrain.data.hdf5_loader import HDF5Loader, window_cache_bytes
from raytrain.data.loader import auto_window
from raytrain.data.hdf5_reader import HDF5Reader
from raytrain.data.order import TRAIN
from raytrain.data.shard import Shard
from raytrain.data.synth import make_hdf5
from raytrain.errors import RaytrainError
from raytrain.run.rundir import read_metrics

SEQUENTIAL_SLICE_BYTES = 16 << 20  # the sequential read's slice size
GROWTH = 4  # the memory check reads a file this many times longer

BARS = [
    # (key, description, test)
    ("loader_vs_sequential", "loader reading (without the feed) >= 0.5x sequential read", lambda v: v >= 0.5),
    ("loader_vs_tutorial", "loader >= 30x tutorial pattern", lambda v: v >= 30),
    ("epoch_vs_in_memory", "raytrain --local epoch <= 1.15x in-memory fit", lambda v: v <= 1.15),
    ("rss_growth", "loader peak RSS grows < 10% for a 4x file", lambda v: v < 0.10),
]


def _sequential(x: Any) -> Iterator[np.ndarray]:
    step = max(1, SEQUENTIAL_SLICE_BYTES // max(x.dtype.itemsize * int(np.prod(x.shape[1:])), 1))
    for s in range(0, x.shape[0], step):
        yield x[s : s + step]


def _tutorial(x: Any, batch: int, seed: int) -> Iterator[np.ndarray]:
    order = np.random.default_rng(seed).permutation(x.shape[0])
    for s in range(0, len(order) - batch + 1, batch):
        yield np.array(x[np.sort(order[s : s + batch])])


def _one_at_a_time(x: Any, batch: int, seed: int) -> Iterator[np.ndarray]:
    order = np.random.default_rng(seed).permutation(x.shape[0])
    for s in range(0, len(order) - batch + 1, batch):
        yield np.stack([x[int(i)] for i in order[s : s + batch]])


def loader_child(args: dict[str, Any]) -> dict[str, Any]:
    """Shuffled epochs through raytrain's loader; reports samples/s and peak RSS."""
    index = build_hdf5_index([args["path"]], args["x_key"], args["y_key"])
    shard = Shard(index.table, index.rows_per_block)
    window = args["window"] or auto_window(index.sample_bytes)
    cache = window_cache_bytes(window, index.rows_per_block, index.sample_bytes)
    loader = HDF5Loader(shard, HDF5Reader(shard.files, args["x_key"], cache), window, seed=0, rank=0, stream=TRAIN)
    batch = args["batch"]
    steps = len(shard) // batch
    try:
        rates = feed_rates(loader, steps, batch, index.sample_shape, index.dtype, args["prefetch"])
        reading = [np.divide(*rate((x for x, _ in loader.epoch(e, steps, batch)), float("inf"))) for e in range(REPEATS)]
    finally:
        loader.close()
    return {
        **rates,
        "reading_samples_per_s": float(np.median(reading)),
        "peak_rss_bytes": peak_rss_bytes(),
        "window": window,
        "rows_per_block": max(index.rows_per_block.values()),
    }


def in_memory_child(args: dict[str, Any]) -> dict[str, Any]:
    """A plain fit of the built-in cnn on the whole file held in memory, with ``args``'
    framework (tf_keras unless it says ``keras``)."""
    from raytrain.config import ModelSection, TrainingSection
    from raytrain.models import build_model, keras_module

    framework = args.get("framework", "tf_keras")
    keras = keras_module(framework)

    with h5py.File(args["path"], "r") as f:
        x = f[args["x_key"]][:]
        y = f[args["y_key"]][:]
    x = x.astype(np.float32) * np.float32(1 / 255) if x.dtype == np.uint8 else x.astype(np.float32)
    one_hot = y.ndim == 2 and y.shape[1] > 1
    classes = y.shape[1] if one_hot else int(y.max()) + 1
    model = build_model(ModelSection(), TrainingSection(), x.shape[1:], classes, one_hot,
                        read_metrics_once=False, framework=framework)  # the built-in cnn, Keras's own loop
    times: list[float] = []
    ends: list[float] = []  # for the marginal epoch (bench --workers), measured as raytrain's

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.start)
            ends.append(time.perf_counter())

    model.fit(x, y, batch_size=args["batch"], epochs=args["epochs"], verbose=0, callbacks=[Timer()])
    steps = -(-len(x) // args["batch"])
    return {"epoch_times_s": times, "epoch_ends": ends, "samples_per_s": len(x) / times[-1], "steps": steps}


def _raytrain_train(path: str, x_key: str, y_key: str, batch: int, epochs: int, workdir: str, timeout: float) -> dict[str, Any]:
    """``raytrain train --local`` on the file; returns the per-epoch metrics it wrote."""
    run_dir = train_run(path, workdir, timeout, "raytrain train --local", "--local", "--x-key", x_key, "--y-key", y_key,
                        "--epochs", str(epochs), "--batch-size", str(batch), "--validation-ratio", "0")
    return {"epochs": read_metrics(run_dir), "run_dir": run_dir}


def _repeat_file(src: str, dst: str, times: int, x_key: str, y_key: str) -> None:
    """Write ``dst``: the samples of ``src`` repeated ``times`` times, same chunking."""
    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
        x, y = fin[x_key], fin[y_key]
        n = x.shape[0]
        out_x = fout.create_dataset(x_key, shape=(n * times, *x.shape[1:]), dtype=x.dtype, chunks=x.chunks)
        out_y = fout.create_dataset(y_key, shape=(n * times, *y.shape[1:]), dtype=y.dtype)
        step = max(1, (64 << 20) // max(x.dtype.itemsize * int(np.prod(x.shape[1:])), 1))
        for s in range(0, n, step):
            part_x, part_y = x[s : s + step], y[s : s + step]
            for k in range(times):
                out_x[k * n + s : k * n + s + len(part_x)] = part_x
                out_y[k * n + s : k * n + s + len(part_y)] = part_y


def _readers_in_process(path: str, x_key: str, batch: int, budget: float, progress: Any) -> dict[str, dict[str, Any]]:
    """The sequential read, the tutorial pattern and one sample at a time, in this process."""
    rows: dict[str, dict[str, Any]] = {}
    with h5py.File(path, "r") as f:
        x = f[x_key]
        sum(len(p) for p in _sequential(x))  # warm the page cache
        progress("sequential read")
        rates = [np.divide(*rate(_sequential(x), float("inf"))) for _ in range(REPEATS)]
        rows["sequential"] = {"samples": x.shape[0], "samples_per_s": float(np.median(rates)), "samples_per_s_each": rates}
        for key, what, batches in (("tutorial", "tutorial pattern", _tutorial(x, batch, 0)),
                                   ("one_at_a_time", "one sample at a time", _one_at_a_time(x, batch, 0))):
            progress(what)
            n, seconds = rate(batches, budget)
            rows[key] = {"samples": n, "seconds": seconds, "samples_per_s": n / seconds}
    return rows


def _loader_rows(path: str, child_args: dict[str, Any], workdir: str, timeout: float,
                 progress: Any) -> dict[str, dict[str, Any]]:
    """raytrain's loader on the file, then on a copy :data:`GROWTH` times as long (memory growth)."""
    progress("raytrain loader")
    rows = {"loader": child("loader", child_args, timeout)}
    bigger = os.path.join(workdir, f"bench-x{GROWTH}.h5")
    progress(f"raytrain loader on a {GROWTH}x file")
    _repeat_file(path, bigger, GROWTH, child_args["x_key"], child_args["y_key"])
    os.sync()
    rows["loader_x4"] = child("loader", dict(child_args, path=bigger), timeout)
    os.remove(bigger)
    return rows


def _file_info(path: str, x_key: str) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        x = f[x_key]
        return {"file": os.path.abspath(path), "samples": x.shape[0], "sample_shape": list(x.shape[1:]),
                "dtype": str(x.dtype), "chunks": list(x.chunks) if x.chunks else None,
                "file_bytes": os.path.getsize(path)}


def run_bench(
    path: Optional[str] = None,
    samples: int = 20_000,
    shape: tuple[int, ...] = (64, 64, 3),
    chunk_rows: int = 32,
    batch: int = 32,
    epochs: int = 2,
    budget: float = 15.0,
    window: int = 0,
    prefetch: int = 8,
    x_key: str = "X",
    y_key: str = "Y",
    workdir: Optional[str] = None,
    timeout: float = 3600,
    progress: Any = print,
) -> dict[str, Any]:
    """Run every measurement once and return the results (see the module docstring)."""
    with workspace(workdir) as workdir:
        if path is None:
            path = os.path.join(workdir, "bench.h5")
            progress(f"writing {samples:,} synthetic samples of {shape} to {path}")
            make_hdf5(path, samples, shape, classes=4, chunk_rows=chunk_rows)
            os.sync()  # so the kernel's write-back does not compete with the reads timed below
        index = build_hdf5_index([path], x_key, y_key)  # validates the file like `train` does
        info = _file_info(path, x_key)
        rows = _readers_in_process(path, x_key, batch, budget, progress)
        child_args = {"path": path, "x_key": x_key, "y_key": y_key, "batch": batch, "window": window, "prefetch": prefetch}
        rows.update(_loader_rows(path, child_args, workdir, timeout, progress))
        progress(f"raytrain train --local ({epochs} epochs)")
        train = _raytrain_train(path, x_key, y_key, batch, epochs, workdir, timeout)
        progress(f"in-memory tf_keras fit ({epochs} epochs)")
        in_memory = child("in_memory", {"path": path, "x_key": x_key, "y_key": y_key, "batch": batch, "epochs": epochs}, timeout)
    last = train["epochs"][-1]
    loader_rate = rows["loader"]["samples_per_s"]
    ratios = {
        "loader_vs_sequential": rows["loader"]["reading_samples_per_s"] / rows["sequential"]["samples_per_s"],
        "loader_vs_tutorial": loader_rate / rows["tutorial"]["samples_per_s"],
        "loader_vs_one_at_a_time": loader_rate / rows["one_at_a_time"]["samples_per_s"],
        "epoch_vs_in_memory": last["epoch_time_s"] / in_memory["epoch_times_s"][-1],
        "rss_growth": rows["loader_x4"]["peak_rss_bytes"] / rows["loader"]["peak_rss_bytes"] - 1,
    }
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "data": dict(info, rows_per_block=index.rows_per_block[index.table.column("file")[0].as_py()]),
        "batch": batch,
        "epochs": epochs,
        "readers": rows,
        "end_to_end": {
            "raytrain_epoch_s": last["epoch_time_s"],
            "raytrain_samples_per_s": last["samples_per_s"],
            "raytrain_data_wait_fraction": last["data_wait_fraction"],
            "raytrain_epochs": train["epochs"],
            "in_memory_epoch_s": in_memory["epoch_times_s"][-1],
            "in_memory_samples_per_s": in_memory["samples_per_s"],
            "in_memory_epoch_times_s": in_memory["epoch_times_s"],
        },
        "ratios": ratios,
        "bars": judge(BARS, ratios),
    }


def render(result: dict[str, Any]) -> str:
    """The results as Markdown tables (as the docs show them: docs/benchmarks.md)."""
    d, r, e, q = result["data"], result["readers"], result["end_to_end"], result["ratios"]
    loader = r["loader"]
    mb = 1 << 20
    r = dict(r, loader_reading={"samples_per_s": loader["reading_samples_per_s"]})
    names = [
        ("loader", f"raytrain loader: shuffled epoch (blocks of {loader['rows_per_block']} rows, window "
                   f"{loader['window']}) through the feed, as training reads it"),
        ("loader_reading", "the same loader reading and batching only, without the feed"),
        ("tutorial", "tutorial: sorted random indices per batch, `np.array(X[idx])`"),
        ("one_at_a_time", "one sample at a time, `X[i]`"),
        ("sequential", "sequential read in 16 MiB slices (upper bound)"),
    ]
    readers = [[name, f"{r[key]['samples_per_s']:,.0f}", f"{loader['samples_per_s'] / r[key]['samples_per_s']:,.2f}x"]
               for key, name in names]
    end_to_end = [
        ["`raytrain train --local`", f"{e['raytrain_epoch_s']:.1f}", f"{e['raytrain_samples_per_s']:,.0f}",
         f"{100 * e['raytrain_data_wait_fraction']:.1f}%"],
        ["in-memory `tf_keras` fit (float32 arrays)", f"{e['in_memory_epoch_s']:.1f}",
         f"{e['in_memory_samples_per_s']:,.0f}", "-"],
    ]
    return "\n".join([
        f"raytrain bench, {result['date']}, {result['machine']['cpus']} cores: {d['samples']:,} samples of "
        f"{tuple(d['sample_shape'])} {d['dtype']}, chunks {tuple(d['chunks']) if d['chunks'] else 'none'}, "
        f"{d['file_bytes'] / mb:,.0f} MiB; batch {result['batch']}",
        "",
        *table(["reader (warm page cache)", "samples/s", "raytrain loader is"], readers, right=(1, 2)),
        "",
        *table([f"end to end, cnn, epoch {result['epochs']} of {result['epochs']}", "epoch s", "samples/s",
                "waiting for data"], end_to_end, right=(1, 2, 3)),
        "",
        f"loader peak RSS: {loader['peak_rss_bytes'] / mb:,.0f} MiB on this file, "
        f"{r['loader_x4']['peak_rss_bytes'] / mb:,.0f} MiB on a {GROWTH}x file ({100 * q['rss_growth']:+.1f}%)",
        "",
        *bars_table(result["bars"], lambda b: f"{100 * b['value']:+.1f}%" if "RSS" in b["bar"] else f"{b['value']:,.2f}x"),
    ])


def check_args(samples: int, shape: tuple[int, ...], chunk_rows: int, batch: int, epochs: int, budget: float) -> None:
    """Reject impossible bench settings with one line."""
    if samples < 2 * batch or batch < 1 or epochs < 1 or chunk_rows < 1 or budget <= 0 or len(shape) < 1:
        raise RaytrainError(
            "bench needs --batch-size >= 1, --samples >= 2 x batch size, --epochs >= 1, --chunk-rows >= 1 and "
            f"--budget > 0. Received: samples={samples}, batch_size={batch}, epochs={epochs}, "
            f"chunk_rows={chunk_rows}, budget={budget}"
        )
