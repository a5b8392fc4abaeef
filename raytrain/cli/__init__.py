"""raytrain's command line: one module per command; this one only registers them.

``raytrain train job.yaml --local`` trains in-process; ``--num-workers 2`` on Ray
workers on this machine; ``--num-workers 8 --gpus-per-worker 1 --address auto`` on a
cluster (see :mod:`raytrain.cli.train`).
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
from typing import Any, Optional, Sequence

from raytrain.cli import (
    bench,
    cluster,
    doctor,
    evaluate,
    index,
    report,
    runs,
    submit,
    synth,
    train,
    tune,
)
from raytrain.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    RaytrainError,
    TrainingFailed,
)

COMMANDS = [train, tune, synth, index, evaluate, report, runs, cluster, submit, doctor, bench]  # in --help order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raytrain", description="Train Keras models on data larger than memory, on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.command_parser(sub)
    return parser


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``raytrain`` console script."""
    args = build_parser().parse_args(submit.rewrite(list(sys.argv[1:] if argv is None else argv)))
    # SIGTERM unwinds like Ctrl-C, so `finally` blocks shut Ray down and no worker is orphaned.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return args.func(args)
    except RaytrainError as e:
        print(f"raytrain: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingFailed as e:
        print(f"raytrain: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        # A full disk where the driver writes (a run's status, summary, report): one line, not a traceback.
        print(f"raytrain: error: no space left on the device of {e.filename or 'a file raytrain writes'}; free "
              "some room there and run the command again (a run continues with --resume)", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM; a run's says where its newest checkpoint is
        print(f"raytrain: interrupted{f'; {e}' if str(e) else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
