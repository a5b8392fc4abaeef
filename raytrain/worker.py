"""The per-worker training loop, run by every Ray Train worker (or in-process).

The loop is the same for both frameworks; what differs (the distribution, the scope the
model is built in, how batches reach ``fit``, the weights' format, the export) is asked
of the job's :class:`raytrain.frameworks.Framework`, which is set up first, before
anything touches the devices.

The frameworks and Ray Train are imported inside the functions that run on the worker,
so commands that do not train never load them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from raytrain import compat, frameworks
from raytrain.config import JobConfig, checkpoint_interval
from raytrain.data.kinds import make_loader
from raytrain.data.loader import BatchLoader, ReadSpec
from raytrain.data.order import TRAIN, VALIDATION
from raytrain.data.plan import StepPlan
from raytrain.data.shard import Shard
from raytrain.errors import RaytrainError
from raytrain.models import build_model, dividing, scales_uint8, steps_per_execution
from raytrain.run import checkpoint, preemption, progress, rundir


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, computed once on the driver."""

    job: JobConfig
    plan: StepPlan
    read: ReadSpec  # how the worker reads its shard
    num_classes: int
    one_hot: bool
    sink: Any = None  # the driver's raytrain.run.progress.ProgressSink (None: print instead)
    in_process: bool = False  # the loop runs in the driver's process (raytrain.modes.InProcess)
    # In-process only: each dataset's index table itself, handed to the loop instead of as a
    # Ray Dataset (an in-process run starts no Ray; raytrain.modes).
    tables: Optional[dict[str, Any]] = None


def _handle_sigterm(in_process: bool) -> None:
    """Install :mod:`raytrain.run.preemption`'s SIGTERM handler, after the framework's setup: with
    several workers TensorFlow's coordination service replaces the process's SIGTERM
    handler with its own when the strategy starts. A Ray worker trains in a thread of its
    actor, and only the main thread can install a handler: its actor is asked to do it."""
    if in_process:
        preemption.install()  # the loop trains in the main thread
        return
    compat.run_in_worker_main_thread(preemption.install)


def _local_replicas(local: int, plan: StepPlan, rank: int, world: int) -> int:
    """This worker's local replicas (devices), checked against the plan."""
    if world != plan.world_size:
        raise RaytrainError(f"planned for {plan.world_size} workers but Ray Train started {world}")
    if local * plan.replica_batch != plan.worker_batch:
        raise RaytrainError(
            f"worker {rank} has {local} local replicas but was planned for "
            f"{plan.worker_batch // plan.replica_batch}; set --gpus-per-worker to the GPUs each worker sees"
        )
    return local


def _open_loader(spec: WorkerSpec, name: str, rank: int, stream: int) -> BatchLoader:
    """The loader of this worker's shard of the dataset ``name`` that Ray Train handed it
    (in local mode, the whole index table the driver put in ``spec.tables``)."""
    if spec.tables is not None:
        shard = Shard(spec.tables[name], spec.read.rows_per_block, spec.job.data.partitions)
    else:
        import ray.train

        shard = Shard.from_rows(ray.train.get_dataset_shard(name), spec.read.rows_per_block, spec.job.data.partitions)
    return make_loader(spec.read, shard, rank, stream, notify=lambda text: progress.note(spec.sink, text))


def _build(spec: WorkerSpec, fw: frameworks.Framework, rank: int) -> tuple[Any, int]:
    """The compiled model in the framework's scope, restored from the newest checkpoint
    if there is one, and the global step it continues from."""
    m, t, plan = spec.job.model, spec.job.training, spec.plan
    execution = steps_per_execution(t.steps_per_execution, spec.job.run.log_every_steps)
    newest = checkpoint.found(spec.job.run_dir)
    if fw.name == frameworks.KERAS:  # each call must end at the epoch's end (see models.dividing)
        execution = dividing(execution, plan.train_steps, plan.val_steps,
                             plan.train_steps - newest[-1][0][1] if newest else 0)
    with fw.scope():
        model = build_model(m, t, spec.read.sample_shape, spec.num_classes, spec.one_hot, execution, framework=fw.name)
        epochs, steps = _restore(model, spec, rank, fw, newest)
        return model, epochs * plan.train_steps + steps


def _checkpoint_saver(job: JobConfig, rank: int, world: int, in_process: bool,
                      fw: frameworks.Framework) -> Callable[..., dict[str, Any]]:
    """``save(model, epochs_done, steps_done)``: write this rank's checkpoint and return
    the checkpoint arguments for ``ray.train.report`` (rank 0's is kept)."""
    import ray.train

    state = {"seed": job.data.seed, "world_size": world, "epochs": job.training.epochs,
             "partitions": job.data.partitions, "batch_size": job.training.batch_size}

    def save(model: Any, done: int, step: int = 0) -> dict[str, Any]:
        folder = tempfile.mkdtemp(prefix=f"raytrain-checkpoint-rank{rank}-")
        checkpoint.write(model, folder, dict(state, epoch=done, step=step), fw)
        if rank == 0 and not in_process and not step:  # Ray Train copies it into the run directory
            return {"checkpoint": ray.train.Checkpoint.from_directory(folder),
                    "checkpoint_dir_name": checkpoint.dir_name(done)}
        if rank == 0:  # in-process, and step checkpoints (not a report): raytrain keeps them itself
            checkpoint.persist(folder, job.run_dir, done, job.run.keep_checkpoints, step)
        shutil.rmtree(folder, ignore_errors=True)  # the other ranks' copies only completed the collective
        return {}

    return save


def train_loop(config: dict[str, Any]) -> None:
    """Train on this worker's shard; called by Ray Train with ``{"spec": WorkerSpec}``."""
    import ray.train

    spec: WorkerSpec = config["spec"]
    s = spec.job.scaling
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()  # an elastic run's size varies by restart
    fw = frameworks.get(spec.job.model.framework)
    local = fw.setup(world, 0 if spec.in_process else max(1, int(s.cpus_per_worker)))

    from raytrain.run.reporter import CHECK_SECONDS, StepClock, reporter_class

    job = spec.job
    spec = dataclasses.replace(spec, plan=spec.plan.for_world(world))
    plan = spec.plan
    replicas = _local_replicas(local, plan, rank, world)
    train_loader = _open_loader(spec, "train", rank, TRAIN)
    val_loader = _open_loader(spec, "validation", rank, VALIDATION) if plan.val_steps > 0 else None
    loaders = [each for each in (train_loader, val_loader) if each is not None]
    run_dir, epochs = job.run_dir, job.training.epochs
    _write_worker_record(run_dir, rank, {"status": "training"})
    model, first_step = _build(spec, fw, rank)
    first_epoch, step = divmod(first_step, plan.train_steps)
    unit = scales_uint8(job.data.scale, model)
    if rank == 0 and spec.read.dtype == "uint8" and not unit:
        progress.note(spec.sink, "raytrain: the model scales its own inputs (data.scale: "
                      f"{job.data.scale}): it gets uint8 features as 0-255 values, not divided by 255")
    feeds = fw.feeds(spec, replicas, first_step, train_loader, val_loader, unit)
    every_steps, every_seconds = checkpoint_interval(job.run.checkpoint_every)
    clock = StepClock(every_steps, every_seconds, fw.agree(world), rank, first_step,
                      check_seconds=CHECK_SECONDS if world > 1 else 0)
    reporter = reporter_class(fw.callback_base())(
        plan, run_dir, epochs, job.run.log_every_steps, rank, spec.sink, feeds.take_waited,
        feeds.start_validation if val_loader and feeds.validate is None else None,
        _checkpoint_saver(job, rank, world, spec.in_process, fw), clock, first_step=first_step,
        validate=feeds.validate if val_loader else None)
    if rank == 0:
        rundir.event(run_dir, "start", from_epoch=first_epoch + 1, from_step=step, world_size=world)
        rundir.drop_worker_records(run_dir, world)
    _handle_sigterm(spec.in_process)
    try:
        _fit_epochs(model, feeds, plan, first_step, epochs, reporter)
    finally:
        for each in loaders:  # files and decoding threads, also when training failed
            each.close()
    fw.export(model, run_dir, rank)
    skipped: dict[str, str] = {}
    for each in loaders:
        skipped.update(each.skipped)
    _write_worker_record(run_dir, rank, {
        "status": "finished",
        "framework": fw.name,
        "train_shard_samples": len(train_loader.shard),
        "local_replicas": replicas,
        "train_seconds": reporter.train_seconds,
        "weights_sha256": _weights_digest(model),
        "skipped_files": skipped,  # data.on_bad_sample: skip -> path: reason
    })


def _fit_epochs(model: Any, feeds: Any, plan: StepPlan, first_step: int, epochs: int, reporter: Any) -> None:
    """``fit`` from global step ``first_step`` to the end (the framework's feeds know how);
    a reader's error is raised as itself."""
    if first_step // plan.train_steps >= epochs:
        return
    try:
        feeds.fit(model, first_step, epochs, [reporter])
    except Exception:
        failed = feeds.error()
        if failed is not None:
            raise failed from None  # the reader's error, not the queue's "cancelled"
        raise
    finally:
        feeds.stop()


def _restore(model: Any, spec: WorkerSpec, rank: int, fw: frameworks.Framework,
             newest: list[tuple[tuple[int, int], str]]) -> tuple[int, int]:
    """Restore the newest checkpoint into ``model`` (in the framework's scope) and return
    the (epochs, steps of the next epoch) it completed ((0, 0) without one). Every
    checkpoint is in the run directory: the epoch ones Ray Train copied there (the one it
    hands a restarted group is among them), the step ones and local mode's raytrain wrote."""
    import ray.train

    run_dir, sink = spec.job.run_dir, spec.sink
    if not newest:
        if rank == 0:  # a run that died before its first checkpoint starts over: so do its metrics
            rundir.keep_metrics_through(run_dir, 0)
        return 0, 0
    found = ray.train.Checkpoint(newest[-1][1])
    with found.as_directory() as folder:
        state = checkpoint.restore(model, folder, fw)
    done, step = int(state["epoch"]), int(state.get("step", 0))
    if step and (state.get("batch_size"), state.get("partitions"), state.get("seed")) != (
            spec.job.training.batch_size, spec.job.data.partitions, spec.job.data.seed):
        step = 0  # another order: the epoch's remaining steps are not known; it is trained again whole
    if rank == 0:
        rundir.keep_metrics_through(run_dir, done)
        where = newest[-1][1]  # as the run directory names it: Checkpoint.path drops a URI's scheme
        rundir.event(run_dir, "restored", epoch=done, step=step, checkpoint=where)
        at = f"epoch {done}" + (f", step {step} of epoch {done + 1}" if step else "")
        progress.note(sink, f"raytrain: restored the checkpoint of {at} ({where})")
    return done, step


def _weights_digest(model: Any) -> str:
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def _write_worker_record(run_dir: str, rank: int, fields: dict[str, Any]) -> None:
    """``<run_dir>/workers/rank-N.json``: where rank N runs (written at start, so its pid can
    be found while it trains) and, at the end, what it did."""
    import ray

    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    record = {"rank": rank, "node_id": node_id, "hostname": socket.gethostname(), "pid": os.getpid(),
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), **fields}  # Ray sets it per worker
    rundir.write_worker_record(run_dir, rank, record)
