"""``raytrain bench``: measure raytrain's loaders against other ways of reading."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from raytrain.cli.jobflags import parse_shape
from raytrain.cli.lazy import module_doc
from raytrain.errors import RaytrainError


def command_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="measure raytrain's loaders against other ways of reading, in one run",
                       description="\n".join(module_doc(f"raytrain.bench.{m}") for m in ("hdf5", "images", "workers", "store", "gpu")),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", nargs="?", help="HDF5 file, or with --images a class-per-folder tree of JPEGs "
                   "(default: write a synthetic one); an s3:// or gs:// HDF5 object runs the --store rows on it")
    p.add_argument("--images", action="store_true", help="measure the image loader (default: the HDF5 loader)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="measure N Ray Train workers against --local and Ray Train's own TensorFlow recipe "
                   "(global batch 64 and 4 epochs unless --batch-size / --epochs say otherwise)")
    p.add_argument("--framework", choices=("tf_keras", "keras"), default="tf_keras",
                   help="--workers: the framework raytrain and the in-memory row train with (default tf_keras)")
    p.add_argument("--gpu-check", action="store_true",
                   help="train the built-in cnn on this node's GPUs with Keras 3 on JAX and print steps/s and the "
                   "data wait (exit 1 where JAX sees no GPU)")
    p.add_argument("--store", nargs="?", const="local", default=None, metavar="URI",
                   help="measure the loader reading from object storage: alone (or 'local'), moto's S3 server "
                   "started on 127.0.0.1; or a folder URI (s3://bucket/bench) to upload the file to and read from")
    p.add_argument("--delay-ms", type=float, default=20.0,
                   help="--store local: the delay the proxy adds to every request in the delayed row (default 20)")
    p.add_argument("--shards", type=int, default=8, help="--store: synthetic data in this many objects (default 8)")
    p.add_argument("--samples", type=int, default=None, help="synthetic data: samples (default 20,000; images 3,000)")
    p.add_argument("--shape", type=parse_shape, default=None,
                   help="synthetic data: sample shape (default 64,64,3); images: H,W of the files (default 256,256)")
    p.add_argument("--chunk-rows", type=int, default=32, help="synthetic file: HDF5 chunk rows")
    p.add_argument("--x-key", default="X", help="features dataset")
    p.add_argument("--y-key", default="Y", help="labels dataset")
    p.add_argument("--batch-size", type=int, default=None,
                   help="samples per batch, for every reader (default 32; --workers: the global batch, default 64)")
    p.add_argument("--epochs", type=int, default=None,
                   help="end-to-end epochs; the last one is compared (default 2; --workers: 4)")
    p.add_argument("--repeats", type=int, default=3,
                   help="--workers: interleaved rounds of the in-memory, --local and N-worker rows (median shown)")
    p.add_argument("--budget", type=float, default=15.0, help="seconds after which a slow reader stops")
    p.add_argument("--shuffle-window", type=int, default=0, help="the loader's data.shuffle_window (0 = auto)")
    p.add_argument("--prefetch-batches", type=int, default=8, help="the loader's data.prefetch_batches")
    p.add_argument("--image-size", type=parse_shape, default=(200, 200), help="images: H,W every reader resizes to")
    p.add_argument("--decode-threads", type=int, default=0, help="images: the loader's threads (0 = this machine's CPUs)")
    p.add_argument("--workdir", help="keep generated files and runs here (default: a temporary folder)")
    p.add_argument("--out", default="bench.json", help="JSON results file")
    p.set_defaults(func=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    from raytrain.bench import gpu, hdf5, images, store, workers, write_json

    progress = lambda text: print(f"raytrain bench: {text}", file=sys.stderr, flush=True)  # noqa: E731
    def given(value: Any, default: int) -> int:
        return default if value is None else value

    if args.gpu_check:
        try:
            result = gpu.run_check(args.samples or 8192, args.shape or (64, 64, 3), given(args.batch_size, 256),
                                   given(args.epochs, 3), args.workdir, progress=progress)
        except gpu.NoGpu as e:
            print(f"raytrain bench --gpu-check: {e}")
            return 1
        write_json(result, args.out)
        print(gpu.render(result))
        return 0
    if args.workers is None:
        args.batch_size, args.epochs = given(args.batch_size, 32), given(args.epochs, 2)
    if args.file is not None and "://" in args.file:  # an HDF5 object already in a store
        args.store = args.store or args.file.rsplit("/", 1)[0]
    if args.store is not None:
        bench = store
        samples, shape = args.samples or 8_000, args.shape or (64, 64, 3)
        store.check_args(args.store, samples, args.batch_size, args.delay_ms, args.shards)
        if args.file is not None and "://" not in args.file and not os.path.isfile(args.file):
            raise RaytrainError(
                f"bench file {args.file} does not exist; pass an HDF5 file or no file for a synthetic one"
            )
        result = bench.run_bench(args.file, args.store, samples, shape, args.chunk_rows, args.batch_size,
                                 args.delay_ms, args.shards, args.workdir, progress=progress,
                                 images=args.samples // 4 if args.samples else 2000)
    elif args.workers is not None:
        bench = workers
        samples, shape = args.samples or 20_000, args.shape or (64, 64, 3)
        batch, epochs = given(args.batch_size, 64), given(args.epochs, 4)
        bench.check_args(samples, args.workers, batch, epochs, args.repeats)
        if args.file is not None and not os.path.isfile(args.file):
            raise RaytrainError(f"bench file {args.file} does not exist; pass an HDF5 file or no file for a synthetic one")
        from raytrain import frameworks

        frameworks.check(args.framework)
        result = bench.run_bench(args.file, samples, shape, args.workers, batch, epochs, args.repeats,
                                 args.workdir, progress=progress, framework=args.framework)
    elif args.images:
        bench: Any = images
        samples, shape = args.samples or 3000, args.shape or (256, 256)
        bench.check_args(samples, shape, args.image_size, args.batch_size, args.budget, args.decode_threads)
        if args.file is not None and not os.path.isdir(args.file):
            raise RaytrainError(f"bench --images folder {args.file} does not exist; pass a class-per-folder tree or none")
        result = bench.run_bench(args.file, samples, shape, args.image_size, args.batch_size, args.budget,
                                 args.decode_threads, args.prefetch_batches, args.workdir, progress=progress)
    else:
        bench = hdf5
        samples, shape = args.samples or 20_000, args.shape or (64, 64, 3)
        bench.check_args(samples, shape, args.chunk_rows, args.batch_size, args.epochs, args.budget)
        if args.file is not None and not os.path.isfile(args.file):
            raise RaytrainError(f"bench file {args.file} does not exist; pass an HDF5 file or no file for a synthetic one")
        result = bench.run_bench(
            args.file, samples, shape, args.chunk_rows, args.batch_size, args.epochs, args.budget,
            args.shuffle_window, args.prefetch_batches, args.x_key, args.y_key, args.workdir, progress=progress,
        )
    write_json(result, args.out)
    print(bench.render(result))
    print(f"\nresults: {os.path.abspath(args.out)}")
    return 0
