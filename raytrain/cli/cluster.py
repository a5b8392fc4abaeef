"""``raytrain up`` / ``raytrain down``: the cluster of a cluster file."""

from __future__ import annotations

import argparse
from typing import Any

from raytrain.cli.lazy import module_doc


def command_parser(sub: Any) -> None:
    for name, what in (("up", "start"), ("down", "stop")):
        p = sub.add_parser(name, help=f"{what} the cluster a cluster YAML describes (ray {name}, or a simulated one here)",
                           description=module_doc("raytrain.cluster.launch"), formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("cluster", help="a cluster YAML, e.g. clusters/local-sim.yaml")
        p.set_defaults(func=up_command if name == "up" else down_command)


def up_command(args: argparse.Namespace) -> int:
    from raytrain.cluster import launch

    launch.up(args.cluster, progress=lambda text: print(f"raytrain: {text}", flush=True))
    return 0


def down_command(args: argparse.Namespace) -> int:
    from raytrain.cluster import launch

    launch.down(args.cluster, progress=lambda text: print(f"raytrain: {text}", flush=True))
    return 0
