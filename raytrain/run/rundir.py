"""What a run writes to ``<storage_path>/<name>/``, and reading it back.

| file | written by | what |
|---|---|---|
| ``job.yaml``, ``dataset.json`` | driver, at start | the resolved job; shapes, classes, step plan |
| ``status.json`` | driver | ``running``, ``finished``, ``failed`` or ``interrupted``, and when |
| ``metrics.jsonl`` | rank 0, each epoch | one line per epoch, exactly once even across restarts |
| ``events.jsonl`` | rank 0 | ``start`` (with the epoch it starts from), ``first_step``, ``restored`` |
| ``checkpoint-epoch-NNNN/`` | Ray Train / rank 0 | see :mod:`raytrain.run.checkpoint` |
| ``workers/rank-N.json`` | each rank | node, pid; at the end the weights' digest, skipped files |
| ``model.keras``, ``saved_model/`` | rank 0, at the end | the final model, see :func:`export_model` |
| ``summary.json``, ``skipped_files.txt`` | driver, at the end | the summary; bad files skipped |
| ``tensorboard/`` | rank 0, each epoch | TensorBoard scalars, see :mod:`raytrain.run.scalars` |
| ``evaluations.jsonl`` | ``raytrain evaluate`` | one line per evaluation |
| ``report.png`` | ``raytrain report`` | curves of the run |

This module is the only one that knows these names. All writes go through
:mod:`raytrain.run.storage`, so the run directory may be a URI.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import tempfile
import sys
import time
from typing import Any, Callable, Iterator, Optional

import yaml

from raytrain.config import JobConfig, from_dict, to_dict
from raytrain.errors import RaytrainError
from raytrain.run import storage

JOB = "job.yaml"
DATASET = "dataset.json"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
STATUS = "status.json"
SUMMARY = "summary.json"
WORKERS = "workers"
SKIPPED = "skipped_files.txt"
MODEL_KERAS = "model.keras"
SAVED_MODEL = "saved_model"
TENSORBOARD = "tensorboard"
EVALUATIONS = "evaluations.jsonl"
REPORT = "report.png"
CLAIM = ".claim.json"  # the process that is starting or running this run (see claim())
# A search of `raytrain tune` (raytrain.tuning): <storage_path>/<search name>/ holds these,
# one run directory per trial (trial_NNNNN/), and Ray Tune's own state (tune/).
SEARCH = "search.json"  # the base job, the search, its status
BEST = "best.json"  # the best trial: its parameters, metric, run and model
TRIALS = "trials.txt"  # the final table of trials
BEST_MODEL = "best_model.keras"  # a copy of the best trial's model.keras
TUNE_STATE = "tune"  # Ray Tune's experiment folder (what --resume restores)
TRIAL_PREFIX = "trial_"
CHECKPOINT_PREFIX = "checkpoint-epoch-"  # + the epochs done, 4 digits: see raytrain.run.checkpoint


def _owner_alive(owner: dict[str, Any]) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # another machine's process: it cannot be checked from here
    return os.path.exists(f"/proc/{owner.get('pid')}")


def best_effort(what: str, action: Callable[[], Any]) -> None:
    """A clean-up step (a status, pruning, a claim) whose failure must not replace the error
    being reported, when the store that holds the run has gone away: one line says what
    could not be done."""
    try:
        action()
    except Exception as e:
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        sys.stderr.write(f"raytrain: could not {what} ({reason})\n")


@contextlib.contextmanager
def claim(run_dir: str) -> Iterator[None]:
    """Hold ``run_dir`` for this process while it is checked, indexed and trained.

    The claim is a file created exclusively (``O_EXCL``), so of two commands started on
    the same run at once exactly one goes on; the other gets one line naming the first.
    A claim left by a process that no longer runs (on this machine) is taken over. On a
    URI the file is written if absent, which narrows the race but cannot close it (object
    stores offer no exclusive create through pyarrow): do not start two drivers on one
    run name there.
    """
    path = storage.join(run_dir, CLAIM)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
    if storage.is_uri(run_dir):
        owner = json.loads(storage.read_text(path) or "null")
        if owner and _owner_alive(owner) and owner.get("pid") != me["pid"]:
            raise _claimed(run_dir, owner)
        storage.write_text(path, json.dumps(me))
    else:
        created = not os.path.isdir(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                owner = json.loads(storage.read_text(path) or "{}")
                if _owner_alive(owner):
                    raise _claimed(run_dir, owner) from None
                os.remove(path)  # its process is gone: take the run over
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
    try:
        yield
    finally:
        if storage.is_uri(run_dir):
            best_effort(f"remove the claim {path} (the next command on this run takes it over)",
                        lambda: storage.delete_file(path))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            if created and not os.listdir(run_dir):  # bad input stopped it before anything was written
                os.rmdir(run_dir)


def _claimed(run_dir: str, owner: dict[str, Any]) -> RaytrainError:
    return RaytrainError(
        f"run {run_dir} is in use by another raytrain (pid {owner.get('pid')} on {owner.get('host')}); "
        "wait for it, or choose another --name"
    )


def is_run(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a run (its saved job)."""
    return storage.exists(storage.join(run_dir, JOB))


def is_search(folder: str) -> bool:
    """Whether ``folder`` holds a search of ``raytrain tune``."""
    return storage.exists(storage.join(folder, SEARCH))


def write_search(folder: str, record: dict[str, Any]) -> None:
    storage.write_text(storage.join(folder, SEARCH), json.dumps(record, indent=1))


def read_search(folder: str) -> dict[str, Any]:
    text = storage.read_text(storage.join(folder, SEARCH))
    if text is None:
        raise RaytrainError(f"{folder} holds no search of raytrain tune (no {SEARCH}); check --name and --storage-path")
    return json.loads(text)


def write_job(run_dir: str, job: JobConfig, extra: Optional[dict[str, Any]] = None) -> None:
    """Save the resolved job: what ``--resume`` and ``raytrain evaluate`` read back
    (``extra``: more sections, such as a submitted search's ``tune:``)."""
    storage.write_text(storage.join(run_dir, JOB), yaml.safe_dump({**to_dict(job), **(extra or {})}, sort_keys=False))


def read_job(run_dir: str) -> JobConfig:
    """The job a run saved in its directory.

    Raises:
        RaytrainError: ``run_dir`` holds no run.
    """
    path = storage.join(run_dir, JOB)
    text = storage.read_text(path)
    if text is None:
        raise RaytrainError(f"{run_dir} is not a raytrain run (no {JOB}); pass a run directory such as runs/NAME")
    return from_dict(yaml.safe_load(text), source=path)


def write_dataset(run_dir: str, meta: dict[str, Any]) -> None:
    """Save what the index found (shapes, classes, the step plan)."""
    storage.write_text(storage.join(run_dir, DATASET), json.dumps(meta, indent=1))


def read_dataset(run_dir: str) -> dict[str, Any]:
    return json.loads(storage.read_text(storage.join(run_dir, DATASET)) or "{}")


def write_summary(run_dir: str, summary: dict[str, Any]) -> None:
    storage.write_text(storage.join(run_dir, SUMMARY), json.dumps(summary, indent=1))


def read_summary(run_dir: str) -> dict[str, Any]:
    return json.loads(storage.read_text(storage.join(run_dir, SUMMARY)) or "{}")


def append_evaluation(run_dir: str, result: dict[str, Any]) -> None:
    storage.append_line(storage.join(run_dir, EVALUATIONS), json.dumps(result))


def path(run_dir: str, name: str) -> str:
    """Where the file ``name`` (one of this module's names) of a run is."""
    return storage.join(run_dir, name)


# metrics.jsonl keys besides the model's metrics; "time" is when the epoch ended (Unix seconds, before its
# checkpoint): the gaps between epochs are the marginal epoch time, fixed costs included.
RUN_KEYS = ("epoch", "epoch_time_s", "samples_per_s", "data_wait_s", "data_wait_fraction", "time", "workers")
# that describe the run rather than the model


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl`` (empty if none yet)."""
    text = storage.read_text(storage.join(run_dir, METRICS)) or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def append_metrics(run_dir: str, metrics: dict[str, Any]) -> None:
    storage.append_line(storage.join(run_dir, METRICS), json.dumps(metrics))


def keep_metrics_through(run_dir: str, epoch: int) -> None:
    """Drop the lines of epochs after ``epoch``: a restored run redoes them, and each
    epoch must appear once. (Each line is written before its epoch's checkpoint, so the
    lines up to a checkpoint's epoch are all there.)"""
    found = read_metrics(run_dir)
    kept = [m for m in found if m["epoch"] <= epoch]
    if len(kept) == len(found):
        return
    storage.write_text(storage.join(run_dir, METRICS), "".join(json.dumps(m) + "\n" for m in kept))


def event(run_dir: str, name: str, **fields: Any) -> None:
    """Append ``{"event": name, "time": <unix seconds>, ...}`` to ``events.jsonl``."""
    storage.append_line(storage.join(run_dir, EVENTS), json.dumps({"event": name, "time": time.time(), **fields}))


def read_events(run_dir: str) -> list[dict[str, Any]]:
    text = storage.read_text(storage.join(run_dir, EVENTS)) or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_status(run_dir: str, status: str, **fields: Any) -> None:
    record = {"status": status, "time": time.time(), **fields}
    storage.write_text(storage.join(run_dir, STATUS), json.dumps(record, indent=1))


def read_status(run_dir: str) -> Optional[dict[str, Any]]:
    text = storage.read_text(storage.join(run_dir, STATUS))
    return json.loads(text) if text else None


def write_worker_record(run_dir: str, rank: int, record: dict[str, Any]) -> None:
    storage.write_text(storage.join(run_dir, WORKERS, f"rank-{rank}.json"), json.dumps(record, indent=1))


def drop_worker_records(run_dir: str, world_size: int) -> None:
    """Remove the records of ranks ``world_size`` and up: an elastic run that restarted
    with fewer workers has only the ranks it trains with now."""
    folder = storage.join(run_dir, WORKERS)
    for name in storage.listdir(folder):
        number = name[len("rank-"):-len(".json")] if name.startswith("rank-") and name.endswith(".json") else ""
        if number.isdigit() and int(number) >= world_size:
            storage.delete_file(storage.join(folder, name))


def read_worker_records(run_dir: str) -> list[dict[str, Any]]:
    folder = storage.join(run_dir, WORKERS)
    names = [n for n in storage.listdir(folder) if n.startswith("rank-") and n.endswith(".json")]
    records = [json.loads(storage.read_text(storage.join(folder, n)) or "{}") for n in names]
    return sorted(records, key=lambda r: r.get("rank", 0))


def collect_skipped(run_dir: str) -> dict[str, str]:
    """Bad files every rank skipped, written to ``skipped_files.txt`` as ``path<TAB>reason``
    lines if there are any."""
    skipped: dict[str, str] = {}
    for record in read_worker_records(run_dir):
        skipped.update(record.get("skipped_files", {}))
    if skipped:
        text = "".join(f"{path}\t{reason}\n" for path, reason in sorted(skipped.items()))
        storage.write_text(storage.join(run_dir, SKIPPED), text)
    return skipped


def export_model(model: Any, run_dir: str, rank: int, saved_model: bool = True) -> None:
    """Export the final model; every rank must call this (saving under the strategy is
    collective; the others write to a scratch folder, as TensorFlow's multi-worker guide
    prescribes).

    Rank 0 writes ``model.keras`` (``tf_keras.models.load_model``, or for a Keras 3 model
    ``keras.saving.load_model``, reads it back, compiled, to train on or evaluate) and, with
    ``saved_model`` (tf_keras models), ``saved_model/`` (``model.export``: a SavedModel with a
    ``serve`` / ``serving_default`` signature for TensorFlow Serving; it takes the model's
    float32 inputs: uint8 images divided by 255, or as 0-255 values when the model scales
    its own inputs, as ``data.scale`` decided during training).
    """
    scratch = tempfile.mkdtemp(prefix=f"raytrain-export-rank{rank}-")
    try:
        model.save(os.path.join(scratch, MODEL_KERAS))
        if saved_model:
            with contextlib.redirect_stdout(io.StringIO()):  # export prints its signature
                model.export(os.path.join(scratch, SAVED_MODEL))
        if rank != 0:
            return
        storage.upload_file(os.path.join(scratch, MODEL_KERAS), storage.join(run_dir, MODEL_KERAS))
        if saved_model:
            storage.upload_dir(os.path.join(scratch, SAVED_MODEL), storage.join(run_dir, SAVED_MODEL))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
