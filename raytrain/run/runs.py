"""``raytrain runs [STORAGE_PATH]``: the runs in a storage path, one line each.

Status comes from ``status.json``: ``running``, ``finished``, ``failed`` or
``interrupted``; a run that says ``running`` but whose driver process (on this machine)
is gone shows as ``stopped`` (continue it with ``--resume``). The best validation
metric is the job's first metric on validation (``val_<metric>``, else ``val_loss``)
over the epochs done: its maximum for accuracy-like metrics (accuracy, AUC, precision,
recall), its minimum for losses and errors (mse, mae, crossentropy).

The workers column is the count (``local``: in-process); for an elastic run, its range and
the count of each epoch done, run-length coded (``2..3: 3x2, 2x1``: 3 workers for two
epochs, then 2 for one).

A search of ``raytrain tune`` is one row: ``NAME (search: done/total trials)``, its
status, and its best trial's epochs and best value of the search's metric.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Optional

from raytrain.run import rundir, storage

HIGHER_IS_BETTER = ("acc", "auc", "precision", "recall", "iou", "f1")  # parts of metric names


def higher_is_better(metric: str) -> bool:
    """Accuracy-like metrics are best at their maximum; losses and errors (mse, mae,
    crossentropy, ...) at their minimum."""
    return any(part in metric.lower() for part in HIGHER_IS_BETTER)


def _best(epochs: list[dict[str, Any]], metrics: list[str]) -> Optional[tuple[str, float]]:
    """The best value of the job's first metric on validation (else of ``val_loss``)."""
    if not epochs:
        return None
    keys = [f"val_{m}" for m in metrics if f"val_{m}" in epochs[-1]] + ["val_loss"]
    key = next((k for k in keys if k in epochs[-1]), None)
    if key is None:
        return None
    values = [e[key] for e in epochs if key in e]
    return key, (max(values) if higher_is_better(key) else min(values))


def _alive(status: dict[str, Any]) -> bool:
    pid, host = status.get("driver_pid"), status.get("host")
    if pid is None or host != socket.gethostname():
        return True  # another machine's driver: trust the file
    return os.path.exists(f"/proc/{pid}")


def workers(scaling: Any, epochs: list[dict[str, Any]]) -> Any:
    """The run's workers: the count (0 = local), or for an elastic run the count of each
    epoch done, run-length coded: ``3x2, 2x1`` = 3 workers for 2 epochs, then 2 for 1."""
    if not scaling.elastic:
        return scaling.num_workers
    counts = [e.get("workers") for e in epochs]
    runs: list[list[Any]] = []
    for count in counts:
        if runs and runs[-1][0] == count:
            runs[-1][1] += 1
        else:
            runs.append([count, 1])
    done = ", ".join(f"{w}x{n}" for w, n in runs)
    return scaling.shown + (f": {done}" if done else "")


def describe(run_dir: str) -> dict[str, Any]:
    """What ``raytrain runs`` shows about one run."""
    job = rundir.read_job(run_dir)
    status = rundir.read_status(run_dir) or {}
    epochs = rundir.read_metrics(run_dir)
    summary = rundir.read_summary(run_dir)
    state = status.get("status", "finished" if summary else "unknown")  # runs older than status.json
    if state == "running" and not _alive(status):
        state = "stopped"
    events = rundir.read_events(run_dir)
    started = min((e["time"] for e in events if e["event"] == "start"), default=None)
    if state == "running" and started is not None:
        wall = time.time() - started
    elif summary:
        wall = summary.get("wall_time_s")
    else:
        wall = sum(e["epoch_time_s"] for e in epochs) if epochs else None
    return {
        "name": run_dir.rstrip("/").rsplit("/", 1)[-1],
        "status": state,
        "epochs_done": len(epochs),
        "epochs": job.training.epochs,
        "best": _best(epochs, job.model.metrics),
        "workers": workers(job.scaling, epochs),
        "wall_time_s": wall,
        "error": status.get("error"),
    }


def describe_search(folder: str) -> dict[str, Any]:
    """A search of ``raytrain tune`` as one row: its status and its best trial's run."""
    record = rundir.read_search(folder)
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    trials = [n for n in storage.listdir(folder) if n.startswith(rundir.TRIAL_PREFIX)
              and rundir.is_run(storage.join(folder, n))]
    state = record.get("status", "unknown")
    if state == "running" and not _alive({"driver_pid": record.get("pid"), "host": record.get("host")}):
        state = "stopped"
    row = {"name": f"{name} (search: {len(trials)}/{record.get('trials', '?')} trials)", "status": state,
           "epochs_done": 0, "epochs": record["job"]["training"]["epochs"], "best": None,
           "workers": record["job"]["scaling"]["num_workers"], "wall_time_s": record.get("wall_time_s"),
           "error": None}
    best = record.get("best")
    if isinstance(best, dict):  # written when the search ends: its best trial, value and epochs
        row["best"] = (f"{record['tune']['metric']} (best trial {best['name']})", best["value"])
        row["epochs_done"] = best["epochs"]
    return row


def list_runs(base: str) -> list[dict[str, Any]]:
    """Every run (folders with a saved job) and search of ``raytrain tune`` in ``base``, by name."""
    rows = []
    for name in storage.listdir(base):
        folder = storage.join(base, name)
        if rundir.is_run(folder):
            rows.append(describe(folder))
        elif rundir.is_search(folder):
            rows.append(describe_search(folder))
    return rows


def render(runs: list[dict[str, Any]]) -> str:
    head = ["name", "status", "epochs", "best validation", "workers", "wall time"]
    rows = []
    for r in runs:
        best = f"{r['best'][0]} {r['best'][1]:.4f}" if r["best"] else "-"
        workers = "local" if r["workers"] == 0 else str(r["workers"])  # an elastic run's is text
        wall = f"{r['wall_time_s']:.0f} s" if r["wall_time_s"] is not None else "-"
        rows.append([r["name"], r["status"], f"{r['epochs_done']}/{r['epochs']}", best, workers, wall])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)
