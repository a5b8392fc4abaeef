"""``raytrain index``: scan an image tree or manifest into a Parquet index."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from raytrain.errors import RaytrainError


def command_parser(sub: Any) -> None:
    p = sub.add_parser(
        "index", help="scan an image folder tree or manifest into a Parquet index (train on it with --manifest)",
        description="Scan a class-per-folder image tree (in parallel) or a CSV/Parquet manifest into a Parquet "
        "index of absolute paths and class indices, with the class names in its metadata. Train on it with "
        "`raytrain train --manifest INDEX.parquet`, so a large tree is not scanned again on every run.",
    )
    p.add_argument("source", help="a class-per-folder directory, or a .csv/.tsv/.parquet manifest (local, or an "
                   "s3:// / gs:// URI: a URI ending in .csv/.tsv/.parquet is a manifest, any other a folder)")
    p.add_argument("--out", required=True, help="the Parquet index to write")
    p.add_argument("--path-column", default="path", help="manifest: the column of image paths")
    p.add_argument("--label-column", default="label", help="manifest: the column of labels")
    p.add_argument("--verify", action="store_true",
                   help="decode every image once, in parallel, and list every bad one; the index is written only "
                   "if none is bad (a bad file otherwise surfaces in whichever epoch first reads it)")
    p.set_defaults(func=index_command)


def index_command(args: argparse.Namespace) -> int:
    from raytrain.data.image_index import MANIFEST_EXTENSIONS, read_manifest, scan_directory, verify_images, write_index

    if os.path.exists(args.out):
        raise RaytrainError(f"index file {args.out} already exists; remove it or choose another --out")
    started = time.perf_counter()
    source = args.source if "://" in args.source else os.path.abspath(args.source)
    manifest = source.lower().endswith(MANIFEST_EXTENSIONS) if "://" in source else not os.path.isdir(source)
    if manifest:
        paths, labels, classes = read_manifest(source, args.path_column, args.label_column)
    else:
        paths, labels, classes = scan_directory(source)
    if args.verify:
        bad = verify_images(paths)
        for path, reason in bad:
            print(f"bad image {path}: {reason}", file=sys.stderr)
        if bad:
            raise RaytrainError(
                f"{len(bad)} of {len(paths):,} images are bad (listed above); fix or remove them and index again, "
                "or train without --verify's index using --on-bad-sample skip"
            )
    write_index(paths, labels, classes, args.out)
    counts = {name: int(n) for name, n in zip(classes, [int((labels == i).sum()) for i in range(len(classes))])}
    shown = ", ".join(f"{k} {v}" for k, v in list(counts.items())[:8]) + (" ..." if len(counts) > 8 else "")
    verified = ", every one decoded" if args.verify else ""
    print(f"indexed {len(paths):,} images in {len(classes)} classes ({shown}){verified} in "
          f"{time.perf_counter() - started:.1f} s to {args.out}; train on it with --manifest {args.out}")
    return 0
