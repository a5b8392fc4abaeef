"""A SIGTERM (a spot or preemptible node's notice) becomes a checkpoint at the next step.

AWS gives a spot node 2 minutes' notice, GCP a preemptible one 30 seconds; the processes
on the node get SIGTERM before it goes. A training process's handler does not end it at
once: it marks the request, and the workers' step clock
(:class:`raytrain.run.reporter.StepClock`) sees it at its next check, which every worker
reaches at the same step (an all-reduce of each worker's flag), so every worker saves
the same step's checkpoint. Then every worker stops: Ray workers raise
:class:`raytrain.errors.Preempted` and Ray Train restarts the group from that
checkpoint (``run.max_failures``) on the nodes still there, or ``--resume`` continues
it; local mode ends the run as interrupted (exit 130).

The handler returns at once: a Ray worker's main thread, where it runs, also serves
Ray Train's calls that each epoch's report waits on (a handler that waited there for the
checkpoint stalled training until it gave up). A second SIGTERM, or one
outside ``fit``, does what the replaced handler did (Ray's: the process exits).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

_requested = threading.Event()
_training = threading.Event()


def install() -> None:
    """Handle SIGTERM as described above (only the main thread can: elsewhere, e.g. a
    trial of ``raytrain tune`` in a thread, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        if _requested.is_set() or not _training.is_set():
            if callable(previous):
                previous(signum, frame)
                return
            raise SystemExit(128 + signum)
        _requested.set()

    signal.signal(signal.SIGTERM, handler)


def requested() -> bool:
    """Whether this process was asked to stop."""
    return _requested.is_set()


def training(active: bool) -> None:
    """Mark whether ``fit`` runs (outside it a SIGTERM needs no checkpoint)."""
    (_training.set if active else _training.clear)()
