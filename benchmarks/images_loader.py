"""raytrain's image input-pipeline benchmark, as a script anyone can run.

    python benchmarks/images_loader.py               # 3,000 synthetic 256x256 JPEGs -> 200x200
    python benchmarks/images_loader.py photos/       # your class-per-folder tree of JPEGs
    python benchmarks/images_loader.py --help        # every option (same as `raytrain bench --images`)

The same measurement as ``raytrain bench --images`` (see raytrain/bench/images.py for
what each row means); the JSON goes to benchmarks/results/images-<date>.json unless
``--out`` is given.
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
        args += ["--out", os.path.join(HERE, "results", f"images-{datetime.date.today().isoformat()}.json")]
    sys.exit(main(["bench", "--images", *args]))
