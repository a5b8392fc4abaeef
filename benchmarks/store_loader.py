"""raytrain's object-storage benchmark, as a script anyone can run.

    python benchmarks/store_loader.py                          # moto's S3 server on 127.0.0.1, 8 objects
    python benchmarks/store_loader.py --store s3://bucket/tmp  # your bucket (your credentials)
    python benchmarks/store_loader.py --help                   # every option (same as `raytrain bench`)

The same measurement as ``raytrain bench --store`` (see raytrain/bench/store.py for what
each row means); the JSON goes to benchmarks/results/store-<date>.json unless ``--out`` is given.
"""

import datetime
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from raytrain.cli import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a == "--store" or a.startswith("--store=") for a in args):
        args = ["--store", *args]
    if "--out" not in args and not any(a.startswith("--out=") for a in args):
        args += ["--out", os.path.join(HERE, "results", f"store-{datetime.date.today().isoformat()}.json")]
    sys.exit(main(["bench", *args]))
