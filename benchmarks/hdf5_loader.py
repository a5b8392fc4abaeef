"""raytrain's HDF5 input-pipeline benchmark, as a script anyone can run.

    python benchmarks/hdf5_loader.py                 # 20,000 x 64x64x3 uint8, 32-row chunks
    python benchmarks/hdf5_loader.py data/train.h5   # your file
    python benchmarks/hdf5_loader.py --help          # every option (same as `raytrain bench`)

The same measurement as ``raytrain bench`` (see raytrain/bench/hdf5.py for what each row
means); the JSON goes to benchmarks/results/hdf5-<date>.json unless ``--out`` is given.
"""

import datetime
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from raytrain.cli import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args and not any(a.startswith("--out=") for a in args):
        args += ["--out", os.path.join(HERE, "results", f"hdf5-{datetime.date.today().isoformat()}.json")]
    sys.exit(main(["bench", *args]))
