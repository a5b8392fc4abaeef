"""``raytrain runs``: the runs in a storage path."""

from __future__ import annotations

import argparse
from typing import Any

from raytrain.errors import RaytrainError
from raytrain.run import runs, storage


def command_parser(sub: Any) -> None:
    p = sub.add_parser("runs", help="list the runs in a storage path: status, epochs, best metric, wall time",
                       description=runs.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("storage_path", nargs="?", default="./runs", help="where the runs are (default ./runs)")
    p.set_defaults(func=runs_command)


def runs_command(args: argparse.Namespace) -> int:
    if not storage.exists(args.storage_path):
        raise RaytrainError(f"storage path {args.storage_path} does not exist; pass the run.storage_path of your runs")
    found = runs.list_runs(args.storage_path)
    print(runs.render(found) if found else f"no runs in {args.storage_path}")
    return 0
