"""The exceptions users see, and how the CLI ends on them.

A :class:`RaytrainError` is a problem with the user's input or environment that the
user can fix. Its message is one line: what is wrong, what was found, how to fix it.
The CLI prints it as ``raytrain: error: <message>`` and exits with code 2, without a
traceback. :class:`TrainingFailed` is a run whose workers failed: one line, exit 1.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
from typing import Optional

EXIT_FAILED = 1  # training failed (workers died or raised); the newest checkpoint can be resumed
EXIT_USER_ERROR = 2  # bad input: fix it and run again
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, as a shell reports SIGINT


class RaytrainError(ValueError):
    """A user-fixable problem; the message names the problem and the fix."""


class StoreUnreachable(RaytrainError):
    """The data's object store did not answer. On the driver, before training, it is the
    user's network or endpoint (exit 2); raised while training, the store went away under
    a running run, which is a failure to resume from (exit 1, see :mod:`raytrain.trainer`)."""


class TrainingFailed(Exception):
    """The workers failed (died, or raised) more often than ``run.max_failures`` allows.
    Not bad input: the CLI prints the one-line message and exits with code 1."""


class Preempted(TrainingFailed):
    """A worker received SIGTERM (a spot node's notice): every worker saved a checkpoint
    at the same step and stopped (see :mod:`raytrain.run.preemption`)."""


class LossNotFinite(TrainingFailed):
    """The training loss became NaN or infinite; raised on every rank at the same step
    (the loss is all-reduced, so every rank sees it)."""


def find_user_error(exc: BaseException) -> Optional[RaytrainError]:
    """The first :class:`RaytrainError` inside an exception raised through Ray (see
    :func:`find_error`), as a one-line error, or None."""
    found = find_error(exc, RaytrainError)
    if found is None:
        return None
    return RaytrainError(str(found).splitlines()[0] if str(found) else type(found).__name__)


def find_error(exc: BaseException, kind: type) -> Optional[BaseException]:
    """Find an exception of type ``kind`` inside an exception raised through Ray.

    Ray wraps a worker's exception in its own types (``RayTaskError``, Ray Train's
    ``WorkerGroupError`` with per-rank ``worker_failures``); the worker's error is in
    the chain, or in the failures of the ranks.

    Args:
        exc: The exception caught on the driver.
        kind: The type to look for.

    Returns:
        The first one found, or None.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        err = todo.pop(0)
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, kind):
            return err
        for attr in ("cause", "__cause__", "__context__", "controller_failure"):
            nested = getattr(err, attr, None)
            if isinstance(nested, BaseException):
                todo.append(nested)
        failures = getattr(err, "worker_failures", None)
        if isinstance(failures, dict):
            todo.extend(f for _, f in sorted(failures.items()) if isinstance(f, BaseException))
    return None


NO_SPACE = "No space left on device"  # strerror(ENOSPC), also in the text of an error relayed by Ray


def no_space(exc: BaseException) -> bool:
    """Whether a full disk is behind ``exc`` (an OSError with ENOSPC in its chain, or its
    text inside Ray's wrappers)."""
    found = find_error(exc, OSError)
    if isinstance(found, OSError) and found.errno == errno.ENOSPC:
        return True
    texts = [str(exc), *(str(f) for f in (getattr(exc, "worker_failures", None) or {}).values())]
    return any(NO_SPACE in text for text in texts)
