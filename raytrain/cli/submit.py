"""``raytrain submit [train|tune]``: run ``raytrain train`` (the default) or ``raytrain tune`` as a Ray Job."""

from __future__ import annotations

import argparse
from typing import Any

from raytrain import config as cfg
from raytrain.cli.jobflags import add_job_flags, job_from_args
from raytrain.cli.tune import add_tune_flags, tune_flags
from raytrain.cluster import jobs
from raytrain.errors import RaytrainError
from raytrain.space import options_from

WHAT = ("train", "tune")  # `raytrain submit tune ...` is read as `raytrain submit --what tune ...`


def command_parser(sub: Any) -> None:
    p = sub.add_parser("submit", help="run raytrain train (or tune) on a Ray cluster as a Ray Job and stream its logs",
                       description="Submit `raytrain train` (or, as `raytrain submit tune`, `raytrain tune`) to a "
                       "cluster's job server. Takes the same job file and flags as that command; --num-workers is "
                       "still the one flag that scales. Data and storage paths must be reachable from the cluster "
                       "(shared filesystem or URIs).")
    add_job_flags(p, skip=(("scaling", "address"),))
    add_tune_flags(p)
    p.add_argument("--address", required=True, help="the cluster's job server, e.g. http://127.0.0.1:8265")
    p.add_argument("--what", choices=WHAT, default="train",
                   help="the command to run on the cluster (also given as `raytrain submit tune ...`); default: train")
    p.set_defaults(func=submit_command)


def rewrite(argv: list[str]) -> list[str]:
    """``submit tune ARGS`` -> ``submit --what tune ARGS`` (and ``submit train`` likewise)."""
    if len(argv) >= 2 and argv[0] == "submit" and argv[1] in WHAT:
        return ["submit", "--what", argv[1], *argv[2:]]
    return argv


def submit_command(args: argparse.Namespace) -> int:
    jobs.use_token_auth()  # before Ray is imported

    setattr(args, "scaling.address", "auto")
    job = job_from_args(args)
    tune = None
    if args.what == "tune":
        section = cfg.load_tune_section(args.job) if args.job else {}
        tune = options_from(section, tune_flags(args), job).to_dict()
    elif any(v is not None for v in tune_flags(args).values()):
        raise RaytrainError("--search, --trials, --metric, ... belong to a search: use raytrain submit tune")
    return jobs.submit(job, args.address, progress=lambda text: print(f"raytrain: {text}", flush=True), tune=tune)
