"""What every epoch leaves behind, written from inside ``fit`` by :class:`EpochReporter`.

At each epoch's end, on every rank: rank 0 appends the metrics to ``metrics.jsonl``,
sends the epoch's line to the driver and writes TensorBoard scalars; every rank writes
a checkpoint and reports to Ray Train (a barrier every rank must reach equally often).
The metrics line comes first, so every checkpointed epoch has its line. During an
epoch rank 0 sends progress twice a second (:mod:`raytrain.run.progress`) and batch
scalars every ``run.log_every_steps`` steps.

Imported by the worker only once TensorFlow is loaded (this module imports tf_keras and
Ray Train, ~5 s; see :mod:`raytrain.worker`).
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import Any, Callable, Optional

import ray.train
import tf_keras

from raytrain.data.plan import StepPlan
from raytrain.errors import LossNotFinite
from raytrain.run import progress, rundir
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


class EpochReporter(tf_keras.callbacks.Callback):
    """Reports each epoch of ``fit`` (see the module docstring).

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
        save_checkpoint: ``save_checkpoint(model, epochs_done)`` writes a checkpoint and
            returns the checkpoint arguments of ``ray.train.report``.
        first_step: The global step training starts from (a resumed run continues its
            TensorBoard curves instead of starting them again at 0).
    """

    def __init__(self, plan: StepPlan, run_dir: str, epochs: int, log_every_steps: int, rank: int, sink: Any,
                 take_waited: Callable[[], float], start_validation: Optional[Callable[[int], None]],
                 save_checkpoint: Callable[[Any, int], dict[str, Any]], first_step: int = 0):
        super().__init__()
        self._supports_tf_logs = True  # logs stay tensors; read only when shown
        self.plan, self.run_dir, self.epochs, self.every = plan, run_dir, epochs, log_every_steps
        self.rank, self.sink = rank, sink
        self.take_waited, self.start_validation, self.save_checkpoint = take_waited, start_validation, save_checkpoint
        self.send = progress.sender(sink)
        self.scalars = ScalarLog(run_dir) if rank == 0 else None
        self.train_seconds = 0.0
        self.first_step_logged = False
        self.global_step = first_step
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
        self.global_step = self.epoch * self.plan.train_steps + batch + 1
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            where = f"step {batch + 1}" if first >= batch + 1 else f"one of steps {first}-{batch + 1} (run in one call)"
            raise LossNotFinite(
                f"the training loss became {loss} at epoch {self.epoch + 1}, {where}; lower "
                "--learning-rate or check the data for NaN/inf values"
            )
        if self.rank != 0:
            return
        now = time.perf_counter()
        log_scalars = self.every and self.global_step // self.every > logged_before
        if not log_scalars and now - self.last_sent < progress.UPDATE_SECONDS:
            return
        values = {k: float(v) for k, v in (logs or {}).items()}
        if log_scalars:
            self.scalars.batch(self.global_step, values)
        if now - self.last_sent >= progress.UPDATE_SECONDS:
            self.last_sent = now
            plan = self.plan
            self.send(progress.step_message(self.epoch + 1, self.epochs, batch + 1, plan.train_steps, values,
                                            (batch + 1) * plan.global_batch, now - self.started))

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch = epoch
        self.global_step = epoch * self.plan.train_steps
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
        metrics["samples_per_s"] = self.plan.train_steps * self.plan.global_batch / train_time
        waited = self.take_waited()
        metrics["data_wait_s"] = waited
        metrics["data_wait_fraction"] = min(1.0, waited / train_time)
        metrics["epoch_time_s"] = ended - self.started
        metrics["time"] = time.time()
        return metrics

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        metrics = self._metrics(epoch, logs)
        if self.rank == 0:
            rundir.append_metrics(self.run_dir, metrics)
            line = epoch_line(epoch + 1, self.epochs, metrics)
            if self.sink is None:
                sys.stdout.write(line + "\n")
            self.send({"kind": "epoch", "line": line, "metrics": metrics})
            self.scalars.epoch(epoch + 1, metrics)
        saved = self.save_checkpoint(self.model, epoch + 1)
        ray.train.report(metrics, **saved)
        if "checkpoint" in saved:  # Ray Train has copied it to the run directory
            shutil.rmtree(saved["checkpoint"].path, ignore_errors=True)

    def on_train_end(self, logs: Any = None) -> None:
        if self.scalars is not None:
            self.scalars.close()
