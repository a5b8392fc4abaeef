"""raytrain's command line.

One process, this machine (in-process, Ray Train local mode)::

    raytrain train job.yaml --local

Several workers on this machine (a private local Ray instance)::

    raytrain train job.yaml --num-workers 2

A Ray cluster (GPU nodes: one replica per GPU of each worker)::

    raytrain train job.yaml --num-workers 8 --gpus-per-worker 1 --address auto

Every job key has a flag of the same name (``training.batch_size`` -> ``--batch-size``);
``--data`` sets ``data.paths`` and ``--model`` sets ``model.builder``. User errors print
one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import typing
from typing import Any, Callable, Optional, Sequence

from raytrain.errors import RaytrainError

EXIT_USER_ERROR = 2  # bad input: fix it and run again
EXIT_FAILED = 1  # training failed (workers died or raised); the newest checkpoint can be resumed


def _parse_list(text: str) -> list[str]:
    return [p for p in text.split(",") if p]


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be comma-separated integers such as 32,32,3. Received: {text}")


def _parse_int_list(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 200,200. Received: {text}")


def _flag_type(kind: Any) -> Callable[[str], Any]:
    if typing.get_origin(kind) is typing.Union:
        (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) is list:
        return _parse_int_list if typing.get_args(kind) == (int,) else _parse_list
    return kind


def add_job_flags(p: argparse.ArgumentParser, skip: tuple[tuple[str, str], ...] = ()) -> None:
    """A flag for every job key (``training.batch_size`` -> ``--batch-size``), grouped by section."""
    from raytrain.config import flag_name, option_fields

    p.add_argument("job", nargs="?", help="YAML job file (optional when --data, --directory or --manifest is given)")
    p.add_argument("--local", action="store_true", help="run in-process on this machine (same as --num-workers 0)")
    groups: dict[str, Any] = {}
    for section, key, kind in option_fields():
        if (section, key) in skip:
            continue
        group = groups.setdefault(section, p.add_argument_group(f"{section} (job file section '{section}')"))
        flag = flag_name(section, key)
        extra = {"action": "append"} if (section, key) == ("data", "paths") else {}
        group.add_argument(
            f"--{flag}", dest=f"{section}.{key}", type=str if extra else _flag_type(kind), default=None, metavar=flag.upper().replace("-", "_"),
            help=f"overrides {section}.{key}" + (" (repeat or comma-separate)" if extra or _flag_type(kind) is _parse_list
                                                 else " (comma-separated)" if _flag_type(kind) is _parse_int_list else ""),
            **extra,
        )


def train_command_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model (locally, or on Ray workers)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_flags(p)
    p.add_argument("--verbose", action="store_true",
                   help="show the workers' and Ray's own output (TensorFlow start-up, Ray Train) besides raytrain's")
    p.add_argument("--resume", action="store_true",
                   help="continue a stopped run from its newest checkpoint: the run named by --name (or run.name), "
                   "else the newest run of this job in the storage path; its saved job is used, flags still override")
    p.set_defaults(func=train_command)


def job_from_args(args: argparse.Namespace) -> Any:
    """The validated JobConfig of ``raytrain train``: the job file (if any), then the flags.
    With ``--resume``: the job the run saved in its directory, then the flags."""
    from raytrain import config as cfg

    job = cfg.load_job(args.job) if args.job else cfg.JobConfig()
    if getattr(args, "resume", False):
        job = _saved_job(args, job)
    overrides: dict[tuple[str, str], Any] = {}
    for section, key, _ in cfg.option_fields():
        value = getattr(args, f"{section}.{key}", None)
        if (section, key) == ("data", "paths") and value is not None:
            value = [p for part in value for p in _parse_list(part)]
        overrides[(section, key)] = value
    if args.local:
        if overrides[("scaling", "num_workers")] not in (None, 0):
            raise RaytrainError("--local runs in-process and cannot be combined with --num-workers > 0; drop one of them")
        overrides[("scaling", "num_workers")] = 0
    job = cfg.apply_overrides(job, overrides)
    # An image source given as a flag replaces the job file's other image source.
    given = [k for k in ("directory", "manifest") if overrides[("data", k)] is not None]
    if len(given) == 1:
        setattr(job.data, "manifest" if given[0] == "directory" else "directory", None)
    return cfg.validate(job, default_name=_default_stem(args, job))


def _saved_job(args: argparse.Namespace, job: Any) -> Any:
    """The job saved in the run directory ``--resume`` continues."""
    import re

    from raytrain import config as cfg
    from raytrain import storage

    name = getattr(args, "run.name", None) or job.run.name
    base = getattr(args, "run.storage_path", None) or job.run.storage_path
    base = cfg.validate_storage_path(base)
    if not name:
        stem = _default_stem(args, job)
        runs = [n for n in storage.listdir(base) if re.fullmatch(rf"{re.escape(stem)}-\d{{8}}-\d{{6}}", n)]
        if not runs:
            raise RaytrainError(f"--resume: no run of '{stem}' in {base}; name the run with --name")
        name = max(runs)  # the timestamp sorts
    text = storage.read_text(storage.join(base, name, "job.yaml"))
    if text is None:
        raise RaytrainError(f"--resume: {storage.join(base, name)} holds no run; check --name and --storage-path")
    import yaml

    saved = cfg.from_dict(yaml.safe_load(text), source=storage.join(base, name, "job.yaml"))
    saved.run.name, saved.run.storage_path = name, base
    return saved


def _default_stem(args: argparse.Namespace, job: Any) -> str:
    source = args.job or (job.data.paths or [job.data.directory or job.data.manifest or "run"])[0]
    return os.path.splitext(os.path.basename(source.rstrip("/")))[0]


def train_command(args: argparse.Namespace) -> int:
    from raytrain.trainer import run

    job = job_from_args(args)
    summary = run(job, resume=args.resume, verbose=args.verbose)
    if summary is None:
        print(f"raytrain: run {job.run_dir} already finished its {job.training.epochs} epochs; nothing to do")
        return 0
    print(summary.render())
    return 0


def synth_command_parser(sub: Any) -> None:
    p = sub.add_parser("synth", help="write a synthetic, learnable dataset (an HDF5 file or a folder of images)")
    p.add_argument("out", help="output .h5 file, or with --images the root folder of the image tree")
    p.add_argument("--images", action="store_true", help="write a class-per-folder tree of image files")
    p.add_argument("--samples", type=int, default=2000, help="number of samples")
    p.add_argument("--shape", type=_parse_shape, default=None,
                   help="H,W,C for images or F,C,H,W for clips (default 32,32,3); with --images H,W (default 64,64)")
    p.add_argument("--classes", type=int, default=4, help="number of classes")
    p.add_argument("--one-hot", action="store_true", help="store labels as one-hot rows (HDF5)")
    p.add_argument("--seed", type=int, default=0, help="fixes the data")
    p.add_argument("--chunk-rows", type=int, default=32, help="HDF5 chunk length along the sample axis")
    p.add_argument("--formats", type=_parse_list, default=["jpg"], help="with --images: file formats used in turn, "
                   "some of jpg,png,bmp,gif")
    p.set_defaults(func=synth_command)


def synth_command(args: argparse.Namespace) -> int:
    from raytrain.synth import IMAGE_FORMATS, make_hdf5, make_image_tree

    shape = args.shape or ((64, 64) if args.images else (32, 32, 3))
    shapes = (2,) if args.images else (3, 4)
    if args.samples < 1 or args.classes < 2 or len(shape) not in shapes or args.chunk_rows < 1 or min(shape) < 1:
        raise RaytrainError(
            "synth needs --samples >= 1, --classes >= 2, --chunk-rows >= 1 and --shape "
            + ("H,W with --images" if args.images else "H,W,C or F,C,H,W")
            + f". Received: samples={args.samples}, classes={args.classes}, shape={shape}, chunk_rows={args.chunk_rows}"
        )
    if args.images:
        bad = sorted(set(args.formats) - set(IMAGE_FORMATS))
        if bad or not args.formats:
            raise RaytrainError(f"--formats must be some of {','.join(IMAGE_FORMATS)}. Received: {','.join(args.formats)}")
        if os.path.isfile(args.out) or (os.path.isdir(args.out) and os.listdir(args.out)):
            raise RaytrainError(f"{args.out} already exists and is not an empty folder; choose another output folder")
        make_image_tree(args.out, args.samples, shape, args.classes, args.seed, tuple(args.formats))
        print(f"wrote {args.samples} images of {shape[0]}x{shape[1]} ({','.join(args.formats)}), "
              f"{args.classes} classes, to {args.out}/class*/")
        return 0
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    make_hdf5(args.out, args.samples, shape, args.classes, args.one_hot, args.seed, args.chunk_rows)
    print(f"wrote {args.samples} samples of shape {shape}, {args.classes} classes, to {args.out}")
    return 0


def index_command_parser(sub: Any) -> None:
    p = sub.add_parser(
        "index", help="scan an image folder tree or manifest into a Parquet index (train on it with --manifest)",
        description="Scan a class-per-folder image tree (in parallel) or a CSV/Parquet manifest into a Parquet "
        "index of absolute paths and class indices, with the class names in its metadata. Train on it with "
        "`raytrain train --manifest INDEX.parquet`, so a large tree is not scanned again on every run.",
    )
    p.add_argument("source", help="a class-per-folder directory, or a .csv/.tsv/.parquet manifest")
    p.add_argument("--out", required=True, help="the Parquet index to write")
    p.add_argument("--path-column", default="path", help="manifest: the column of image paths")
    p.add_argument("--label-column", default="label", help="manifest: the column of labels")
    p.set_defaults(func=index_command)


def index_command(args: argparse.Namespace) -> int:
    import time

    from raytrain.index.images import read_manifest, scan_directory, write_index

    if os.path.exists(args.out):
        raise RaytrainError(f"index file {args.out} already exists; remove it or choose another --out")
    started = time.perf_counter()
    if os.path.isdir(args.source):
        paths, labels, classes = scan_directory(os.path.abspath(args.source))
    else:
        paths, labels, classes = read_manifest(os.path.abspath(args.source), args.path_column, args.label_column)
    write_index(paths, labels, classes, args.out)
    counts = {name: int(n) for name, n in zip(classes, [int((labels == i).sum()) for i in range(len(classes))])}
    shown = ", ".join(f"{k} {v}" for k, v in list(counts.items())[:8]) + (" ..." if len(counts) > 8 else "")
    print(f"indexed {len(paths):,} images in {len(classes)} classes ({shown}) in {time.perf_counter() - started:.1f} s "
          f"to {args.out}; train on it with --manifest {args.out}")
    return 0


def bench_command_parser(sub: Any) -> None:
    from raytrain.bench import hdf5, images

    p = sub.add_parser("bench", help="measure raytrain's loaders against other ways of reading, in one run",
                       description=f"{hdf5.__doc__}\n{images.__doc__}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", nargs="?", help="HDF5 file, or with --images a class-per-folder tree of JPEGs "
                   "(default: write a synthetic one)")
    p.add_argument("--images", action="store_true", help="measure the image loader (default: the HDF5 loader)")
    p.add_argument("--samples", type=int, default=None, help="synthetic data: samples (default 20,000; images 3,000)")
    p.add_argument("--shape", type=_parse_shape, default=None,
                   help="synthetic data: sample shape (default 64,64,3); images: H,W of the files (default 256,256)")
    p.add_argument("--chunk-rows", type=int, default=32, help="synthetic file: HDF5 chunk rows")
    p.add_argument("--x-key", default="X", help="features dataset")
    p.add_argument("--y-key", default="Y", help="labels dataset")
    p.add_argument("--batch-size", type=int, default=32, help="samples per batch, for every reader")
    p.add_argument("--epochs", type=int, default=2, help="end-to-end epochs; the last one is compared")
    p.add_argument("--budget", type=float, default=15.0, help="seconds after which a slow reader stops")
    p.add_argument("--shuffle-window", type=int, default=0, help="the loader's data.shuffle_window (0 = auto)")
    p.add_argument("--prefetch-batches", type=int, default=8, help="the loader's data.prefetch_batches")
    p.add_argument("--image-size", type=_parse_shape, default=(200, 200), help="images: H,W every reader resizes to")
    p.add_argument("--decode-threads", type=int, default=0, help="images: the loader's threads (0 = this machine's CPUs)")
    p.add_argument("--workdir", help="keep generated files and runs here (default: a temporary folder)")
    p.add_argument("--out", default="bench.json", help="JSON results file")
    p.set_defaults(func=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    from raytrain.bench import write_json

    progress = lambda text: print(f"raytrain bench: {text}", file=sys.stderr, flush=True)  # noqa: E731
    if args.images:
        from raytrain.bench import images as bench

        samples, shape = args.samples or 3000, args.shape or (256, 256)
        bench.check_args(samples, shape, args.image_size, args.batch_size, args.budget, args.decode_threads)
        if args.file is not None and not os.path.isdir(args.file):
            raise RaytrainError(f"bench --images folder {args.file} does not exist; pass a class-per-folder tree or none")
        result = bench.run_bench(args.file, samples, shape, args.image_size, args.batch_size, args.budget,
                                 args.decode_threads, args.workdir, progress=progress)
    else:
        from raytrain.bench import hdf5 as bench

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


def evaluate_command_parser(sub: Any) -> None:
    from raytrain.evaluate import __doc__ as evaluate_doc

    p = sub.add_parser("evaluate", help="evaluate a run's exported model on a dataset, with raytrain's loaders",
                       description=evaluate_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run: <storage_path>/<name>")
    p.add_argument("--data", action="append", help="HDF5 files or globs (repeat or comma-separate)")
    p.add_argument("--directory", help="a class-per-folder image tree")
    p.add_argument("--manifest", help="a CSV/Parquet manifest or a raytrain index")
    p.add_argument("--x-key", help="HDF5 features dataset (default: the run's)")
    p.add_argument("--y-key", help="HDF5 labels dataset (default: the run's)")
    p.add_argument("--path-column", help="manifest path column (default: the run's)")
    p.add_argument("--label-column", help="manifest label column (default: the run's)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per evaluation batch")
    p.set_defaults(func=evaluate_command)


def evaluate_command(args: argparse.Namespace) -> int:
    from raytrain.evaluate import evaluate

    data: dict[str, Any] = {}
    if args.data:
        data["paths"] = [os.path.abspath(p) for part in args.data for p in _parse_list(part)]
    for key in ("directory", "manifest"):
        if getattr(args, key):
            data[key] = os.path.abspath(getattr(args, key))
    for key in ("x_key", "y_key", "path_column", "label_column"):
        if getattr(args, key):
            data[key] = getattr(args, key)
    result = evaluate(args.run_dir, data or None, args.batch_size)
    shown = "  ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
    print(f"raytrain: evaluated {args.run_dir} on {result['samples']:,} samples of {result['data']} "
          f"in {result['seconds']:.1f} s: {shown}")
    if result["skipped_files"]:
        print(f"  skipped {len(result['skipped_files'])} bad files: {', '.join(result['skipped_files'][:5])}")
    return 0


def report_command_parser(sub: Any) -> None:
    from raytrain.report import __doc__ as report_doc

    p = sub.add_parser("report", help="draw report.png of one run, or overlay several, and print a table",
                       description=report_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories: <storage_path>/<name>")
    p.add_argument("--out", help="the picture to write (default: in the first run's directory)")
    p.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> int:
    from raytrain.report import report

    out, text = report(args.run_dirs, args.out)
    print(text)
    print(f"\nreport: {out}")
    return 0


def runs_command_parser(sub: Any) -> None:
    from raytrain.runs import __doc__ as runs_doc

    p = sub.add_parser("runs", help="list the runs in a storage path: status, epochs, best metric, wall time",
                       description=runs_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("storage_path", nargs="?", default="./runs", help="where the runs are (default ./runs)")
    p.set_defaults(func=runs_command)


def runs_command(args: argparse.Namespace) -> int:
    from raytrain import storage
    from raytrain.runs import list_runs, render

    if not storage.exists(args.storage_path):
        raise RaytrainError(f"storage path {args.storage_path} does not exist; pass the run.storage_path of your runs")
    runs = list_runs(args.storage_path)
    print(render(runs) if runs else f"no runs in {args.storage_path}")
    return 0


def up_command_parser(sub: Any) -> None:
    from raytrain.launch import __doc__ as launch_doc

    for name, what in (("up", "start"), ("down", "stop")):
        p = sub.add_parser(name, help=f"{what} the cluster a cluster YAML describes (ray {name}, or a simulated one here)",
                           description=launch_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("cluster", help="a cluster YAML, e.g. clusters/local-sim.yaml")
        p.set_defaults(func=up_command if name == "up" else down_command)


def up_command(args: argparse.Namespace) -> int:
    from raytrain.launch import up

    up(args.cluster, progress=lambda text: print(f"raytrain: {text}", flush=True))
    return 0


def down_command(args: argparse.Namespace) -> int:
    from raytrain.launch import down

    down(args.cluster, progress=lambda text: print(f"raytrain: {text}", flush=True))
    return 0


def submit_command_parser(sub: Any) -> None:
    p = sub.add_parser("submit", help="run raytrain train on a Ray cluster as a Ray Job and stream its logs",
                       description="Submit `raytrain train` to a cluster's job server. Takes the same job file and "
                       "flags as `raytrain train`; --num-workers is still the one flag that scales. Data and storage "
                       "paths must be reachable from the cluster (shared filesystem or URIs).")
    add_job_flags(p, skip=(("scaling", "address"),))
    p.add_argument("--address", required=True, help="the cluster's job server, e.g. http://127.0.0.1:8265")
    p.set_defaults(func=submit_command)


def submit_command(args: argparse.Namespace) -> int:
    from raytrain.launch import submit, use_token_auth

    use_token_auth()  # before Ray is imported

    setattr(args, "scaling.address", "auto")
    job = job_from_args(args)
    return submit(job, args.address, progress=lambda text: print(f"raytrain: {text}", flush=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raytrain", description="Train Keras models on data larger than memory, on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    train_command_parser(sub)
    synth_command_parser(sub)
    index_command_parser(sub)
    evaluate_command_parser(sub)
    report_command_parser(sub)
    runs_command_parser(sub)
    up_command_parser(sub)
    submit_command_parser(sub)
    bench_command_parser(sub)
    return parser


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``raytrain`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so `finally` blocks shut Ray down and no worker is orphaned.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return args.func(args)
    except RaytrainError as e:
        print(f"raytrain: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:
        from raytrain.trainer import TrainingFailed

        if not isinstance(e, TrainingFailed):
            raise
        print(f"raytrain: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("raytrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
