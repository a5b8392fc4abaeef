"""``raytrain tune``: a hyperparameter search, each trial a whole raytrain run, weak trials stopped early.

Sweep the learning rate and the batch size, 8 trials, 2 workers each::

    raytrain tune job.yaml --search 'model.learning_rate=loguniform(1e-4,1e-2)' \\
        --search 'training.batch_size=choice(32,64,128)' --trials 8 --metric val_accuracy --num-workers 2

Any job key can be searched with choice(...), grid(...), uniform(low,high),
loguniform(low,high) or randint(low,high) (high excluded); the same search can live in
the job file's ``tune:`` section (see raytrain.space). Every trial writes a complete run
to <storage_path>/<name>/trial_NNNNN/; the search writes trials.txt, best.json,
best_model.keras and report.png beside them. Continue an interrupted search with
``raytrain tune --resume --name NAME``. Bad input exits with 2, a search where every
trial failed with 1, an interrupted one with 130.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from raytrain import config as cfg
from raytrain.cli.jobflags import add_job_flags, job_from_args
from raytrain.errors import EXIT_FAILED, EXIT_INTERRUPTED, RaytrainError
from raytrain.run import rundir, storage
from raytrain.space import DISTRIBUTIONS, SCHEDULERS, options_from

TUNE_FLAGS = ("search", "trials", "metric", "mode", "scheduler", "max_concurrent")


def add_tune_flags(p: argparse.ArgumentParser) -> None:
    """The search's own flags (shared with ``raytrain submit tune``)."""
    g = p.add_argument_group("search (job file section 'tune')")
    g.add_argument("--search", action="append", metavar="KEY=DIST(ARGS)",
                   help=f"a job key and its distribution: {', '.join(DISTRIBUTIONS)}; e.g. "
                   "model.learning_rate=loguniform(1e-4,1e-2) (repeat for several keys)")
    g.add_argument("--trials", type=int, help="samples drawn from the search (Ray Tune's num_samples; grid keys "
                   "multiply them); default: 8, or 1 when every key is a grid")
    g.add_argument("--metric", help="what the search optimizes, as the runs report it (val_accuracy, val_loss, "
                   "loss, ...); default: the job's first metric on validation")
    g.add_argument("--mode", metavar="{max,min}", help="whether a higher or lower metric is better; default: max "
                   "for accuracy-like metrics, min for losses and errors")
    g.add_argument("--scheduler", metavar="{" + ",".join(SCHEDULERS) + "}",
                   help="asha: stop weak trials early (Ray Tune's ASHA); fifo: run every trial to the end; "
                   "default: asha")
    g.add_argument("--max-concurrent", dest="max_concurrent", type=int,
                   help="trials at a time; default: as many as the cluster's CPUs and GPUs hold")


def tune_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name, None) for name in TUNE_FLAGS}


def command_parser(sub: Any) -> None:
    p = sub.add_parser("tune", help="search hyperparameters with Ray Tune, each trial a raytrain run",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_flags(p)
    add_tune_flags(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted search named by --name in --storage-path (Ray Tune's restore): "
                   "finished trials are kept, unfinished ones continue from their newest checkpoint")
    p.add_argument("--verbose", action="store_true", help="show Ray's, Ray Tune's and the trials' own output")
    p.set_defaults(func=tune_command)


def _resumed_job(args: argparse.Namespace) -> cfg.JobConfig:
    """The saved base job of the search ``--resume`` continues."""
    name = getattr(args, "run.name", None)
    if not name:
        raise RaytrainError("--resume: name the search to continue with --name (see raytrain runs)")
    given = [f"--{flag.replace('_', '-')}" for flag, value in tune_flags(args).items() if value is not None]
    if args.job or given:
        raise RaytrainError("--resume continues the saved search as it was; pass only --name, --storage-path "
                            f"and --verbose (drop {', '.join(given) or args.job})")
    base = cfg.validate_storage_path(getattr(args, "run.storage_path", None) or cfg.RunSection().storage_path)
    folder = storage.join(base, name)
    job = cfg.from_dict(rundir.read_search(folder)["job"])
    job.run.name, job.run.storage_path = name, base
    return job


def tune_command(args: argparse.Namespace) -> int:
    from raytrain.tuning import run_search  # Ray Tune, TensorFlow: only when searching

    if args.resume:
        job, options = _resumed_job(args), None
    else:
        job = job_from_args(args)
        options = options_from(cfg.load_tune_section(args.job) if args.job else {}, tune_flags(args), job)
    summary = run_search(job, options, resume=args.resume, verbose=args.verbose)
    print(summary.render())
    if summary.interrupted:
        print(f"raytrain: continue the search with: raytrain tune --resume --name {job.run.name} "
              f"--storage-path {job.run.storage_path}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if summary.best is None:
        print("raytrain: error: every trial failed; see the table above and each trial's run directory",
              file=sys.stderr)
        return EXIT_FAILED
    return 0
