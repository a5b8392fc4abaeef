"""``raytrain bench --images``: raytrain's image loader against the usual ways, on the same files.

On a class-per-folder tree (yours, or 3,000 synthetic 256x256 JPEGs it writes) every
reader turns the files into batches of ``--image-size`` images, each in its own child
process, on a warm page cache (every file is read once before timing):

- **raytrain loader**: :class:`raytrain.data.image_loader.ImageLoader`, one shuffled epoch,
  ``--decode-threads`` threads (0 = this machine's CPUs), read through the training feed
  (bounded TensorFlow queue, conversion to float32 in [0, 1]);
- **tutorial, as written**: the Keras ``Sequence`` of the tutorial raytrain replaces:
  per batch, ``skimage.io.imread`` and ``skimage.transform.resize`` one file at a
  time, one thread, ``np.array`` of the float results;
- **tutorial pattern, raytrain's decoder**: the same one-file-at-a-time loop with
  raytrain's own decoder (simplejpeg, OpenCV resize), to separate what the decoder buys from what the threads buy;
- **tf.data**: ``list_files -> map(read_file, decode_jpeg, resize, / 255)`` with
  ``AUTOTUNE`` parallelism, ``batch``, ``prefetch(AUTOTUNE)``; float32 batches;
- **Ray Data**: ``read_images(size=..., mode="RGB")`` iterated with ``iter_batches``
  on a private local Ray instance (its start-up is not timed).

Fast readers report the median of three passes; the slow ones stop after ``--budget``
seconds. Bars: raytrain's loader >= 1.0x tf.data and >= 3x the tutorial.
"""

from __future__ import annotations

import datetime
import glob
import os
from typing import Any, Callable, Iterator, Optional

import numpy as np

from raytrain.bench import REPEATS, bars_table, child, feed_rates, judge, machine, rate, table, workspace
from raytrain.data.image_index import scan_directory, to_table
from raytrain.data.image_loader import ImageLoader
from raytrain.data.image_reader import ImageDecoder
from raytrain.data.order import TRAIN
from raytrain.data.shard import Shard
from raytrain.data.synth import make_image_tree
from raytrain.errors import RaytrainError

BARS = [
    ("loader_vs_tf_data", "image loader >= 1.0x tf.data", lambda v: v >= 1.0),
    ("loader_vs_tutorial", "image loader >= 3x tutorial", lambda v: v >= 3.0),
]


def _files(root: str) -> tuple[list[str], np.ndarray]:
    paths, labels, _ = scan_directory(root)
    return paths, labels


def _median_rate(passes: Callable[[], Iterator[Any]]) -> dict[str, Any]:
    rates = []
    for _ in range(REPEATS):
        n, seconds = rate(passes(), float("inf"))
        rates.append(n / seconds)
    return {"samples": n, "samples_per_s": float(np.median(rates)), "samples_per_s_each": rates}


def loader_child(args: dict[str, Any]) -> dict[str, Any]:
    paths, labels = _files(args["root"])
    shard = Shard(to_table(paths, labels))
    threads = args["threads"] or len(os.sched_getaffinity(0))
    size = tuple(args["size"])
    loader = ImageLoader(shard, ImageDecoder(size, 3), threads, 0, 0, TRAIN)
    batch = args["batch"]
    try:
        result = feed_rates(loader, len(shard) // batch, batch, (*size, 3), "uint8", args["prefetch"])
    finally:
        loader.close()
    return dict(result, threads=threads)


def tutorial_child(args: dict[str, Any]) -> dict[str, Any]:
    """The tutorial's ``__getitem__``, as written (skimage), until the budget runs out."""
    from skimage.io import imread  # an optional dependency (the bench and test extras)
    from skimage.transform import resize

    paths, _ = _files(args["root"])
    order = np.random.default_rng(0).permutation(len(paths))
    batch, size = args["batch"], tuple(args["size"])

    def batches() -> Iterator[np.ndarray]:
        for s in range(0, len(order) - batch + 1, batch):
            yield np.array([resize(imread(paths[i]), size) for i in order[s : s + batch]])

    n, seconds = rate(batches(), args["budget"])
    return {"samples": n, "seconds": seconds, "samples_per_s": n / seconds}


def tutorial_opencv_child(args: dict[str, Any]) -> dict[str, Any]:
    """The tutorial's loop (one file at a time, one thread, float batches) with raytrain's decoder."""
    paths, _ = _files(args["root"])
    order = np.random.default_rng(0).permutation(len(paths))
    batch, size = args["batch"], tuple(args["size"])
    decoder = ImageDecoder(size, 3)
    one = np.empty((*size, 3), np.uint8)

    def image(path: str) -> np.ndarray:
        decoder.decode_into(path, one)
        return one.astype(np.float32) / 255

    def batches() -> Iterator[np.ndarray]:
        for s in range(0, len(order) - batch + 1, batch):
            yield np.array([image(paths[i]) for i in order[s : s + batch]])

    n, seconds = rate(batches(), args["budget"])
    return {"samples": n, "seconds": seconds, "samples_per_s": n / seconds}


def tf_data_child(args: dict[str, Any]) -> dict[str, Any]:
    import tensorflow as tf

    size = tuple(args["size"])

    def load(path: Any) -> Any:
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.image.resize(image, size) / 255.0

    def passes() -> Iterator[Any]:
        ds = tf.data.Dataset.list_files(os.path.join(args["root"], "*", "*.jpg"), shuffle=True, seed=0)
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(args["batch"]).prefetch(tf.data.AUTOTUNE)
        return iter(ds)

    return _median_rate(passes)


def ray_data_child(args: dict[str, Any]) -> dict[str, Any]:
    import ray
    import ray.data

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        paths, _ = _files(args["root"])

        def passes() -> Iterator[Any]:
            ds = ray.data.read_images(paths, size=tuple(args["size"]), mode="RGB")
            return (b["image"] for b in ds.iter_batches(batch_size=args["batch"], batch_format="numpy"))

        return _median_rate(passes)
    finally:
        ray.shutdown()


CHILDREN = {
    "image_loader": loader_child,
    "image_tutorial": tutorial_child,
    "image_tutorial_opencv": tutorial_opencv_child,
    "image_tf_data": tf_data_child,
    "image_ray_data": ray_data_child,
}


def check_args(samples: int, shape: tuple[int, ...], size: tuple[int, ...], batch: int, budget: float,
               threads: int) -> None:
    """Reject impossible settings with one line."""
    if samples < 2 * batch or batch < 1 or budget <= 0 or len(shape) != 2 or len(size) != 2 \
            or min(shape + size) < 1 or threads < 0:
        raise RaytrainError(
            "bench --images needs --batch-size >= 1, --samples >= 2 x batch size, --shape H,W, --image-size H,W, "
            f"--budget > 0 and --decode-threads >= 0. Received: samples={samples}, batch_size={batch}, "
            f"shape={shape}, image_size={size}, budget={budget}, decode_threads={threads}"
        )


def run_bench(
    root: Optional[str] = None,
    samples: int = 3000,
    shape: tuple[int, int] = (256, 256),
    size: tuple[int, int] = (200, 200),
    batch: int = 32,
    budget: float = 15.0,
    threads: int = 0,
    prefetch: int = 8,
    workdir: Optional[str] = None,
    timeout: float = 3600,
    progress: Any = print,
) -> dict[str, Any]:
    """Run every measurement once and return the results (see the module docstring)."""
    with workspace(workdir) as workdir:
        if root is None:
            root = os.path.join(workdir, "images")
            progress(f"writing {samples:,} synthetic {shape[0]}x{shape[1]} JPEGs to {root}")
            make_image_tree(root, samples, shape, classes=4)
            os.sync()
        paths, _ = _files(root)
        jpegs = [p for p in paths if p.lower().endswith((".jpg", ".jpeg"))]
        if len(jpegs) != len(paths) or len(glob.glob(os.path.join(root, "*", "*.jpg"))) != len(paths):
            raise RaytrainError(
                f"bench --images needs a tree of .jpg files one level deep ({root}/CLASS/NAME.jpg), as tf.data's "
                f"list_files pattern reads them; {len(paths) - len(jpegs)} of {len(paths)} files are not"
            )
        total_bytes = sum(os.path.getsize(p) for p in paths)  # also warms the page cache:
        for p in paths:
            with open(p, "rb") as f:
                f.read()
        args = {"root": root, "batch": batch, "size": list(size), "budget": budget, "threads": threads,
                "prefetch": prefetch}
        rows: dict[str, dict[str, Any]] = {}
        for key, what in (("loader", "raytrain image loader"), ("tf_data", "tf.data"),
                          ("tutorial", "tutorial (skimage)"), ("tutorial_opencv", "tutorial pattern (OpenCV)"),
                          ("ray_data", "Ray Data read_images")):
            progress(what)
            rows[key] = child(f"image_{key}", args, timeout)
    loader_rate = rows["loader"]["samples_per_s"]
    ratios = {f"loader_vs_{key}": loader_rate / row["samples_per_s"] for key, row in rows.items() if key != "loader"}
    return {
        "kind": "images",
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "data": {"root": os.path.abspath(root), "images": len(paths), "source_bytes": total_bytes,
                 "image_size": list(size)},
        "batch": batch,
        "readers": rows,
        "ratios": ratios,
        "bars": judge(BARS, ratios),
    }


def render(result: dict[str, Any]) -> str:
    """The results as Markdown tables (as the docs show them: docs/benchmarks.md)."""
    d, r = result["data"], result["readers"]
    loader = r["loader"]
    h, w = d["image_size"]
    names = [
        ("loader", f"raytrain image loader ({loader['threads']} decode threads, simplejpeg + OpenCV resize, "
                   "through the feed)"),
        ("tf_data", "tf.data: list_files -> map(read, decode_jpeg, resize), AUTOTUNE"),
        ("ray_data", "Ray Data: read_images -> iter_batches"),
        ("tutorial_opencv", "tutorial pattern, one file at a time, raytrain's decoder, 1 thread"),
        ("tutorial", "tutorial as written: skimage imread + resize, 1 thread"),
    ]
    readers = [[name, f"{r[key]['samples_per_s']:,.0f}", f"{loader['samples_per_s'] / r[key]['samples_per_s']:,.2f}x"]
               for key, name in names]
    return "\n".join([
        f"raytrain bench --images, {result['date']}, {result['machine']['cpus']} cores: {d['images']:,} JPEGs "
        f"({d['source_bytes'] / d['images'] / 1024:,.0f} KiB each) -> {h}x{w}; batch {result['batch']}",
        "",
        *table(["reader (warm page cache)", "images/s", "raytrain loader is"], readers, right=(1, 2)),
        "",
        *bars_table(result["bars"], lambda b: f"{b['value']:,.2f}x"),
    ])
