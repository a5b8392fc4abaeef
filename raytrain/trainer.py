"""Driver side of a run: index, Ray, Ray Train, results.

``run(job)`` builds and validates the index on the driver (so bad input fails before
any worker starts), starts or joins Ray, checks that the cluster can hold the
workers, hands the index to Ray Train, and summarises the run.

How the run executes (in this process, on Ray workers, as a Tune trial) is chosen once,
by :func:`raytrain.modes.choose`. Without ``scaling.address`` raytrain starts a private
Ray instance with ``ray.init(address="local")``; it never attaches to a cluster it was
not told about.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow as pa

from raytrain import errors, frameworks, modes
from raytrain.config import PLACEMENTS, JobConfig
from raytrain.data.kinds import build_index
from raytrain.data.loader import ReadSpec, auto_window, reading_threads
from raytrain.data.plan import StepPlan, plan_steps
from raytrain.data.schema import SampleIndex
from raytrain.data.split import split_index
from raytrain.env import run_env
from raytrain.errors import (
    LossNotFinite,
    RaytrainError,
    StoreUnreachable,
    TrainingFailed,
    find_error,
    find_user_error,
)
from raytrain.models import resolve_builder
from raytrain.modes import cpu_count, hide_gpus, init_ray, machine_resources  # noqa: F401  (raytrain.trainer's API)
from raytrain.run import checkpoint, rundir, runs, storage, tracking
from raytrain.run.progress import quiet_stderr
from raytrain.worker import WorkerSpec, train_loop

# Ray and Ray Train are imported where they are used, so commands that do not train never load them.


@dataclass
class RunSummary:
    """What a finished run did and where it wrote it."""

    run_dir: str
    epochs: int
    num_workers: int
    train_samples: int
    val_samples: int
    final_metrics: dict[str, float]
    samples_per_s: float  # mean over epochs, whole cluster
    data_wait_fraction: float  # mean over epochs: share of step time spent waiting for data
    wall_time_s: float
    skipped_files: int = 0  # bad images replaced under data.on_bad_sample: skip
    elastic: str = ""  # an elastic run: its range and each epoch's count (raytrain.run.runs)
    files: dict[str, str] = field(default_factory=dict)

    def render(self) -> str:
        """A one-screen text summary."""
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in self.final_metrics.items() if k not in rundir.RUN_KEYS)
        where = "local, in-process" if self.num_workers == 0 else f"{self.num_workers} workers"
        if self.elastic:
            where = f"elastic, {self.elastic} workers"
        lines = [
            "",
            f"raytrain: finished {self.epochs} epochs ({where})",
            f"  samples       {self.train_samples} train, {self.val_samples} validation",
            f"  final         {metrics}",
            f"  throughput    {self.samples_per_s:,.0f} samples/s (training, all workers)",
            f"  data wait     {100 * self.data_wait_fraction:.1f}% of training time (mean over epochs)",
            f"  wall time     {self.wall_time_s:.1f} s",
        ]
        if self.skipped_files:
            lines.append(f"  skipped       {self.skipped_files} bad files (data.on_bad_sample: skip)")
        lines += [f"  {name:<13} {path}" for name, path in self.files.items()]
        return "\n".join(lines)


def _check_run_dir(job: JobConfig, resume: bool) -> int:
    """A new run needs an empty run directory, a resumed one its job there and no fewer
    ``--epochs`` than it has trained. Returns the epochs a resumed run has done (0 for a
    new run)."""
    run_dir = job.run_dir
    if resume:
        if not rundir.is_run(run_dir):
            raise RaytrainError(f"--resume: {run_dir} holds no run; check --name and --storage-path")
        newest = checkpoint.latest(run_dir)
        done = newest[0] if newest else 0
        _check_same_order(job, checkpoint.found(run_dir))
        if job.training.epochs < done:
            raise RaytrainError(
                f"--resume --epochs {job.training.epochs}: {run_dir} has already trained {done} epochs; "
                f"pass --epochs {done} or more (more continues training)"
            )
        return done
    if [name for name in storage.listdir(run_dir) if name not in (rundir.CLAIM, tracking.STATE)]:
        hint = " or continue it with --resume" if checkpoint.latest(run_dir) else ""
        raise RaytrainError(
            f"run directory {run_dir} already holds a run; choose another --name or --storage-path{hint} "
            "(raytrain never overwrites a run)"
        )
    return 0


def _check_same_order(job: JobConfig, found: list[tuple[tuple[int, int], str]]) -> None:
    """A run resumed from a step checkpoint continues that epoch's order at its next step,
    which needs the order the epoch began with: the same global batch, partitions and seed.
    With others the steps already trained in that epoch would be thrown away without a
    word, so the resume is refused instead, naming what to pass."""
    if not found or not found[-1][0][1]:
        return
    (epoch, step), path = found[-1]
    state = json.loads(storage.read_text(storage.join(path, checkpoint.STATE_FILE)) or "{}")
    then = {"--batch-size": state.get("batch_size"), "--partitions": state.get("partitions"), "--seed": state.get("seed")}
    now = {"--batch-size": job.training.batch_size, "--partitions": job.data.partitions, "--seed": job.data.seed}
    changed = [f"{flag} {then[flag]}" for flag in then if then[flag] is not None and then[flag] != now[flag]]
    if changed:
        raise RaytrainError(
            f"--resume: the newest checkpoint of {job.run_dir} is at step {step} of epoch {epoch + 1}, whose sample "
            f"order was set by {', '.join(changed)}; resume with {' '.join(changed)} (another order would train "
            "that epoch's first steps again)"
        )


@dataclass(frozen=True)
class _Prepared:
    """What the driver works out before Ray starts."""

    spec: WorkerSpec
    index: SampleIndex
    train: pa.Table
    validation: pa.Table


def _prepare(job: JobConfig, mode: modes.Mode) -> _Prepared:
    """Index, split and plan on the driver, so bad input fails before any worker starts."""
    d, s = job.data, job.scaling
    job.model.framework = frameworks.resolve(job.model)  # once: the saved job and the workers carry the answer
    index = build_index(d)
    train_table, val_table, plan = _split_and_plan(job, index)
    read = ReadSpec(d, index.sample_shape, index.dtype, index.rows_per_block,
                    d.shuffle_window or auto_window(index.sample_bytes),
                    reading_threads(d, None if mode.in_process else s.cpus_per_worker))
    spec = WorkerSpec(job, plan, read, index.num_classes, index.one_hot, in_process=mode.in_process)
    mode.check_model(spec)
    return _Prepared(spec, index, train_table, val_table)


def _split_and_plan(job: JobConfig, index: SampleIndex) -> tuple[pa.Table, pa.Table, StepPlan]:
    d, s = job.data, job.scaling
    train_table, val_table = split_index(index.table, d.validation_ratio, d.seed)
    resolve_builder(job.model.builder, job.model.framework if job.model.framework != "auto" else "tf_keras")
    plan = plan_steps(train_table.num_rows, val_table.num_rows, s.world_size, job.training.batch_size,
                      s.replicas_per_worker)
    return train_table, val_table, plan


def plan_only(job: JobConfig, index: SampleIndex) -> StepPlan:
    """The step plan of ``job`` on ``index``: the checks of a run's start that need no
    TensorFlow (split, builder, steps), for a search to check its trials up front."""
    return _split_and_plan(job, index)[2]


def run(job: JobConfig, resume: bool = False, verbose: bool = False, in_tune: bool = False) -> Optional[RunSummary]:
    """Train as the (validated) job says and return a summary.

    Args:
        job: The validated job.
        resume: Continue the run in ``job.run_dir`` from its newest checkpoint (the
            epochs already done are not trained again). A finished run is left alone:
            the result is None.
        verbose: Show the workers' and Ray's own output (TensorFlow start-up, Ray Train's
            lines) instead of raytrain's progress only.
        in_tune: This is a trial of ``raytrain tune``, running inside Ray Tune (with Ray
            workers: Ray Train's local mode refuses its API inside a Tune function); see
            :mod:`raytrain.modes`.

    Raises:
        RaytrainError: Bad input, found on the driver or raised by a worker.
        TrainingFailed: The workers failed more often than ``run.max_failures`` allows.
    """
    with run_env(os.environ, job.scaling.elastic, verbose):
        return _run(job, resume, verbose, modes.choose(job, in_tune))


def _run(job: JobConfig, resume: bool, verbose: bool, mode: modes.Mode) -> Optional[RunSummary]:
    started = time.perf_counter()
    problem = storage.writable(job.run.storage_path)
    if problem:
        raise RaytrainError(
            f"run.storage_path {job.run.storage_path} {problem}; pass a folder you can write to with --storage-path"
        )
    mlflow_uri = tracking.check(job)
    with rundir.claim(job.run_dir):  # a second raytrain on the same run stops here, with one line
        done = _check_run_dir(job, resume)
        finished = (rundir.read_status(job.run_dir) or {}).get("status") == "finished"
        if resume and finished and done >= job.training.epochs:
            return None
        mode.check_machine(job)
        prepared = _prepare(job, mode)  # bad input fails here, before TensorFlow's import
        if job.model.framework == frameworks.TF_KERAS:
            with quiet_stderr():
                import tensorflow  # noqa: F401  (its C++ start-up lines go to /dev/null unless --verbose)
        if resume:
            _check_same_data(job, prepared.index)
        log = tracking.RunLog(job, mlflow_uri, prepared.index.fingerprint()) if mlflow_uri else None
        try:
            try:
                with mode.session(job, verbose, log) as sink:
                    spec = prepared.spec if sink is None else dataclasses.replace(prepared.spec, sink=sink)
                    _train(spec, prepared, resume, mode)
            except KeyboardInterrupt:
                # Written once the session has ended the workers, so no checkpoint lands after it.
                def interrupted() -> None:
                    if rundir.read_status(job.run_dir) is not None:  # training had begun
                        rundir.write_status(job.run_dir, "interrupted", num_workers=job.scaling.num_workers)

                rundir.best_effort(f"write {rundir.STATUS} in {job.run_dir}", interrupted)
                raise KeyboardInterrupt(_resume_hint(job)) from None
            return _finish(job, prepared, started)
        finally:
            if log is not None:
                log.close()


def _check_same_data(job: JobConfig, index: SampleIndex) -> None:
    """``--resume`` trains on the data the run began with: the index's fingerprint (files,
    rows, labels, shape, classes) must match the one the run saved."""
    saved = rundir.read_dataset(job.run_dir)
    before = saved.get("fingerprint")
    if before is None or before == index.fingerprint():
        return  # runs from before the fingerprint are resumed unchecked
    then, now = saved.get("samples"), len(index)
    what = f"{then:,} samples then, {now:,} now" if then != now else "the same count, other files, rows or labels"
    raise RaytrainError(
        f"--resume: the data of {job.run_dir} changed since the run began ({what}); resume with the data it "
        "trained on, or start a new run with another --name"
    )


def _finish(job: JobConfig, prepared: _Prepared, started: float) -> RunSummary:
    """Summarize a finished run and mark it finished."""
    summary = _summarize(job, prepared.train.num_rows, prepared.validation.num_rows, time.perf_counter() - started)
    rundir.write_status(job.run_dir, "finished", epochs=summary.epochs, num_workers=job.scaling.num_workers,
                        wall_time_s=summary.wall_time_s)
    return summary


def _train(spec: WorkerSpec, prepared: _Prepared, resume: bool, mode: modes.Mode) -> None:
    """Write the run's start, fit, and record how it ended."""
    job, workers = spec.job, spec.job.scaling.num_workers
    storage.makedirs(job.run_dir)
    _write_job(job, prepared.index, spec.plan, spec.read.window)
    rundir.write_status(job.run_dir, "running", resumed=resume, num_workers=workers,
                        driver_pid=os.getpid(), host=socket.gethostname())
    try:
        _fit(spec, prepared.train, prepared.validation, mode)
        _prune_checkpoints(job)
    except KeyboardInterrupt:
        raise  # its status is written by _run, once the workers have stopped
    except Exception as e:
        # The store holding the run may be what failed: its clean-up must not replace this error.
        rundir.best_effort(f"remove partial checkpoints in {job.run_dir}", lambda: _remove_partial(job))
        rundir.best_effort(f"remove old checkpoints in {job.run_dir}", lambda: _prune_checkpoints(job))
        error = str(e).splitlines()[0] if str(e) else type(e).__name__
        rundir.best_effort(f"write {rundir.STATUS} in {job.run_dir}",
                           lambda: rundir.write_status(job.run_dir, "failed", error=error, num_workers=workers))
        raise


def _fit(spec: Any, train_table: Any, val_table: Any, mode: modes.Mode) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from raytrain.data.ray_datasets import FixedShards, to_ray_datasets
    from raytrain.data.split import partition_index

    job = spec.job
    s = job.scaling
    resources = {"CPU": s.cpus_per_worker}
    if s.gpus_per_worker:
        resources["GPU"] = s.gpus_per_worker
    block_rows = max(spec.read.rows_per_block.values(), default=1)
    # Local mode hands the loop the whole tables (not FixedShards' cuts): they carry the partitions too.
    train_table, val_table = (partition_index(t, job.data.partitions, block_rows) for t in (train_table, val_table))
    tables = {"train": train_table, "validation": val_table}
    if not mode.ray_datasets:  # the loop in this process gets the tables as they are
        spec = dataclasses.replace(spec, tables={name: t for name, t in tables.items() if t.num_rows})
    trainer = frameworks.get(job.model.framework).trainer(
        train_loop_per_worker=train_loop,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(
            num_workers=s.ray_num_workers, use_gpu=s.gpus_per_worker > 0, resources_per_worker=resources,
            placement_strategy=PLACEMENTS[s.placement],
        ),
        run_config=RunConfig(
            name=job.run.name, storage_path=job.run.storage_path,
            failure_config=FailureConfig(max_failures=job.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=job.run.keep_checkpoints),
            callbacks=mode.callbacks(),
        ),
        datasets=to_ray_datasets(train_table, val_table) if mode.ray_datasets else None,
        dataset_config=FixedShards(tables, s.worker_range, job.data.partitions, block_rows) if mode.ray_datasets
        else None,
    )
    try:
        return trainer.fit()
    except SystemExit:
        # Ray Train's own Ctrl-C handler aborts the workers gracefully, then exits; the
        # run was interrupted, not failed.
        raise KeyboardInterrupt from None
    except Exception as e:
        failure = _one_line(e, job)
        chained = isinstance(failure, TrainingFailed) and find_error(e, LossNotFinite) is None  # a worker's traceback
        raise failure from (e if chained else None)


def _one_line(e: Exception, job: JobConfig) -> Exception:
    """What a failed fit raises for the CLI's one line: a user's error found inside Ray's
    wrappers, a diverged loss, storage the nodes cannot reach, or a training failure."""
    if errors.no_space(e):
        return TrainingFailed(
            f"no space left on the device of run.storage_path {job.run.storage_path}; free some room there (the "
            f"partial checkpoint is removed) or pass another --storage-path, then {_resume_hint(job)}"
        )
    gone = find_error(e, StoreUnreachable)  # the data's store went away while the run trained: not bad input
    if gone is not None:
        return TrainingFailed(f"{str(gone).splitlines()[0]}; {_resume_hint(job)}")
    user = find_user_error(e)
    if user is not None:
        return user
    diverged = find_error(e, LossNotFinite)
    if diverged is not None:
        return TrainingFailed(f"{str(diverged).splitlines()[0]}; {_resume_hint(job)}")
    if STORAGE_CHECK_FAILED in str(e) or any(
        STORAGE_CHECK_FAILED in str(f) for f in (getattr(e, "worker_failures", None) or {}).values()
    ):
        return RaytrainError(
            f"run.storage_path {job.run.storage_path} is not reachable from every node of the cluster "
            "(Ray Train's check found no marker file there); use a shared filesystem path (/mnt/nfs/runs) "
            "or a URI (s3://bucket/runs, gs://bucket/runs) with --storage-path"
        )
    return TrainingFailed(_failure_line(e, job))


STORAGE_CHECK_FAILED = "Unable to set up cluster storage"  # Ray Train's message when a node cannot see storage_path


def _remove_partial(job: JobConfig) -> None:
    """Half-written checkpoints and temporary copies a failed run left in its directory (a
    full disk: removing them also frees the room to record the failure)."""
    for name in storage.listdir(job.run_dir):
        path = storage.join(job.run_dir, name)
        if ".tmp-" in name or (checkpoint.position(name) and not checkpoint.complete(path)):
            local = storage.local_path(path)
            if local is not None and os.path.isfile(local):
                os.remove(local)
            else:
                storage.delete_dir(path)


def _prune_checkpoints(job: JobConfig) -> None:
    """Keep the newest ``run.keep_checkpoints`` checkpoints. Ray Train prunes the ones it
    took in this attempt; this also covers those of earlier attempts of a resumed run."""
    for _, old in checkpoint.on_storage(job.run_dir)[: -job.run.keep_checkpoints]:
        storage.delete_dir(old)


def _failure_line(error: BaseException, job: JobConfig) -> str:
    """What failed, where the newest checkpoint is, and how to continue."""
    failures = getattr(error, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        def died(cause: BaseException) -> bool:
            return any(word in type(cause).__name__ for word in ("HealthCheck", "ActorDied", "ActorError"))

        # A dead worker is the cause; the others' errors are collateral (their collective lost a peer).
        rank, cause = sorted(failures.items(), key=lambda item: (not died(item[1]), item[0]))[0]
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        what = (f"the process of worker {rank} died ({type(cause).__name__})" if died(cause)
                else f"worker {rank} raised {type(cause).__name__}: {first[:200]}")
    else:
        what = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"
    tries = "" if job.run.max_failures == 0 else f" after {job.run.max_failures} restarts"
    hint = "" if job.run.max_failures or _latest(job) is None else \
        " (--max-failures N restarts failed workers automatically)"
    return f"training failed{tries}: {what}; {_resume_hint(job)}{hint}"


def _latest(job: JobConfig) -> Optional[tuple[int, str]]:
    """The newest checkpoint, or None (also when the store holding the run cannot be read)."""
    try:
        return checkpoint.latest(job.run_dir)
    except Exception:
        return None


def _resume_hint(job: JobConfig) -> str:
    """Where the newest checkpoint is and how to continue from it."""
    command = f"raytrain train --resume --name {job.run.name} --storage-path {job.run.storage_path}"
    try:
        newest = checkpoint.latest(job.run_dir)
    except Exception:  # the store holding the run is gone: the command still works once it is back
        return f"the run's checkpoints could not be listed; once its store answers, continue with: {command}"
    if newest is None:
        return "no epoch had finished, so there is no checkpoint to resume from"
    return (
        f"the newest checkpoint is epoch {newest[0]} ({newest[1]}); continue with: {command}"
    )


def _write_job(job: JobConfig, index: SampleIndex, plan: StepPlan, window: int) -> None:
    rundir.write_job(job.run_dir, job)
    rundir.write_dataset(job.run_dir, {
        "samples": len(index),
        "sample_shape": list(index.sample_shape),
        "num_classes": index.num_classes,
        "one_hot": index.one_hot,
        "dtype": index.dtype,
        "plan": plan.__dict__,
        "shuffle_window": window,
        "rows_per_block": index.rows_per_block,
        "class_names": list(index.class_names),  # image datasets: the name of each class index
        "fingerprint": index.fingerprint(),  # --resume refuses other data (see SampleIndex.fingerprint)
    })


def _summarize(job: JobConfig, n_train: int, n_val: int, wall: float) -> RunSummary:
    run_dir = job.run_dir
    epochs = rundir.read_metrics(run_dir)
    skipped = rundir.collect_skipped(run_dir)
    numbers = [e["epoch"] for e in epochs]
    if numbers != list(range(1, job.training.epochs + 1)):
        raise RuntimeError(f"{run_dir}/metrics.jsonl holds epochs {numbers}, expected 1..{job.training.epochs}")
    summary = RunSummary(
        run_dir=run_dir,
        epochs=len(epochs),
        num_workers=job.scaling.num_workers,
        train_samples=n_train,
        val_samples=n_val,
        final_metrics=epochs[-1],
        samples_per_s=sum(e["samples_per_s"] for e in epochs) / len(epochs),
        data_wait_fraction=sum(e["data_wait_fraction"] for e in epochs) / len(epochs),
        wall_time_s=wall,
        skipped_files=len(skipped),
        elastic=runs.workers(job.scaling, epochs) if job.scaling.elastic else "",
        files={
            "model": rundir.path(run_dir, rundir.MODEL_KERAS),
            **({"serving": rundir.path(run_dir, rundir.SAVED_MODEL)} if job.model.framework == frameworks.TF_KERAS
               else {}),
            "metrics": rundir.path(run_dir, rundir.METRICS),
            "job": rundir.path(run_dir, rundir.JOB),
        },
    )
    if skipped:
        summary.files["bad files"] = rundir.path(run_dir, rundir.SKIPPED)
    rundir.write_summary(run_dir, summary.__dict__)
    return summary
