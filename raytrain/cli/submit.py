"""``raytrain submit``: run ``raytrain train`` on a cluster as a Ray Job."""

from __future__ import annotations

import argparse
from typing import Any

from raytrain.cli.jobflags import add_job_flags, job_from_args
from raytrain.cluster import jobs


def command_parser(sub: Any) -> None:
    p = sub.add_parser("submit", help="run raytrain train on a Ray cluster as a Ray Job and stream its logs",
                       description="Submit `raytrain train` to a cluster's job server. Takes the same job file and "
                       "flags as `raytrain train`; --num-workers is still the one flag that scales. Data and storage "
                       "paths must be reachable from the cluster (shared filesystem or URIs).")
    add_job_flags(p, skip=(("scaling", "address"),))
    p.add_argument("--address", required=True, help="the cluster's job server, e.g. http://127.0.0.1:8265")
    p.set_defaults(func=submit_command)


def submit_command(args: argparse.Namespace) -> int:
    jobs.use_token_auth()  # before Ray is imported

    setattr(args, "scaling.address", "auto")
    job = job_from_args(args)
    return jobs.submit(job, args.address, progress=lambda text: print(f"raytrain: {text}", flush=True))
