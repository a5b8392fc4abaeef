"""Environment variables raytrain reads or sets, each beside its default.

A leaf module: it imports nothing from raytrain, so every layer may use it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, MutableMapping

VERBOSE_ENV = "RAYTRAIN_VERBOSE"  # "1" (set by --verbose, for the driver and the workers): show every output
HOME_ENV = "RAYTRAIN_HOME"  # where raytrain keeps state about simulated clusters
DEFAULT_HOME = "~/.raytrain"

# Ray 2.60 clusters require a token; the job client sends it only with RAY_AUTH_MODE=token.
RAY_AUTH_MODE_ENV = "RAY_AUTH_MODE"
RAY_AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
RAY_AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_RAY_AUTH_TOKEN_PATH = "~/.ray/auth_token"  # where `ray start` writes the token

# Ray's own override of a node's resources (JSON, e.g. {"CPU": 8}); read by ray.init, and
# by raytrain's check that a local run fits before Ray starts.
RAY_OVERRIDE_ENV = "RAY_OVERRIDE_RESOURCES"

# Set in every process that trains (the driver, Ray workers, `raytrain evaluate`), before
# TensorFlow loads:
# - TF_CPP_MIN_LOG_LEVEL quiets TensorFlow's C++ start-up messages;
# - TF_USE_LEGACY_KERAS makes tf.keras resolve to tf_keras (raytrain imports tf_keras itself);
# - TF_CPU_ALLOCATOR_USE_BFC keeps freed tensor memory in TensorFlow's own pool. With the
#   default allocator, feeding batches from Python made every step fault its activations
#   back in from the kernel (docs/decisions.md);
# - PYTHONUNBUFFERED: a worker's lines reach its log file as they are written;
# - KERAS_BACKEND: Keras 3 picks its backend once, at its import, and raytrain trains Keras 3
#   models on JAX (raytrain.frameworks). Like the others it is a default: a value the user
#   set stays, and a Keras 3 run refuses any other backend in one line.
LEGACY_KERAS_ENV = {"TF_USE_LEGACY_KERAS": "1"}  # also set by raytrain.backend where TF_CONFIG is
WORKER_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    **LEGACY_KERAS_ENV,
    "TF_CPU_ALLOCATOR_USE_BFC": "true",
    "PYTHONUNBUFFERED": "1",
    "KERAS_BACKEND": "jax",
}

# How often Ray Train's controller polls its workers (Ray's default: 2 s). A worker's
# ray.train.report puts into a queue of one result that only a poll empties, so from the
# third epoch on every epoch waited for the next poll. Ray Train passes the driver's value
# on to the controller. Set in the driver by raytrain train/tune.
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_S = "0.1"

# Ray Train's preemption watcher (on by default in Ray 2.60): one more actor, a Python
# process of its own, at every worker group start, that polls Ray for draining nodes so a
# training function can call ray.train.get_preemption_info(). raytrain does not call it: a
# preempted node's workers get SIGTERM and checkpoint at their next step
# (docs/guides/spot-elastic.md), so the watcher only costs a process per group start.
# Ray Train passes the driver's value on to the controller; a user's own value is kept.
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
PREEMPTION_WATCHER = "0"

# How long Ray Train waits for a worker group's placement group before it gives up and
# decides again (Ray's default: 60 s; a controller error, retried without limit). An
# elastic run sizes each group from the resources Ray Data's autoscaling coordinator calls
# ready, and that view refreshes every 20 s: right after a lost node it still counts the
# node, the group of the old size cannot be placed, and the run sat out the whole 60 s
# before it went on with the workers left (74 s from the node's end to the next step on
# the simulated cluster). Elastic runs only: a fixed-size run waits for its N workers
# anyway, and would only log a retry every 10 s while the autoscaler adds nodes.
GROUP_START_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
ELASTIC_GROUP_START_S = "10"


def set_worker_env(environ: MutableMapping[str, str]) -> None:
    """Put :data:`WORKER_ENV`, Ray Train's poll interval (:data:`TRAIN_POLL_ENV`) and its
    preemption watcher's switch (:data:`PREEMPTION_WATCHER_ENV`) into ``environ`` where the
    user has not set the variable. They are the same for every run, so they stay:
    TensorFlow reads its variables once, when it loads."""
    for key, value in {**WORKER_ENV, TRAIN_POLL_ENV: TRAIN_POLL_S, PREEMPTION_WATCHER_ENV: PREEMPTION_WATCHER}.items():
        environ.setdefault(key, value)


@contextlib.contextmanager
def run_env(environ: MutableMapping[str, str], elastic: bool = False, verbose: bool = False) -> Iterator[None]:
    """:func:`set_worker_env`, plus for the length of one run the settings that belong to
    it alone: with ``elastic``, Ray Train's group start timeout (:data:`GROUP_START_ENV`),
    with ``verbose``, :data:`VERBOSE_ENV`. Those two are put back as they were when the
    run ends, so a later run in the same process (a test, a notebook) does not inherit
    them; the user's own group start timeout is kept."""
    set_worker_env(environ)
    before = {key: environ.get(key) for key in (GROUP_START_ENV, VERBOSE_ENV)}
    if elastic:
        environ.setdefault(GROUP_START_ENV, ELASTIC_GROUP_START_S)
    if verbose:
        environ[VERBOSE_ENV] = "1"
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value

# Where Ray's state API clients in a run's processes find its cluster (Ray Train's
# placement-group cleaner among them); without either, they auto-detect, and with two Rays
# on one machine they may find the other (raytrain.modes.init_ray).
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
RAY_ADDRESS_ENV = "RAY_ADDRESS"
