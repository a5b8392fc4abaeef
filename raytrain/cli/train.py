"""``raytrain train``: train a model as a job file and flags say.

One process, this machine (in-process, Ray Train local mode)::

    raytrain train job.yaml --local

Several workers on this machine (a private local Ray instance)::

    raytrain train job.yaml --num-workers 2

A Ray cluster (GPU nodes: one replica per GPU of each worker)::

    raytrain train job.yaml --num-workers 8 --gpus-per-worker 1 --address auto

Every job key has a flag of the same name (``training.batch_size`` -> ``--batch-size``);
``--data`` sets ``data.paths`` and ``--model`` sets ``model.builder``. Bad input prints
one line and exits with code 2; failed training exits with 1, an interruption with 130.
"""

from __future__ import annotations

import argparse
from typing import Any

from raytrain.cli.jobflags import add_job_flags, job_from_args


def command_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model (locally, or on Ray workers)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_flags(p)
    p.add_argument("--verbose", action="store_true",
                   help="show the workers' and Ray's own output (TensorFlow start-up, Ray Train) besides raytrain's")
    p.add_argument("--resume", action="store_true",
                   help="continue a stopped run from its newest checkpoint: the run named by --name (or run.name), "
                   "else the newest run of this job in the storage path; its saved job is used, flags still override")
    p.set_defaults(func=train_command)


def train_command(args: argparse.Namespace) -> int:
    from raytrain.trainer import run  # TensorFlow, Ray: only when training

    job = job_from_args(args)
    summary = run(job, resume=args.resume, verbose=args.verbose)
    if summary is None:
        print(f"raytrain: run {job.run_dir} already finished its {job.training.epochs} epochs; nothing to do")
        return 0
    print(summary.render())
    return 0
