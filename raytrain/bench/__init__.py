"""``raytrain bench``: measurements of raytrain's loaders against the usual ways, in one run.

:mod:`raytrain.bench.hdf5` (``raytrain bench [FILE.h5]``) and
:mod:`raytrain.bench.images` (``raytrain bench --images [DIR]``) share what is here:
each measurement that needs a clean process runs in a child
(``python -m raytrain.bench KIND JSON``, which prints one JSON line), rates are the
median of :data:`REPEATS` passes, and results are written as JSON.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Optional

import numpy as np

REPEATS = 3  # fast readers run this many passes; the median is reported


def python_env(**extra: str) -> dict[str, str]:
    """The environment of a child: raytrain importable, TensorFlow quiet, TF's default allocator."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CPU_ALLOCATOR_USE_BFC", None)  # the in-memory baseline runs as a user would run it
    env.update(extra)
    return env


def child(kind: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh Python process; it prints one JSON line last."""
    proc = subprocess.run(
        [sys.executable, "-m", "raytrain.bench", kind, json.dumps(args)],
        capture_output=True, text=True, timeout=timeout, env=python_env(),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"bench step '{kind}' failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])


def train_run(path: str, workdir: str, timeout: float, what: str, *flags: str, model: str = "cnn") -> str:
    """``raytrain train --data PATH --model MODEL FLAGS`` in a child process, its run written
    under ``workdir/runs``; returns the run's folder. ``what`` names the step in an error."""
    name = f"bench-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    run_dir = os.path.join(workdir, "runs", name)
    cmd = [sys.executable, "-m", "raytrain", "train", "--data", path, "--model", model, *flags,
           "--storage-path", os.path.join(workdir, "runs"), "--name", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=python_env(), check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"bench step '{what}' failed (exit {proc.returncode}): {tail}")
    return run_dir


def rate(batches: Iterator[Any], budget: float) -> tuple[int, float]:
    """Consume batches until exhausted or ``budget`` seconds pass: (samples, seconds)."""
    samples, start = 0, time.perf_counter()
    for x in batches:
        samples += len(x)
        if time.perf_counter() - start > budget:
            break
    return samples, time.perf_counter() - start


def peak_rss_bytes() -> int:
    """This process's peak resident memory. Not ``ru_maxrss``: Linux carries the
    pre-exec (forked parent's) peak into it, which made a child look as large as the
    bench process that started it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def write_json(result: dict[str, Any], out: str) -> None:
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


@contextlib.contextmanager
def workspace(workdir: Optional[str]) -> Iterator[str]:
    """``workdir`` (kept), or a temporary folder removed afterwards."""
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
        yield workdir
        return
    temporary = tempfile.mkdtemp(prefix="raytrain-bench-")
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def feed_rates(loader: Any, steps: int, batch: int, sample_shape: tuple[int, ...], dtype: str,
               prefetch: int) -> dict[str, Any]:
    """:data:`REPEATS` epochs of ``loader`` read through raytrain's feed, the path training
    takes (a background thread, a bounded TensorFlow queue, the conversion to float32);
    returns the median samples/s."""
    import tensorflow as tf

    from raytrain.data.feed import read_ahead, to_model

    convert = to_model(dtype, 2, False)
    rates = []
    for epoch in range(REPEATS):
        start = time.perf_counter()
        feed, ds = read_ahead(loader.epoch(epoch, steps, batch), steps, (batch, *sample_shape), dtype, prefetch, convert)
        try:
            # Consumed inside TensorFlow, as fit consumes it: iterating a dataset from Python
            # adds ~0.6 ms per batch that training never pays.
            n = int(ds.reduce(np.int64(0), lambda total, batch: total + tf.shape(batch[1], out_type=tf.int64)[0]))
        finally:
            feed.stop()
        rates.append(n / (time.perf_counter() - start))
    return {"samples": n, "samples_per_s": float(sorted(rates)[len(rates) // 2]), "samples_per_s_each": rates}


def table(head: list[str], rows: list[list[str]], right: tuple[int, ...] = ()) -> list[str]:
    """A Markdown table; the columns numbered in ``right`` are right-aligned."""
    align = "|".join("---:" if i in right else "---" for i in range(len(head)))
    return ["| " + " | ".join(head) + " |", f"|{align}|", *("| " + " | ".join(r) + " |" for r in rows)]


def bars_table(bars: dict[str, Any], shown: Callable[[dict[str, Any]], str]) -> list[str]:
    """The table of bars: each with its measured value (``shown(bar)``) and whether it was met."""
    rows = [[b["bar"], shown(b), "yes" if b["met"] else "NO"] for b in bars.values()]
    return table(["bar", "measured", "met"], rows, right=(1,))


def judge(bars: list[tuple[str, str, Callable[[float], bool]]], ratios: dict[str, float]) -> dict[str, Any]:
    """Each bar (key, description, test) with its measured value and whether it was met."""
    return {key: {"bar": text, "value": ratios[key], "met": bool(test(ratios[key]))} for key, text, test in bars}
