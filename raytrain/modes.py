"""How a run executes, chosen once: in this process, on Ray Train workers, or as a Tune trial.

:func:`choose` picks one :class:`Mode` from the job; the driver (:mod:`raytrain.trainer`)
and the worker loop (:mod:`raytrain.worker`) ask it what differs, instead of testing the
worker count or a flag in many places:

- **in-process** (``--local``, ``scaling.num_workers: 0``): Ray Train's local mode runs
  the loop in this process. No Ray is started; the index tables are handed to the loop
  as they are (as Ray Datasets they would start Ray only to hand the same rows back) and
  progress goes to an object of this process. raytrain keeps its checkpoints itself.
- **Ray workers** (``--num-workers N``): a private local Ray (``ray.init(address="local")``)
  or the cluster at ``scaling.address``; Ray Data hands each worker its fixed shard of the
  index, progress goes through an actor, and Ray Train copies rank 0's epoch checkpoints.
- **Tune trial** (``raytrain tune``): Ray workers inside a Ray Tune search, whose Ray is
  up already and which bounds the resources; each epoch's report goes on to Tune and no
  progress is printed (the search prints a line per trial).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
from typing import Any, Iterator, Optional

from raytrain import compat
from raytrain.cluster import reaper
from raytrain.config import JobConfig
from raytrain.data import store
from raytrain.env import API_SERVER_ENV, RAY_ADDRESS_ENV, RAY_OVERRIDE_ENV, VERBOSE_ENV, WORKER_ENV
from raytrain.errors import RaytrainError
from raytrain.models import build_model
from raytrain.run.progress import ProgressPrinter, ProgressSink, quiet_stderr, start_sink


class Mode:
    """What differs between the ways a run executes (see the module docstring)."""

    name = ""
    in_process = False  # the loop runs in the driver's process; no Ray is started
    ray_datasets = True  # the workers get their shards from Ray Data

    def check_machine(self, job: JobConfig) -> None:
        """Checks that need no Ray, before the data is indexed."""

    def check_model(self, spec: Any) -> None:
        """Build the model once on the driver, so a builder that fails for this data is one
        line here rather than a traceback from every worker."""
        with quiet_stderr():
            hide_gpus(spec.job.model.framework)
            _check_model(spec)

    @contextlib.contextmanager
    def session(self, job: JobConfig, verbose: bool, listener: Any = None) -> Iterator[Optional[ProgressSink]]:
        """Ray (as this mode needs it) and the progress printer, for the length of the fit;
        yields where the loop sends its progress. ``listener`` gets the messages too (see
        :class:`ProgressPrinter`)."""
        yield None

    def callbacks(self) -> list[Any]:
        """Ray Train run callbacks."""
        return []


class InProcess(Mode):
    name = "in-process"
    in_process = True
    ray_datasets = False

    def check_model(self, spec: Any) -> None:
        """Nothing: the loop builds the model in this process, and must set its framework up
        (TensorFlow's strategy, JAX's distribution) before anything else touches it."""

    @contextlib.contextmanager
    def session(self, job: JobConfig, verbose: bool, listener: Any = None) -> Iterator[Optional[ProgressSink]]:
        import ray.train  # noqa: F401  (sets up Ray Train's loggers: quiet them after)

        if not verbose:
            quiet_ray_loggers()
        sink = ProgressSink()
        printer = ProgressPrinter(sink, listener=listener).start()
        try:
            yield sink
        finally:
            printer.stop()


class RayWorkers(Mode):
    name = "ray-workers"

    def check_machine(self, job: JobConfig) -> None:
        if job.scaling.address is None:  # on a cluster an autoscaler may add nodes
            _check_resources(job, machine_resources())

    @contextlib.contextmanager
    def session(self, job: JobConfig, verbose: bool, listener: Any = None) -> Iterator[Optional[ProgressSink]]:
        import ray

        init_ray(job, verbose)
        printer = None
        try:
            sink = start_sink()
            printer = ProgressPrinter(sink, listener=listener).start()
            _check_resources(job, ray.cluster_resources())
            yield sink
        finally:
            if printer is not None:
                printer.stop()
            ray.shutdown()


class TuneTrial(Mode):
    name = "tune-trial"

    def callbacks(self) -> list[Any]:
        from ray.tune.integration.ray_train import TuneReportCallback

        return [TuneReportCallback()]  # each epoch's report goes on to Tune


def choose(job: JobConfig, in_tune: bool = False) -> Mode:
    """The one place a run's mode is decided."""
    if in_tune:
        return TuneTrial()
    return InProcess() if job.scaling.num_workers == 0 else RayWorkers()


def machine_resources() -> dict[str, float]:
    """The CPUs and GPUs a local Ray would find on this machine, without starting it, so a
    run that cannot fit fails before Ray's and TensorFlow's start-up. Ray's own counts
    override both, as in ``ray.init`` (``RAY_OVERRIDE_RESOURCES``); the check after
    ``ray.init`` still catches what this misses."""
    try:
        override = json.loads(os.environ.get(RAY_OVERRIDE_ENV) or "{}")
    except ValueError:
        override = {}  # ray.init says what is wrong with it
    cpus = override["CPU"] if "CPU" in override else cpu_count()
    return {"CPU": cpus, "GPU": override["GPU"] if "GPU" in override else compat.gpu_count()}


def cpu_count() -> float:
    """The CPUs this process may use: its affinity mask, capped by a cgroup CPU quota
    (containers), as Ray counts them."""
    count: float = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota()
    return count if quota is None else max(1, min(count, math.floor(quota)))


def _cgroup_cpu_quota() -> Optional[float]:
    """The cgroup's CPU limit in CPUs (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as q, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as p:
            quota_us, period_us = int(q.read()), int(p.read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def _check_resources(job: JobConfig, have: dict[str, float]) -> None:
    """Fail fast locally when the workers cannot fit in ``have`` (the cluster's or this
    machine's resources); on a cluster, say what we wait for."""
    s = job.scaling
    least = s.worker_range[0]  # an elastic run starts once its minimum fits
    need = {"CPU": least * s.cpus_per_worker, "GPU": least * s.gpus_per_worker}
    short = {k: v for k, v in need.items() if v > have.get(k, 0) + 1e-9}
    if not short:
        return
    per = {"CPU": s.cpus_per_worker, "GPU": s.gpus_per_worker}
    detail = ", ".join(f"{v:g} {k}s ({per[k]:g} per worker)" for k, v in short.items())
    has = ", ".join(f"{have.get(k, 0):g} {k}s" for k in short)
    if s.address is None:
        flag = "--cpus-per-worker" if "CPU" in short else "--gpus-per-worker"
        raise RaytrainError(
            f"--num-workers {least} needs {detail} but this machine has {has}; "
            f"lower --num-workers or {flag} (or pass --address to use a cluster)"
        )
    print(f"raytrain: waiting for the cluster to provide {detail} (it has {has} now; an autoscaler may add nodes)")


def _check_model(spec: Any) -> None:
    """Build and compile the model once on the driver (see :meth:`Mode.check_model`)."""
    m, t = spec.job.model, spec.job.training
    build_model(m, t, spec.read.sample_shape, spec.num_classes, spec.one_hot, framework=m.framework)


def hide_gpus(framework: str = "tf_keras") -> None:
    """Keep this process's framework off the GPUs (the driver, when Ray workers train).

    JAX reserves 75% of every GPU's memory when it first touches them, and reads
    ``JAX_PLATFORMS`` only then: the variable keeps the driver's JAX on the CPU when it has
    not started yet.

    TensorFlow reserves nearly all memory of every GPU it sees when it first touches them;
    the driver's one check build of the model (:func:`_check_model`) would then starve the
    workers on its node. Hiding the GPUs before any device is initialized builds it on the
    CPU. Not in-process: there the loop trains in this process. (Reasoned from
    TensorFlow's documented allocator behaviour; no GPU was available to measure it.)
    """
    if framework == "keras":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        return
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialized in this process: nothing to change now
        pass


def init_ray(job: JobConfig, verbose: bool) -> None:
    """Start a private local Ray, or join the cluster at ``scaling.address``. Unless
    ``verbose``, workers' output stays in their log files (``/tmp/ray/session_*/logs``)
    and Ray's own INFO/WARNING lines are not shown: progress and errors reach the
    console through raytrain (:mod:`raytrain.run.progress`)."""
    quiet = {} if verbose else {"log_to_driver": False, "logging_level": logging.ERROR}
    with keep_sigterm_handler():
        _init(job, verbose, quiet)
    from ray.data import (
        DataContext,  # configures Ray Data's loggers: quiet them after this
    )

    if not verbose:
        quiet_ray_loggers()
    DataContext.get_current().enable_progress_bars = False


@contextlib.contextmanager
def keep_sigterm_handler() -> Iterator[None]:
    """``ray.init`` installs Ray's native failure handler for SIGTERM in the driver, which
    prints a stack dump and aborts (exit 134) instead of the Python handler that ends a run
    as Ctrl-C does (raytrain.cli.main): that handler is put back after it."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(previous) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _init(job: JobConfig, verbose: bool, quiet: dict[str, Any]) -> None:
    import ray

    # Workers read object storage with the driver's cloud settings (endpoint, region, profile).
    env_vars = {**store.worker_env(os.environ), **WORKER_ENV, **({VERBOSE_ENV: "1"} if verbose else {})}
    if job.scaling.address is None:
        from raytrain.backend import free_port

        # Ray Train's placement-group cleaner asks the dashboard's state API whether the run's
        # controller lives, and finds the dashboard by auto-detection: with a second Ray on the
        # machine it asks the wrong one, hears "not alive" and removes this run's placement
        # group, ending its workers. Its address is given instead (and kept on loopback).
        port = free_port()
        env_vars[API_SERVER_ENV] = f"http://127.0.0.1:{port}"
        context = ray.init(address="local", dashboard_host="127.0.0.1", dashboard_port=port,
                           runtime_env={"env_vars": env_vars}, **quiet)
        reaper.start(context.address_info["session_dir"])  # ends the local Ray if this driver is killed
    else:
        if not job.scaling.address.startswith("ray://"):
            env_vars[RAY_ADDRESS_ENV] = job.scaling.address  # the same for a cluster: its own address
        ray.init(address=job.scaling.address, runtime_env={"env_vars": env_vars}, **quiet)


def quiet_ray_loggers() -> None:
    """Ray sets levels on some of its own loggers (its worker module relays the raylet's
    warnings, Ray Train's local mode logs every report): quiet every one that exists now;
    later ones inherit "ray"'s level."""
    for name in ["ray", *[n for n in logging.root.manager.loggerDict if n.startswith("ray.")]]:
        logging.getLogger(name).setLevel(logging.ERROR)
