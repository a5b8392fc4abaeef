"""``raytrain synth``: write a synthetic, learnable dataset."""

from __future__ import annotations

import argparse
import os
from typing import Any

from raytrain.cli.jobflags import parse_list, parse_shape
from raytrain.errors import RaytrainError


def command_parser(sub: Any) -> None:
    p = sub.add_parser("synth", help="write a synthetic, learnable dataset (an HDF5 file or a folder of images)")
    p.add_argument("out", help="output .h5 file, or with --images the root folder of the image tree")
    p.add_argument("--images", action="store_true", help="write a class-per-folder tree of image files")
    p.add_argument("--samples", type=int, default=2000, help="number of samples")
    p.add_argument("--shape", type=parse_shape, default=None,
                   help="H,W,C for images or F,C,H,W for clips (default 32,32,3); with --images H,W (default 64,64)")
    p.add_argument("--classes", type=int, default=4, help="number of classes")
    p.add_argument("--one-hot", action="store_true", help="store labels as one-hot rows (HDF5)")
    p.add_argument("--seed", type=int, default=0, help="fixes the data")
    p.add_argument("--chunk-rows", type=int, default=32, help="HDF5 chunk length along the sample axis")
    p.add_argument("--formats", type=parse_list, default=["jpg"], help="with --images: file formats used in turn, "
                   "some of jpg,png,bmp,gif")
    p.set_defaults(func=synth_command)


def synth_command(args: argparse.Namespace) -> int:
    from raytrain.data.synth import IMAGE_FORMATS, make_hdf5, make_image_tree

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
