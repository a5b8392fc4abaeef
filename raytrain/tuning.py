"""``raytrain tune``: a hyperparameter search on Ray Tune where every trial is a whole raytrain run.

Built as Ray Train's guide "Hyperparameter Tuning with Ray Tune" prescribes for Train V2:
a Tune function trainable (:func:`_trial`) runs one raytrain run per trial, and Ray
Train's ``TuneReportCallback`` passes each epoch's report on to Tune. Every trial trains
on Ray Train workers: ``--local`` / ``--num-workers 0`` gives each trial one worker,
because Ray Train's local mode refuses its own API inside a Tune function ("ray.train.
get_context is deprecated when running in a function passed to Ray Tune", ray#49454)
and runs no callbacks. The trial's own process only drives its workers and holds no
CPU. Search algorithms and schedulers are Ray Tune's: the search space
is drawn by Tune's default (random and grid) search, and ``--scheduler asha`` stops weak
trials early with Tune's ``ASHAScheduler``: rungs at epochs 1, 2, 4, ... below
``training.epochs`` (``time_attr`` = the epoch, grace period 1, reduction factor 2,
``max_t`` = epochs - 1, ``stop_last_trials=False``); at each rung a trial goes on only if
its metric is in the better half of those the trials that reached the rung reported. A
trial past the last rung always finishes, so it exports its model (Tune's default would
stop every trial at ``max_t``, before the export). A one-epoch job has nothing to stop early.

Layout of a search ``<storage_path>/<name>/``:

- ``trial_00000/``, ``trial_00001/``, ...: each trial's run directory, complete as a
  ``raytrain train`` run (job, metrics, checkpoints, TensorBoard, exported model);
- ``search.json`` (base job, search, status), ``trials.txt`` (the table printed at the
  end), ``best.json``, ``best_model.keras``, ``report.png`` (every trial's curves);
- ``tune/``: Ray Tune's own experiment state, what ``--resume`` restores.

Decisions: ``--trials N`` is Ray Tune's ``num_samples`` (with ``grid(...)`` keys every
grid point runs N times; default N = 1 for a grid-only search, else 8). The best trial is
the one with the best metric among trials that finished every epoch (ASHA lets only
the better trials finish; a stopped trial has no exported model), or among all trials if
none finished. Trials run as many at a time as the cluster's CPUs and GPUs hold for
one trial's workers (or ``--max-concurrent``). Every searched value is checked on the
driver before anything starts (each value of a choice or grid, the bounds of a range),
against the rest of the job as given; combinations are not enumerated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ray import tune

from raytrain import compat, trainer
from raytrain.config import JobConfig, from_dict, to_dict, validate
from raytrain.data.kinds import build_index
from raytrain.errors import RaytrainError, TrainingFailed, find_error
from raytrain.run import report, rundir, storage, tracking
from raytrain.run.progress import quiet_stderr
from raytrain.space import TuneOptions, options_from, with_values

# Ray Tune (with Ray, ~2 s) at the top: only `raytrain tune` imports this module, when it runs.


TRIAL_ERROR = "error.txt"  # a failed trial's traceback, in its run directory
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def trial_name(trial_id: str) -> str:
    """The run directory of a trial: ``trial_`` + the counter of Tune's trial id (``ab12c_00003``)."""
    return rundir.TRIAL_PREFIX + trial_id.rsplit("_", 1)[-1]


def _trial(config: dict[str, Any], base: JobConfig, search_dir: str) -> None:
    """One trial: the base job with the trial's values, trained as a raytrain run in
    ``<search_dir>/trial_NNNNN``. A restored search re-runs an unfinished trial: it
    continues that run from its newest checkpoint."""
    job = with_values(base, config)
    job.run.name, job.run.storage_path = trial_name(tune.get_context().get_trial_id()), search_dir
    job.run.mlflow = None  # the search's driver logs every trial (SearchLog)
    job = validate(job)
    done = threading.Event()
    threading.Thread(target=_end_when_stopped, args=(done,), daemon=True).start()
    try:
        trainer.run(job, resume=rundir.is_run(job.run_dir), in_tune=True)
    except Exception as e:
        # raytrain's own line for the search's driver (TrialLines, the table), the traceback in the trial's folder.
        storage.write_text(storage.join(job.run_dir, TRIAL_ERROR), traceback.format_exc())
        rundir.write_status(job.run_dir, "failed", error=_error_text(e))
        raise
    done.set()


def _end_when_stopped(done: threading.Event) -> None:
    """End this trial's process as soon as Ray Tune stops the trial (a scheduler's early
    stop, or the search interrupted), which ends its Ray Train controller and workers too
    (Ray ends the actors a process owns with it). Tune alone would only end the process
    10 s later, and the workers train on meanwhile. Tune signals the stop through its
    function session's ``stop_event`` (the session Ray Train's ``TuneReportCallback`` also
    uses); it is also set after a trial returns, hence ``done``."""
    stop = compat.tune_stop_event()
    if stop is None:
        return
    stop.wait()
    if not done.is_set():
        os._exit(0)


@dataclass
class TrialRow:
    """One trial as the final table shows it."""

    name: str
    params: dict[str, Any]
    status: str  # finished, stopped early, failed, not finished (an interrupted search)
    best: Optional[float]  # the best value of the metric over its epochs
    epochs_done: int
    wall_time_s: Optional[float]
    error: Optional[str] = None


@dataclass
class SearchSummary:
    """What a search did and where it wrote it."""

    search_dir: str
    metric: str
    mode: str
    rows: list[TrialRow]
    epochs: int
    best: Optional[TrialRow]
    wall_time_s: float
    interrupted: bool
    files: dict[str, str]

    def render(self) -> str:
        lines = ["", table(self.rows, self.metric, self.mode, self.epochs), ""]
        done = sum(r.status in ("finished", "stopped early") for r in self.rows)
        stopped = sum(r.status == "stopped early" for r in self.rows)
        lines.append(f"raytrain: search {'interrupted' if self.interrupted else 'finished'}: {done} of "
                     f"{len(self.rows)} trials ran ({stopped} stopped early) in {self.wall_time_s:.1f} s")
        if self.best is not None:
            params = "  ".join(f"{k}={_value(v)}" for k, v in self.best.params.items())
            lines.append(f"  best          {self.best.name}: {self.metric} {self.best.best:.4f}  {params}")
        lines += [f"  {name:<13} {path}" for name, path in self.files.items()]
        return "\n".join(lines)


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table(rows: list[TrialRow], metric: str, mode: str, epochs: int) -> str:
    """The trials sorted by their best metric (best first; trials without one last)."""
    keys = list(dict.fromkeys(k for r in rows for k in r.params))
    head = ["trial", *keys, f"{metric} ({mode})", "epochs", "stopped early", "wall time", "status"]
    sign = -1 if mode == "max" else 1
    ordered = sorted(rows, key=lambda r: (r.best is None, sign * (r.best or 0.0), r.name))
    body = [[r.name, *(_value(r.params.get(k, "-")) for k in keys),
             "-" if r.best is None else f"{r.best:.4f}", f"{r.epochs_done}/{epochs}",
             "yes" if r.status == "stopped early" else "no",
             "-" if r.wall_time_s is None else f"{r.wall_time_s:.1f} s",
             r.status if r.error is None else f"{r.status}: {r.error}"] for r in ordered]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(line.rstrip() for line in out)


def _best_of(epochs: list[dict[str, Any]], metric: str, mode: str) -> Optional[float]:
    values = [e[metric] for e in epochs if isinstance(e.get(metric), (int, float)) and math.isfinite(e[metric])]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def _clock(started: float) -> str:
    seconds = int(time.time() - started)
    return f"{seconds // 60}:{seconds % 60:02d}"


def stop_reason(scheduler: str, epoch: int) -> str:
    """Why a trial the scheduler stopped ended: its line, and the reason in its ``status.json``."""
    return f"stopped early by {scheduler} after epoch {epoch} (in the weaker half at that rung)"


class TrialLines(tune.Callback):
    """A Ray Tune callback printing one line per trial started, finished, stopped or failed.

    Plain fields only: Ray Tune saves its callbacks with the experiment, and a restored
    search (``--resume``) brings this one back."""

    def __init__(self, metric: str, mode: str, epochs: int, started: float, search_dir: str, scheduler: str):
        self.metric, self.mode, self.epochs, self.started = metric, mode, epochs, started
        self.search_dir, self.scheduler = search_dir, scheduler
        self.best: dict[str, float] = {}

    def _say(self, text: str) -> None:
        sys.stdout.write(f"[{_clock(self.started)}] {text}\n")
        sys.stdout.flush()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = "  ".join(f"{k}={_value(v)}" for k, v in trial.config.items())
        self._say(f"{trial_name(trial.trial_id)} started  {params}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            name = trial_name(trial.trial_id)
            old = self.best.get(name)
            better = old is None or (value > old if self.mode == "max" else value < old)
            self.best[name] = value if better else old

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name = trial_name(trial.trial_id)
        epoch = int((trial.last_result or {}).get("epoch", 0))
        how = "finished"
        if epoch < self.epochs:  # the scheduler stopped it (an interrupted search ends trials without this call)
            how = stop_reason(self.scheduler, epoch)
            rundir.write_status(storage.join(self.search_dir, name), "stopped", reason=how)
        best = self.best.get(name)
        shown = "" if best is None else f"  best {self.metric} {best:.4f}"
        self._say(f"{name} {how}{shown}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name = trial_name(trial.trial_id)
        log = storage.join(self.search_dir, name, TRIAL_ERROR)
        where = f" (traceback: {log})" if storage.exists(log) else ""
        self._say(f"{name} failed: {_error_line(trial, storage.join(self.search_dir, name))}{where}")


class SearchLog(tune.Callback):
    """``raytrain tune --mlflow``: the search as an MLflow parent run (the search space, then
    the best trial and its metric), each trial a child run (its job, every epoch of its
    ``metrics.jsonl``, its model and status), logged from the search's driver.

    Plain fields only (Ray Tune saves its callbacks with the experiment): the tracker is
    made again after a restore, and the runs' ids are read back from the search folder
    (``mlflow.json``, ``trial_NNNNN.mlflow.json``), so a resumed search continues them."""

    def __init__(self, uri: str, job: JobConfig, options: TuneOptions, search_dir: str):
        self.uri, self.job, self.options, self.search_dir = uri, job, options, search_dir
        self._tracker: Optional[tracking.Tracker] = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tracker": None}

    @property
    def tracker(self) -> tracking.Tracker:
        if self._tracker is None:
            self._tracker = tracking.Tracker(self.uri, self.job.run.mlflow_experiment or "raytrain",
                                             lambda text: print(text, flush=True))
            o = self.options
            params = {**{f"search.{k}": str(v) for k, v in o.to_dict()["search"].items()},
                      "search.trials": str(o.total_trials()), "search.metric": o.metric, "search.mode": o.mode,
                      "search.scheduler": o.scheduler}
            self._tracker.start("search", storage.join(self.search_dir, tracking.STATE), self.job.run.name or "search",
                                params, tracking.run_tags(self.job))
        return self._tracker

    def _trial(self, trial: Any) -> tuple[str, str]:
        """The trial's name and run directory, its child run started (or continued) first."""
        name = trial_name(trial.trial_id)
        run_dir = storage.join(self.search_dir, name)
        if name not in self.tracker.keys:
            job = with_values(self.job, trial.config)
            job.run.name = name
            tags = {**tracking.run_tags(job), "raytrain.run_dir": run_dir}
            self.tracker.start(name, storage.join(self.search_dir, f"{name}.{tracking.STATE}"), name,
                               tracking.flatten(job), tags, parent="search")
        return name, run_dir

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial(trial)
        self.tracker.flush()

    def _epochs(self, trial: Any) -> tuple[str, str]:
        """Log the trial's epochs from its own record (a run's metric names; epochs already
        logged are skipped); returns its name and run directory."""
        name, run_dir = self._trial(trial)
        for epoch in rundir.read_metrics(run_dir):
            self.tracker.metrics(name, tracking.epoch_values(epoch), int(epoch["epoch"]), epoch.get("time"))
        return name, run_dir

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._epochs(trial)
        self.tracker.flush()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name, run_dir = self._epochs(trial)  # a trial the scheduler stops may have trained one more epoch
        self.tracker.end(name, run_dir, tracking.run_status(run_dir))  # TrialLines wrote "stopped" before this
        self.tracker.flush()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name, run_dir = self._epochs(trial)
        self.tracker.tags(name, {"raytrain.error": _error_line(trial, run_dir)})
        self.tracker.end(name, run_dir, "FAILED")
        self.tracker.flush()

    def finish(self, summary: "SearchSummary") -> None:
        """The best trial and the search's end; then say what could not be sent."""
        tracker = self.tracker
        if summary.best is not None:
            tracker.tags("search", {"raytrain.best_trial": summary.best.name})
            if summary.best.best is not None:
                tracker.metrics("search", {f"best_{summary.metric}": summary.best.best}, 0)
        tracker.end("search", self.search_dir, "KILLED" if summary.interrupted else "FINISHED",
                    (rundir.BEST_MODEL, rundir.REPORT, rundir.TRIALS, rundir.BEST))
        if not tracker.flush(force=True):
            print(f"raytrain: MLflow at {tracker.uri} did not take {', '.join(tracker.unsent())} ({tracker.error}); "
                  f"the search folder {self.search_dir} holds all of it", flush=True)
        elif "search" in tracker.runs:
            print(f"raytrain: logged to MLflow {tracker.uri}, experiment '{tracker.experiment}', run "
                  f"{tracker.runs['search']} (one child run per trial)", flush=True)


def _error_line(trial: Any, run_dir: Optional[str] = None) -> str:
    """The trial's error as one line: the one its run wrote to ``status.json`` (see
    :func:`_trial`), else :func:`_error_text` of Tune's ``Trial``'s error."""
    written = (rundir.read_status(run_dir) or {}).get("error") if run_dir else None
    if written:
        return written
    try:
        error = trial.get_pickled_error()
    except Exception:  # an error that cannot be unpickled here: its text instead
        error = None
    return _error_text(error if error is not None else trial.get_error())


def _error_text(error: Any) -> str:
    """The first line of raytrain's own message if a trial raised one, else the last line
    of the error's text (a traceback ends with the exception)."""
    found = None
    if isinstance(error, BaseException):
        found = find_error(error, RaytrainError) or find_error(error, TrainingFailed)
    if found is not None:
        text, pick = str(found), 0
    else:
        text, pick = ANSI.sub("", str(error or "unknown error")), -1  # Ray's wrapper text is coloured
    lines = [line.strip() for line in text.splitlines() if line.strip()] or ["unknown error"]
    return lines[pick][:300]


def per_trial_resources(job: JobConfig) -> dict[str, float]:
    """What one trial's workers hold while it trains."""
    s = job.scaling
    return {"CPU": s.num_workers * s.cpus_per_worker, "GPU": s.num_workers * s.gpus_per_worker}


def trial_job(job: JobConfig) -> JobConfig:
    """The base job as trials run it: on at least one Ray Train worker (see the module docstring).

    Raises:
        RaytrainError: An elastic worker range: a trial's resources are reserved up front, so
            it runs a fixed count.
    """
    if job.scaling.elastic:
        raise RaytrainError(
            f"raytrain tune: an elastic --num-workers {job.scaling.shown} is for "
            "raytrain train (a trial holds its resources for its whole run); give trials one count, e.g. "
            f"--num-workers {job.scaling.min_workers}"
        )
    if job.scaling.num_workers:
        return job
    return dataclasses.replace(job, scaling=dataclasses.replace(job.scaling, num_workers=1))


def concurrent_trials(job: JobConfig, options: TuneOptions, have: dict[str, float]) -> int:
    """``--max-concurrent``, else as many trials as ``have`` (the cluster's resources) holds.

    Raises:
        RaytrainError: Not even one trial fits on this machine.
    """
    need = {k: v for k, v in per_trial_resources(job).items() if v > 0}
    fits = min(int(have.get(k, 0) // v) for k, v in need.items())
    if fits < 1 and job.scaling.address is None:
        detail = ", ".join(f"{v:g} {k}s" for k, v in need.items())
        raise RaytrainError(f"one trial needs {detail} but this machine has "
                            f"{', '.join(f'{have.get(k, 0):g} {k}s' for k in need)}; lower --num-workers or "
                            "--cpus-per-worker")
    return options.max_concurrent or max(1, fits)


def check_trials(job: JobConfig, options: TuneOptions) -> None:
    """Every searched value makes a valid job whose data plans into steps (see the module
    docstring), before anything starts.

    Raises:
        RaytrainError: ``--search KEY=...: the value V ...: <why>`` (one line).
    """
    indexes: dict[str, Any] = {}
    for search in options.search:
        for value in search.values_to_check():
            try:
                candidate = validate(with_values(job, {search.name: value}))
                key = repr(candidate.data)
                if key not in indexes:
                    indexes[key] = build_index(candidate.data)
                trainer.plan_only(candidate, indexes[key])
            except RaytrainError as e:
                raise RaytrainError(f"--search {search.text}: the value {value!r} makes an invalid trial: "
                                    f"{e}") from None


def _tuner(job: JobConfig, options: TuneOptions, search_dir: str, resume: bool, started: float,
           log: Optional[SearchLog] = None) -> Any:
    """Ray Tune's Tuner for a new search, or the one restored from ``search_dir/tune``."""
    import ray

    trainable = tune.with_parameters(_trial, base=job, search_dir=search_dir)
    # The trial process only drives its workers: no CPU (a placement group needs some resource: 1 MiB of memory).
    trainable = tune.with_resources(trainable, {"CPU": 0, "memory": 1 << 20})
    tune_path = storage.join(search_dir, rundir.TUNE_STATE)
    if resume:
        return tune.Tuner.restore(tune_path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    scheduler = None
    if options.scheduler == "asha" and job.training.epochs > 1:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="epoch", max_t=job.training.epochs - 1, grace_period=1,
                                  reduction_factor=2, stop_last_trials=False)
    return tune.Tuner(
        trainable,
        param_space={s.name: s.to_tune() for s in options.search},
        tune_config=tune.TuneConfig(
            metric=options.metric, mode=options.mode, scheduler=scheduler, num_samples=options.trials,
            max_concurrent_trials=concurrent_trials(job, options, ray.cluster_resources()),
            trial_name_creator=lambda t: trial_name(t.trial_id),
            trial_dirname_creator=lambda t: trial_name(t.trial_id),
        ),
        run_config=tune.RunConfig(
            name=rundir.TUNE_STATE, storage_path=search_dir, verbose=0,
            callbacks=[TrialLines(options.metric, options.mode, job.training.epochs, started, search_dir,
                                  options.scheduler), *([log] if log is not None else [])],
        ),
    )


def _check_new(search_dir: str) -> None:
    if [name for name in storage.listdir(search_dir) if name != rundir.CLAIM]:
        hint = " or continue it with --resume" if rundir.is_search(search_dir) else ""
        raise RaytrainError(f"{search_dir} already holds a run or search; choose another --name{hint} "
                            "(raytrain never overwrites a run)")


def run_search(job: JobConfig, options: Optional[TuneOptions], resume: bool = False,
               verbose: bool = False) -> SearchSummary:
    """Run (or, with ``resume``, continue) the search of ``options`` over ``job``.

    Args:
        job: The validated base job; ``run.name`` names the search.
        options: The search (None with ``resume``: the saved one is used).
        resume: Continue the interrupted search ``job.run_dir`` (Ray Tune's restore):
            finished trials are not run again, unfinished ones continue their runs.
        verbose: Show Ray's and the trials' own output.

    Raises:
        RaytrainError: Bad input (one line), found before anything starts.
    """
    search_dir = job.run_dir
    job = trial_job(job)
    started = time.time()
    mlflow_uri = tracking.check(job)
    problem = storage.writable(job.run.storage_path)
    if problem:
        raise RaytrainError(f"run.storage_path {job.run.storage_path} {problem}; pass a folder you can write "
                            "to with --storage-path")
    with rundir.claim(search_dir):
        if resume:
            record = rundir.read_search(search_dir)
            options = options_of(record)
            if not storage.exists(storage.join(search_dir, rundir.TUNE_STATE)):
                raise RaytrainError(f"--resume: {search_dir} has no Ray Tune state ({rundir.TUNE_STATE}/); "
                                    "start the search again under another --name")
        else:
            assert options is not None
            _check_new(search_dir)
            with quiet_stderr():  # a model builder file may import TensorFlow: its C++ start-up lines
                check_trials(job, options)
            record = {"job": to_dict(job), "tune": options.to_dict(), "trials": options.total_trials()}
        if job.scaling.address is None:  # one trial must fit on this machine, before Ray starts
            concurrent_trials(job, options, trainer.machine_resources())

        def starting() -> None:  # once Ray is up and the Tuner is built: bad input has been ruled out
            rundir.write_search(search_dir, dict(record, status="running", started=started, pid=os.getpid(),
                                                 host=socket.gethostname()))
            print(f"raytrain: {'resuming' if resume else 'starting'} search {search_dir}: "
                  f"{options.total_trials()} trials, {options.metric} ({options.mode}), scheduler "
                  f"{options.scheduler}", flush=True)

        log = SearchLog(mlflow_uri, job, options, search_dir) if mlflow_uri else None
        grid, interrupted = _run_tuner(job, options, search_dir, resume, verbose, started, starting, log)
        summary = _summarize(job, options, search_dir, grid, started, interrupted)
        if log is not None:
            log.finish(summary)
        rundir.write_search(search_dir, dict(record, status="interrupted" if summary.interrupted else "finished",
                                             started=started, wall_time_s=summary.wall_time_s,
                                             best=summary.best and {"name": summary.best.name,
                                                                    "value": summary.best.best,
                                                                    "epochs": summary.best.epochs_done}))
    return summary


def options_of(record: dict[str, Any]) -> TuneOptions:
    """The search saved in ``search.json``."""
    return options_from(record["tune"], {}, from_dict(record["job"]))


def _run_tuner(job: JobConfig, options: TuneOptions, search_dir: str, resume: bool, verbose: bool,
               started: float, starting: Callable[[], None], log: Optional[SearchLog] = None) -> tuple[Any, bool]:
    """Ray Tune's results, and whether Ctrl-C interrupted the search (``starting`` is
    called just before the trials start; ``log`` is added to Tune's callbacks)."""
    import ray

    if not verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Ray Tune's own tables; verbose=0 then prints nothing
    # Ctrl-C: Tune's own graceful stop (it saves the experiment's state for --resume), which
    # it also starts on SIGUSR1; this handler in its place records that the search was interrupted.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.set()
        print("raytrain: stopping the search and saving its state (Ctrl-C again stops at once)", flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signal.SIGUSR1)

    trainer.init_ray(job, verbose)
    previous = signal.signal(signal.SIGINT, on_sigint)
    previous_term = signal.signal(signal.SIGTERM, on_sigint)  # kill, timeout, a scheduler: stopped as Ctrl-C stops
    relay = _quiet_raylet() if not verbose else None
    if not verbose:  # a failed trial's traceback goes to its error.txt; raytrain prints its own line (TrialLines)
        for name in ["ray.tune", *[n for n in logging.root.manager.loggerDict if n.startswith("ray.tune.")]]:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        tuner = _tuner(job, options, search_dir, resume, started, log)
        starting()
        return tuner.fit(), interrupted.is_set()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        if relay is not None:
            relay()
        ray.shutdown()


def _quiet_raylet() -> Callable[[], None]:
    """Stop printing the raylet's messages on this driver; returns what undoes it.

    Ray's driver prints every message the raylet publishes, whatever ``log_to_driver``
    and the loggers say (:func:`raytrain.compat.quiet_raylet_messages`). A search makes
    two kinds on purpose: "A worker died or was killed" for each trial process a stop
    ends (:func:`_end_when_stopped`), and "N PYTHON worker processes have been started"
    for its many short-lived processes. ``--verbose`` shows them."""
    return compat.quiet_raylet_messages()


def _summarize(job: JobConfig, options: TuneOptions, search_dir: str, grid: Any, started: float,
               interrupted: bool) -> SearchSummary:
    """Rows of every trial from Tune's trials and their run directories; the best trial,
    its model, the report picture and the table written into the search folder."""
    epochs = job.training.epochs
    rows = []
    # Tune's ResultGrid: one Result per trial; its folder is named by trial_dirname_creator.
    for result in sorted(grid, key=lambda r: os.path.basename(r.path.rstrip("/"))):
        name = os.path.basename(result.path.rstrip("/"))
        run_dir = storage.join(search_dir, name)
        metrics = rundir.read_metrics(run_dir) if rundir.is_run(run_dir) else []
        run_status = (rundir.read_status(run_dir) or {}).get("status")
        error = None
        if result.error is not None:
            status = "failed"
            error = (rundir.read_status(run_dir) or {}).get("error") or _error_text(result.error)
        elif run_status == "finished":
            status = "finished"
        elif run_status == "stopped" or (not interrupted and _stopped_by_scheduler(result, epochs)):
            status = "stopped early"
            if run_status != "stopped":  # its dying process wrote after TrialLines: this driver has the last word
                reason = stop_reason(options.scheduler, int(result.metrics.get("epoch", 0)))
                rundir.write_status(run_dir, "stopped", reason=reason)
        else:  # the search was interrupted while it ran
            status = "not finished"
        wall = (result.metrics or {}).get("time_total_s")
        rows.append(TrialRow(name, result.config or _params_of(run_dir, options), status, _best_of(metrics, options.metric, options.mode),
                             len(metrics), wall, error))
    finished = [r for r in rows if r.status == "finished" and r.best is not None]
    candidates = finished or [r for r in rows if r.best is not None]
    sign = 1 if options.mode == "max" else -1
    best = max(candidates, key=lambda r: sign * r.best) if candidates else None
    files = {"trials": storage.join(search_dir, rundir.TRIALS)}
    storage.write_text(files["trials"], table(rows, options.metric, options.mode, epochs) + "\n")
    if best is not None:
        files.update(_write_best(search_dir, best, options))
    drawn = [storage.join(search_dir, r.name) for r in rows if r.epochs_done]
    if drawn:
        files["report"] = storage.join(search_dir, rundir.REPORT)
        report.report(drawn, out=files["report"])
    return SearchSummary(search_dir, options.metric, options.mode, rows, epochs, best, time.time() - started,
                         interrupted, files)


def _stopped_by_scheduler(result: Any, epochs: int) -> bool:
    """Tune ended the trial (its last result says ``done``) before its last epoch, without an
    error: the scheduler stopped it. TrialLines marks such a trial ``stopped`` as the stop is
    sent, but the trial's process may still write its own status while it is ended."""
    metrics = result.metrics or {}
    return bool(metrics.get("done")) and int(metrics.get("epoch", 0)) < epochs


def _params_of(run_dir: str, options: TuneOptions) -> dict[str, Any]:
    """A trial's values of the searched keys from its saved job, for a trial that reported
    nothing (Tune's ``Result.config`` comes with the first report); {} if it never started."""
    if not rundir.is_run(run_dir):
        return {}
    job = rundir.read_job(run_dir)
    return {s.name: getattr(getattr(job, s.name.split(".")[0]), s.name.split(".")[1]) for s in options.search}


def _write_best(search_dir: str, best: TrialRow, options: TuneOptions) -> dict[str, str]:
    """``best.json`` and a copy of the best trial's model."""
    run_dir = storage.join(search_dir, best.name)
    model = storage.join(run_dir, rundir.MODEL_KERAS)
    files = {"best": storage.join(search_dir, rundir.BEST)}
    record = dataclasses.asdict(best)
    record.update(metric=options.metric, mode=options.mode, run_dir=run_dir, model=None)
    if storage.exists(model):
        copy = storage.join(search_dir, rundir.BEST_MODEL)
        local_from, local_to = storage.local_path(model), storage.local_path(copy)
        if local_from is not None and local_to is not None:
            shutil.copyfile(local_from, local_to)
        else:
            with tempfile.TemporaryDirectory(prefix="raytrain-best-") as folder:
                storage.download_file(model, os.path.join(folder, rundir.MODEL_KERAS))
                storage.upload_file(os.path.join(folder, rundir.MODEL_KERAS), copy)
        record["model"] = files["model"] = copy
    storage.write_text(files["best"], json.dumps(record, indent=1))
    return files
