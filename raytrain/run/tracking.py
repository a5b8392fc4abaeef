"""MLflow tracking of runs and searches, from the driver (``run.mlflow`` / ``--mlflow``).

The driver already receives every epoch's metrics and rank 0's batch scalars (through the
progress sink), so it logs them; no tracking credentials travel to the workers or show in
Ray's dashboard. A run is one MLflow run: the resolved job as parameters
(``training.batch_size``, ...), tags (workers, framework, raytrain's version, the data's
fingerprint, the run directory), each epoch's metrics under the names of
``metrics.jsonl`` at step = epoch, the batch scalars every ``run.log_every_steps`` steps as
``batch_<name>`` at step = the global step, and at the end ``model.keras``,
``report.png`` and ``summary.json`` as artifacts and the status (FINISHED, FAILED or
KILLED as ``status.json`` says). A search (``raytrain tune --mlflow``) is a parent run with
one child run per trial.

Decisions:

- The MLflow run's id is kept in the run directory (``mlflow.json``): ``--resume``
  continues the same MLflow run, and a step already logged (an epoch trained again after
  a worker-group restart, or before an interruption) is not logged twice: the first value
  stays. Parameters cannot change in MLflow, so one that ``--resume`` changed (e.g.
  ``training.epochs``) is kept as the tag ``resumed.<key>``.
- Logging never holds training up and never ends it: calls go out in order from a thread
  of the driver. A call that fails (the server down or refusing) prints one warning line
  and is kept, with every later one, to be sent again 30 s later and once more at the end;
  what still could not be sent is named in one line at the end (the run directory holds
  all of it). MLflow's own HTTP retries are off by default (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``,
  a 10 s timeout) so that a dead server costs milliseconds, not minutes; set them to override.
- ``run.mlflow: true`` uses ``MLFLOW_TRACKING_URI`` when set, else a SQLite store at
  ``<storage_path>/mlflow.db`` (MLflow's own default store kind since 3.7), whose
  experiments keep their artifacts beside it in ``mlartifacts/``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
import threading
import time
from typing import Any, Callable, Optional

from raytrain.config import MLFLOW_URI_ENV, JobConfig, to_dict
from raytrain.errors import RaytrainError
from raytrain.run import rundir, storage

STATE = "mlflow.json"  # in a run (or search) directory: the tracking URI and the MLflow run's id
RETRY_S = 30.0  # a failed call is tried again this long after
PARAM_MAX = 6000  # characters MLflow keeps of a parameter's value
STATUSES = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "stopped": "KILLED"}
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
FILES = (rundir.MODEL_KERAS, rundir.REPORT, rundir.SUMMARY)  # a run's artifacts


def tracking_uri(job: JobConfig) -> Optional[str]:
    """The tracking URI ``run.mlflow`` stands for (None: off)."""
    value = job.run.mlflow
    if value is None:
        return None
    if value != "true":
        return value
    return os.environ.get(MLFLOW_URI_ENV) or "sqlite:///" + os.path.join(job.run.storage_path, "mlflow.db")


def check(job: JobConfig) -> Optional[str]:
    """The tracking URI, checked on the driver before Ray starts: MLflow installed and the
    URI one MLflow can use (a server that is down is not an error: see the module docstring)."""
    uri = tracking_uri(job)
    if uri is None:
        return None
    if importlib.util.find_spec("mlflow") is None:
        raise RaytrainError("--mlflow needs MLflow, which is not installed here; pip install 'raytrain[mlflow]' "
                            "(or drop --mlflow)")
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." and the like (set on import)
        logging.getLogger(name).setLevel(logging.WARNING)

    try:
        MlflowClient(uri)
    except Exception as e:
        raise RaytrainError(f"--mlflow {uri}: MLflow cannot use it ({_first_line(e)}); pass sqlite:///PATH, "
                            "http://HOST:PORT or databricks") from None
    return uri


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200] + ("..." if len(text) > 200 else "")


def flatten(job: JobConfig) -> dict[str, str]:
    """The job as MLflow parameters: ``section.key`` -> its value as text."""
    out = {}
    for section, values in to_dict(job).items():
        for key, value in values.items():
            text = ",".join(map(str, value)) if isinstance(value, list) else \
                json.dumps(value) if isinstance(value, dict) else str(value)
            out[f"{section}.{key}"] = text[:PARAM_MAX]
    return out


def epoch_values(metrics: dict[str, Any]) -> dict[str, float]:
    """An epoch's record of ``metrics.jsonl`` as MLflow metrics (its number is the step)."""
    return {k: float(v) for k, v in metrics.items()
            if k not in ("epoch", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker:
    """MLflow calls for one or more runs (named by a key of the caller's), sent in order.

    A call that fails stays first in line with every later one; :meth:`flush` tries
    again once :data:`RETRY_S` has passed (or at once with ``force``).
    """

    def __init__(self, uri: str, experiment: str, say: Callable[[str], None]):
        self.uri, self.experiment, self.say = uri, experiment, say
        self.runs: dict[str, str] = {}  # key -> MLflow run id
        self.keys: set[str] = set()  # the runs whose start is sent or waiting
        self._logged: dict[tuple[str, str], int] = {}  # (key, metric) -> the highest step logged
        self._calls: list[tuple[str, Callable[[Any], None]]] = []
        self._lock = threading.Lock()
        self._sending = threading.Lock()
        self._retry_at = 0.0
        self._client: Any = None
        self._experiment_id: Optional[str] = None
        self.error: Optional[str] = None

    def _queue(self, what: str, call: Callable[[Any], None]) -> None:
        with self._lock:
            self._calls.append((what, call))

    def flush(self, force: bool = False) -> bool:
        """Send what is waiting; False if some of it could not be sent."""
        with self._sending:
            if not force and time.monotonic() < self._retry_at:
                return False
            while True:
                with self._lock:
                    if not self._calls:
                        return True
                    what, call = self._calls[0]
                try:
                    if self._client is None:
                        from mlflow import MlflowClient

                        self._client = MlflowClient(self.uri)
                    call(self._client)
                except Exception as e:
                    if self.error is None:
                        self.say(f"raytrain: MLflow at {self.uri} failed ({_first_line(e)}); training goes on, "
                                 f"and raytrain sends what is waiting again every {RETRY_S:.0f} s")
                    self.error = _first_line(e)
                    self._retry_at = time.monotonic() + RETRY_S
                    return False
                with self._lock:
                    self._calls.pop(0)

    def unsent(self) -> list[str]:
        """What could not be sent, in words, each once."""
        with self._lock:
            return list(dict.fromkeys(what for what, _ in self._calls))

    def _experiment(self, client: Any) -> str:
        if self._experiment_id is None:
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                location = None
                if self.uri.startswith("sqlite:///"):  # MLflow's default would be ./mlruns wherever raytrain runs
                    location = os.path.join(os.path.dirname(self.uri[len("sqlite:///"):]), "mlartifacts")
                try:
                    self._experiment_id = client.create_experiment(self.experiment, artifact_location=location)
                except Exception:  # another run created it a moment ago
                    found = client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise
            if found is not None:
                self._experiment_id = found.experiment_id
        return self._experiment_id

    def start(self, key: str, state: str, name: str, params: dict[str, str], tags: dict[str, str],
              parent: Optional[str] = None) -> None:
        """Start an MLflow run, or continue the one the file ``state`` names (written here)."""
        self.keys.add(key)

        def call(client: Any) -> None:
            saved = json.loads(storage.read_text(state) or "{}")
            run_id = saved.get("run_id") if saved.get("tracking_uri") == self.uri else None
            if run_id is not None:
                self._continue(client, key, run_id, params, tags)
                return
            run_tags = dict(tags)
            if parent is not None:
                run_tags["mlflow.parentRunId"] = self.runs[parent]
            run = client.create_run(self._experiment(client), run_name=name, tags=run_tags)
            self.runs[key] = run.info.run_id
            storage.write_text(state, json.dumps(
                {"tracking_uri": self.uri, "experiment": self.experiment, "run_id": run.info.run_id}))
            self._params(client, key, params)

        self._queue(f"the start of {name}", call)

    def _continue(self, client: Any, key: str, run_id: str, params: dict[str, str], tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        run = client.get_run(run_id)
        self.runs[key] = run_id
        for metric in run.data.metrics:
            history = client.get_metric_history(run_id, metric)
            self._logged[(key, metric)] = max((m.step for m in history), default=-1)
        had = run.data.params
        changed = {f"resumed.{k}": v for k, v in params.items() if k in had and had[k] != v}
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in {**tags, **changed}.items()])
        client.update_run(run_id, status="RUNNING")
        self._params(client, key, {k: v for k, v in params.items() if k not in had})

    def _params(self, client: Any, key: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
            client.log_batch(self.runs[key], params=[Param(k, v) for k, v in items[i:i + 100]])

    def metrics(self, key: str, values: dict[str, float], step: int, when: Optional[float] = None) -> None:
        """Log ``values`` at ``step``, except those already logged at this step or later."""
        stamp = int(1000 * (when or time.time()))

        def call(client: Any) -> None:
            from mlflow.entities import Metric

            fresh = {k: v for k, v in values.items() if step > self._logged.get((key, k), -1)}
            if fresh:
                client.log_batch(self.runs[key], metrics=[Metric(k, v, stamp, step) for k, v in fresh.items()])
            for k in fresh:
                self._logged[(key, k)] = step

        self._queue("metrics", call)

    def tags(self, key: str, tags: dict[str, str]) -> None:
        def call(client: Any) -> None:
            from mlflow.entities import RunTag

            client.log_batch(self.runs[key], tags=[RunTag(k, str(v)) for k, v in tags.items()])

        self._queue("tags", call)

    def end(self, key: str, run_dir: Optional[str], status: str, files: tuple[str, ...] = FILES) -> None:
        """Log the files of ``run_dir`` that exist, then the status."""
        def artifacts(client: Any) -> None:
            with tempfile.TemporaryDirectory(prefix="raytrain-mlflow-") as folder:
                for name in files:
                    path = storage.join(run_dir, name)
                    if not storage.exists(path):
                        continue
                    local = storage.local_path(path)
                    if local is None:
                        local = os.path.join(folder, name)
                        storage.download_file(path, local)
                    client.log_artifact(self.runs[key], local)

        if run_dir is not None:
            self._queue(f"the artifacts ({', '.join(files)})", artifacts)
        self._queue(f"the status {status}",
                    lambda client: client.set_terminated(self.runs[key], status))


def run_status(run_dir: str) -> str:
    """The MLflow status of a run as its ``status.json`` says."""
    return STATUSES.get((rundir.read_status(run_dir) or {}).get("status", ""), "FAILED")


def run_tags(job: JobConfig, fingerprint: Optional[str] = None) -> dict[str, str]:
    from importlib.metadata import version

    tags = {"raytrain.workers": "local" if job.scaling.num_workers == 0 else job.scaling.shown,
            "raytrain.version": version("raytrain"), "raytrain.run_dir": job.run_dir}
    if job.model.framework != "auto":  # a search's base job: each trial resolves its own
        tags["raytrain.framework"] = job.model.framework
    if fingerprint:
        tags["raytrain.dataset"] = fingerprint
    return tags


class RunLog:
    """The MLflow run of one ``raytrain train`` run, fed the progress messages the driver
    draws (:class:`raytrain.run.progress.ProgressPrinter` calls :meth:`put`)."""

    def __init__(self, job: JobConfig, uri: str, fingerprint: str):
        self.job = job
        self._notes: list[str] = []
        self.tracker = Tracker(uri, job.run.mlflow_experiment or "raytrain", self._notes.append)
        self.tracker.start("run", storage.join(job.run_dir, STATE), job.run.name or "run", flatten(job),
                           run_tags(job, fingerprint))
        for epoch in rundir.read_metrics(job.run_dir):  # a resumed run: epochs a dead server did not take before
            self.tracker.metrics("run", epoch_values(epoch), int(epoch["epoch"]), epoch.get("time"))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raytrain-mlflow", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            self.tracker.flush()

    def put(self, message: dict[str, Any]) -> None:
        if message["kind"] == "epoch":
            m = message["metrics"]
            self.tracker.metrics("run", epoch_values(m), int(m["epoch"]), m.get("time"))
        elif message["kind"] == "scalars":
            self.tracker.metrics("run", {f"batch_{k}": float(v) for k, v in message["metrics"].items()},
                                 message["step"])
        else:
            return
        self._wake.set()

    def take_notes(self) -> list[str]:
        notes, self._notes[:] = list(self._notes), []
        return notes

    def close(self) -> None:
        """Log the end of the run (as ``status.json`` says) and say what could not be sent."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        run_dir = self.job.run_dir
        status = run_status(run_dir)
        if rundir.read_metrics(run_dir) and not storage.exists(storage.join(run_dir, rundir.REPORT)):
            from raytrain.run import report

            try:
                report.report([run_dir])
            except Exception as e:  # the picture is a nicety: the run's end is still logged
                self._notes.append(f"raytrain: could not draw {rundir.REPORT} for MLflow ({_first_line(e)})")
        self.tracker.end("run", run_dir, status)
        sent = self.tracker.flush(force=True)
        for note in self.take_notes():
            print(note, flush=True)
        if not sent:
            print(f"raytrain: MLflow at {self.tracker.uri} did not take {', '.join(self.tracker.unsent())} "
                  f"({self.tracker.error}); the run directory {run_dir} holds all of it", flush=True)
        elif "run" in self.tracker.runs:
            print(f"raytrain: logged to MLflow {self.tracker.uri}, experiment '{self.tracker.experiment}', run "
                  f"{self.tracker.runs['run']}", flush=True)
