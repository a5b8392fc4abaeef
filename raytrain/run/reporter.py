"""What every epoch leaves behind, written from inside ``fit`` by :class:`EpochReporter`.

At each epoch's end, on every rank: rank 0 appends the metrics to ``metrics.jsonl``,
sends the epoch's line to the driver and writes TensorBoard scalars; every rank writes
a checkpoint and reports to Ray Train (a barrier every rank must reach equally often).
The metrics line comes first, so every checkpointed epoch has its line. During an
epoch rank 0 sends progress twice a second (:mod:`raytrain.run.progress`) and batch
scalars every ``run.log_every_steps`` steps.

The reporter is the same for either framework: :func:`reporter_class` puts it on that
framework's Keras ``Callback`` class.
"""

from __future__ import annotations

import math
import shutil
import sys
import threading
import time
from typing import Any, Callable, Optional

import ray.train

from raytrain.data.plan import StepPlan
from raytrain.errors import LossNotFinite, Preempted
from raytrain.run import preemption, progress, rundir
from raytrain.run.rundir import RUN_KEYS
from raytrain.run.scalars import ScalarLog


def epoch_line(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    """The line printed when an epoch ends."""
    shown = [f"{k} {v:.4f}" for k, v in metrics.items() if k not in RUN_KEYS]
    return (
        f"epoch {epoch}/{epochs}  " + "  ".join(shown)
        + f"  {metrics['samples_per_s']:.0f} samples/s  data wait {100 * metrics['data_wait_fraction']:.0f}%"
        + f"  {metrics['epoch_time_s']:.1f} s"
    )


CHECK_SECONDS = 2.0  # how often (in training time) the workers agree whether to checkpoint


class StepClock:
    """When to take a step checkpoint; every worker gets the same answer at the same step.

    Due every ``steps`` steps (a count every worker knows), or once ``seconds`` of
    training have passed since the last checkpoint, or when a worker was asked to stop
    (:mod:`raytrain.run.preemption`). Clocks differ between workers, so the time and the
    stop flags are agreed: about every :data:`CHECK_SECONDS` (a step count derived from
    agreed values, so all workers check at the same steps) each worker's values go
    through ``agree``, a sum over the workers (an all-reduce; the identity with one
    worker). Rank 0's clock is the one used.

    Args:
        steps: ``run.checkpoint_every`` in steps (0: not by steps).
        seconds: ``run.checkpoint_every`` as a time (0: not by time).
        agree: Sums a list of floats over the workers.
        rank: This worker's rank.
        step: The global step training starts from.
        check_seconds: How often to agree (0: at every call, for one worker, where
            agreeing costs nothing).
    """

    def __init__(self, steps: int, seconds: float, agree: Callable[[list[float]], list[float]], rank: int,
                 step: int, check_seconds: float = CHECK_SECONDS):
        self.steps, self.seconds, self.agree, self.rank = steps, seconds, agree, rank
        self.check_seconds = check_seconds
        self.stopping = False  # a worker was asked to stop: checkpoint, then stop
        self.last_step = self.mark_step = self.next_check = step
        self.last_time = self.mark_time = time.perf_counter()

    def due(self, step: int) -> bool:
        if self.steps and step - self.last_step >= self.steps:
            return True
        if step < self.next_check:
            return False
        now = time.perf_counter()
        mine = [now - self.last_time, (now - self.mark_time) / max(step - self.mark_step, 1)] if self.rank == 0 \
            else [0.0, 0.0]
        elapsed, per_step, stop = self.agree([*mine, float(preemption.requested())])
        self.stopping = stop > 0
        self.mark_time, self.mark_step = now, step
        self.next_check = step + max(1, int(self.check_seconds / max(per_step, 1e-6)))
        return stop > 0 or bool(self.seconds and elapsed >= self.seconds)

    def saved(self, step: int) -> None:
        self.last_step, self.last_time = step, time.perf_counter()


def reporter_class(callback: type) -> type:
    """:class:`EpochReporter` as a subclass of ``callback``, a Keras ``Callback`` class
    (``tf_keras.callbacks.Callback`` or ``keras.callbacks.Callback``)."""
    return type("EpochReporter", (EpochReporter, callback), {})


class EpochReporter:
    """Reports each epoch of ``fit`` (see the module docstring); use :func:`reporter_class`.

    Args:
        plan: The step plan (steps per epoch, global batch).
        run_dir: The run directory.
        epochs: ``training.epochs``.
        log_every_steps: ``run.log_every_steps`` (0 = per epoch only).
        rank: This worker's rank; rank 0 writes the run's files.
        sink: The driver's progress sink (None: print the epoch line instead).
        take_waited: Seconds the training step waited for data since the last call;
            ``data_wait_fraction`` is their share of the epoch's training time.
        start_validation: Called with the epoch before each validation (None: no validation).
        save_checkpoint: ``save_checkpoint(model, epochs_done, steps_done)`` writes a
            checkpoint and returns the checkpoint arguments of ``ray.train.report`` (a
            step checkpoint, ``steps_done > 0``, is kept by raytrain itself: none).
        clock: When to take step checkpoints.
        first_step: The global step training starts from (a resumed run continues its
            TensorBoard curves instead of starting them again at 0, and an epoch
            resumed at step ``k`` runs its remaining steps only).
        validate: Called with the epoch at its end, returns the validation metrics
            (``val_*``), where ``fit`` does not validate itself (Keras 3 on JAX).
    """

    def __init__(self, plan: StepPlan, run_dir: str, epochs: int, log_every_steps: int, rank: int, sink: Any,
                 take_waited: Callable[[], float], start_validation: Optional[Callable[[int], None]],
                 save_checkpoint: Callable[..., dict[str, Any]], clock: StepClock, first_step: int = 0,
                 validate: Optional[Callable[[int], dict[str, float]]] = None):
        super().__init__()
        self.validate = validate
        self._supports_tf_logs = True  # logs stay tensors; read only when shown
        self.plan, self.run_dir, self.epochs, self.every = plan, run_dir, epochs, log_every_steps
        self.rank, self.sink = rank, sink
        self.take_waited, self.start_validation, self.save_checkpoint = take_waited, start_validation, save_checkpoint
        self.send = progress.sender(sink)
        self.scalars = ScalarLog(run_dir) if rank == 0 else None
        self.train_seconds = 0.0
        self.first_step_logged = False
        self.global_step = first_step
        self.clock = clock
        self.offset = first_step % plan.train_steps  # steps of the first epoch done before this run
        self.last_sent = 0.0
        self.epoch = 0
        self.started = 0.0
        self.train_end: Optional[float] = None

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if not self.first_step_logged:
            self.first_step_logged = True
            if self.rank == 0:
                rundir.event(self.run_dir, "first_step", epoch=self.epoch + 1)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        # With steps_per_execution > 1 this runs once per call into TensorFlow: ``batch`` is
        # the last step of the call.
        logged_before = self.global_step // self.every if self.every else 0
        first = self.global_step - self.epoch * self.plan.train_steps + 1  # the call's first step in this epoch
        batch += self.offset  # the step in the epoch (a resumed epoch starts at the checkpoint's)
        self.global_step = self.epoch * self.plan.train_steps + batch + 1
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            where = f"step {batch + 1}" if first >= batch + 1 else f"one of steps {first}-{batch + 1} (run in one call)"
            raise LossNotFinite(
                f"the training loss became {loss} at epoch {self.epoch + 1}, {where}; lower "
                "--learning-rate or check the data for NaN/inf values"
            )
        if batch + 1 < self.plan.train_steps and self.clock.due(self.global_step):
            self._save_step(batch + 1)
        if self.rank != 0:
            return
        now = time.perf_counter()
        log_scalars = self.every and self.global_step // self.every > logged_before
        if not log_scalars and now - self.last_sent < progress.UPDATE_SECONDS:
            return
        values = {k: float(v) for k, v in (logs or {}).items()}
        if log_scalars:
            self.scalars.batch(self.global_step, values)
            self.send({"kind": "scalars", "step": self.global_step, "metrics": values})  # for MLflow
        if now - self.last_sent >= progress.UPDATE_SECONDS:
            self.last_sent = now
            plan = self.plan
            self.send(progress.step_message(self.epoch + 1, self.epochs, batch + 1, plan.train_steps, values,
                                            (batch + 1 - self.offset) * plan.global_batch, now - self.started))

    def _save_step(self, step: int) -> None:
        """A checkpoint after ``step`` steps of this epoch (every rank, at the same step)."""
        self.save_checkpoint(self.model, self.epoch, step)
        self.clock.saved(self.global_step)
        if self.rank == 0:
            rundir.event(self.run_dir, "checkpoint", epoch=self.epoch, step=step, preempted=self.clock.stopping)
        if self.clock.stopping:
            if threading.current_thread() is threading.main_thread():
                raise KeyboardInterrupt  # local mode: the run ends as interrupted, its checkpoint saved
            raise Preempted(f"a worker received SIGTERM; every worker saved the checkpoint of epoch {self.epoch}, "
                            f"step {step} of epoch {self.epoch + 1}")

    def on_train_begin(self, logs: Any = None) -> None:
        preemption.training(True)

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch = epoch
        self.global_step = epoch * self.plan.train_steps + self.offset
        self.started = time.perf_counter()
        self.train_end = None

    def on_test_begin(self, logs: Any = None) -> None:
        self.train_end = time.perf_counter()
        if self.start_validation is not None:
            self.start_validation(self.epoch)

    def _metrics(self, epoch: int, logs: Any) -> dict[str, Any]:
        ended = time.perf_counter()
        train_time = (self.train_end or ended) - self.started
        self.train_seconds += train_time
        metrics: dict[str, Any] = {"epoch": epoch + 1}
        metrics.update({k: float(v) for k, v in (logs or {}).items()})
        metrics["samples_per_s"] = (self.plan.train_steps - self.offset) * self.plan.global_batch / train_time
        waited = self.take_waited()
        metrics["data_wait_s"] = waited
        metrics["data_wait_fraction"] = min(1.0, waited / train_time)
        metrics["epoch_time_s"] = ended - self.started
        metrics["time"] = time.time()
        metrics["workers"] = self.plan.world_size  # an elastic run's count can change between epochs
        return metrics

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if self.validate is not None:
            self.train_end = time.perf_counter()
            logs = {**(logs or {}), **self.validate(epoch)}
        metrics = self._metrics(epoch, logs)
        if self.rank == 0:
            rundir.append_metrics(self.run_dir, metrics)
            line = epoch_line(epoch + 1, self.epochs, metrics)
            if self.sink is None:
                sys.stdout.write(line + "\n")
            self.send({"kind": "epoch", "line": line, "metrics": metrics})
            self.scalars.epoch(epoch + 1, metrics)
        saved = self.save_checkpoint(self.model, epoch + 1, 0)
        ray.train.report(metrics, **saved)
        if "checkpoint" in saved:  # Ray Train has copied it to the run directory
            shutil.rmtree(saved["checkpoint"].path, ignore_errors=True)
        self.offset = 0
        self.clock.saved(self.global_step)

    def on_train_end(self, logs: Any = None) -> None:
        preemption.training(False)
        if self.scalars is not None and self.epoch + 1 >= self.epochs:  # a resumed epoch is fit on its own first
            self.scalars.close()
