"""``raytrain evaluate``: a run's exported model on a dataset."""

from __future__ import annotations

import argparse
from typing import Any

from raytrain.cli.jobflags import parse_list
from raytrain.config import location
from raytrain.cli.lazy import module_doc


def command_parser(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="evaluate a run's exported model on a dataset, with raytrain's loaders",
                       description=module_doc("raytrain.evaluate"), formatter_class=argparse.RawDescriptionHelpFormatter)
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
    from raytrain import evaluate as evaluation

    data: dict[str, Any] = {}
    if args.data:
        data["paths"] = [location(p, "--data") for part in args.data for p in parse_list(part)]
    for key in ("directory", "manifest"):
        if getattr(args, key):
            data[key] = location(getattr(args, key), f"--{key}")  # a path made absolute, or a URI kept
    for key in ("x_key", "y_key", "path_column", "label_column"):
        if getattr(args, key):
            data[key] = getattr(args, key)
    result = evaluation.evaluate(args.run_dir, data or None, args.batch_size)
    shown = "  ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
    print(f"raytrain: evaluated {args.run_dir} on {result['samples']:,} samples of {result['data']} "
          f"in {result['seconds']:.1f} s: {shown}")
    if result["skipped_files"]:
        print(f"  skipped {len(result['skipped_files'])} bad files: {', '.join(result['skipped_files'][:5])}")
    return 0
