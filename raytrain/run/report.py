"""``raytrain report RUN [RUN ...]``: a picture and a table of how runs trained.

``report.png`` has one panel per quantity, epochs on the x axis: the loss and each
metric (training solid, validation dashed), samples/s (all workers), and the share of
training time spent waiting for data. Several runs are overlaid, one colour each. The
picture goes to ``<first run>/report.png`` (one run) or
``<first run>/report-vs-<other names>.png`` (several) unless ``--out`` says otherwise.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

from raytrain.errors import RaytrainError
from raytrain.run import rundir, storage
from raytrain.run.rundir import RUN_KEYS


def load(run_dir: str) -> list[dict[str, Any]]:
    if not rundir.is_run(run_dir):
        raise RaytrainError(f"{run_dir} is not a raytrain run (no {rundir.JOB}); pass a run directory such as runs/NAME")
    epochs = rundir.read_metrics(run_dir)
    if not epochs:
        raise RaytrainError(f"{run_dir} has no finished epoch yet (metrics.jsonl is empty); report it later")
    return epochs


def _name(run_dir: str) -> str:
    return run_dir.rstrip("/").rsplit("/", 1)[-1]


def panels(runs: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str]]:
    """(title, key) of every panel: the loss and metrics, then throughput and data wait."""
    keys: list[str] = []
    for epochs in runs.values():
        for key in epochs[-1]:
            if key not in RUN_KEYS and not key.startswith("val_") and key not in keys:
                keys.append(key)
    keys.sort(key=lambda k: (k != "loss", k))
    return [(k, k) for k in keys] + [("samples/s (all workers)", "samples_per_s"),
                                     ("waiting for data (share of training time)", "data_wait_fraction")]


def draw(runs: dict[str, list[dict[str, Any]]], out: str) -> None:
    """Write the report picture of ``{name: metrics records}`` to the local file ``out``."""
    import matplotlib  # only when drawing; the backend must be chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    spec = panels(runs)
    cols = 2 if len(spec) <= 4 else 3
    rows = -(-len(spec) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, key) in zip(axes.flat, spec):
        for i, (name, epochs) in enumerate(runs.items()):
            colour = colours[i % len(colours)]
            x = [e["epoch"] for e in epochs]
            if key in epochs[-1]:
                ax.plot(x, [e.get(key) for e in epochs], "-o", color=colour, markersize=3,
                        label=f"{name} train" if f"val_{key}" in epochs[-1] else name)
            if f"val_{key}" in epochs[-1]:
                ax.plot(x, [e.get(f"val_{key}") for e in epochs], "--s", color=colour, markersize=3,
                        label=f"{name} validation")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key == "data_wait_fraction":
            top = max(e.get(key, 0) for epochs in runs.values() for e in epochs)
            ax.set_ylim(0, max(0.05, 1.2 * top))
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(spec):]:
        ax.axis("off")
    fig.suptitle("raytrain: " + " vs ".join(runs), fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def table(name: str, epochs: list[dict[str, Any]]) -> str:
    """A short text table of one run: a row per epoch."""
    keys = [k for k in epochs[-1] if k not in RUN_KEYS]
    head = ["epoch", *keys, "samples/s", "wait"]
    rows = [[str(e["epoch"]), *(f"{e.get(k, float('nan')):.4f}" for k in keys), f"{e['samples_per_s']:,.0f}",
             f"{100 * e['data_wait_fraction']:.1f}%"] for e in epochs]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [name, "  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def report(run_dirs: list[str], out: Optional[str] = None) -> tuple[str, str]:
    """Draw the report of ``run_dirs`` and return (picture path, text tables)."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for run_dir in run_dirs:
        name = _name(run_dir)
        while name in runs:
            name += "'"
        runs[name] = load(run_dir)
    first = run_dirs[0]
    if out is None:
        others = "-".join(list(runs)[1:])
        out = storage.join(first, rundir.REPORT if len(runs) == 1 else f"report-vs-{others}.png")
    local = storage.local_path(out)
    if local is None:  # a URI: draw here, then copy
        folder = tempfile.mkdtemp(prefix="raytrain-report-")
        draw(runs, os.path.join(folder, rundir.REPORT))
        storage.write_bytes(out, open(os.path.join(folder, rundir.REPORT), "rb").read())
    else:
        os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
        draw(runs, local)
    return out, "\n\n".join(table(name, epochs) for name, epochs in runs.items())
