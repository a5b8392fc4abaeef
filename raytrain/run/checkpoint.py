"""Checkpoints: what a restarted worker group or a resumed run continues from.

A checkpoint is a folder in the run directory, ``checkpoint-epoch-NNNN`` after ``NNNN``
epochs, or ``checkpoint-epoch-NNNN-step-SSSSSS`` after ``NNNN`` epochs and ``SSSSSS``
steps of the next (a step checkpoint, every ``run.checkpoint_every``), holding

- the weights of the model **and its optimizer's state** (slots, iteration count), so
  training continues as if it had not stopped: a ``tf.train.Checkpoint`` (``weights.*``)
  for tf_keras, every variable in order (``weights.npz``) for Keras 3
  (:meth:`raytrain.frameworks.Framework.write_weights`);
- ``raytrain_state.json``: the epochs completed, the steps done of the next one, the
  data order's seed, partitions and global batch. An epoch's order is a pure function of
  ``(seed, epoch)`` and the data (:mod:`raytrain.data.order`), the same for any number
  of workers, so this is all the data order needs to continue, at the next step.

Every rank writes one at the end of every epoch (saving under the strategy is
collective); rank 0's is kept. With Ray workers it is reported to Ray Train
(``ray.train.report(..., checkpoint=...)``), which copies it to the run directory,
keeps ``run.keep_checkpoints`` of them and hands the latest to a restarted worker
group (``ray.train.get_checkpoint()``). In local mode (no worker group) raytrain copies
and prunes them itself, in the same layout, so either mode resumes the other's run.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Optional

from raytrain.run import storage
from raytrain.run.rundir import CHECKPOINT_PREFIX as PREFIX

STATE_FILE = "raytrain_state.json"  # written last: a folder without it is incomplete


def dir_name(epoch: int, step: int = 0) -> str:
    """The folder name of the checkpoint taken after ``epoch`` epochs and ``step`` steps
    of the next."""
    return f"{PREFIX}{epoch:04d}" + (f"-step-{step:06d}" if step else "")


def write(model: Any, folder: str, state: dict[str, Any], framework: Any = None) -> None:
    """Write the model's weights, its optimizer's state and ``state`` into a local ``folder``
    (``framework``: the model's :class:`raytrain.frameworks.Framework`, found from the model
    when not given)."""
    os.makedirs(folder, exist_ok=True)
    (framework or _framework_of(model)).write_weights(model, folder)
    files = {name: os.path.getsize(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}
    with open(os.path.join(folder, STATE_FILE), "w") as f:
        json.dump(dict(state, files=files), f)


def _framework_of(model: Any) -> Any:
    from raytrain import frameworks
    from raytrain.models import is_keras3

    return frameworks.get(frameworks.KERAS if is_keras3(model) else frameworks.TF_KERAS)


def read_state(folder: str) -> dict[str, Any]:
    """The state written with the checkpoint (without its list of files)."""
    with open(os.path.join(folder, STATE_FILE)) as f:
        state = json.load(f)
    state.pop("files", None)
    return state


def restore(model: Any, folder: str, framework: Any = None) -> dict[str, Any]:
    """Load weights and optimizer state from a local checkpoint ``folder``; return its state.

    Call in the framework's scope, after the model is compiled.
    """
    (framework or _framework_of(model)).read_weights(model, folder)
    return read_state(folder)


def complete(path: str) -> bool:
    """Whether the checkpoint folder ``path`` holds every file its state lists, at its
    size. The state file alone is not enough: an object store may show it before the
    weights copied beside it (copies of several files land in no guaranteed order)."""
    text = storage.read_text(storage.join(path, STATE_FILE))
    if text is None:
        return False
    try:
        listed = json.loads(text).get("files")
    except ValueError:
        return False  # a state file still being written
    if listed is None:  # written before the state listed its files
        return True
    sizes = storage.sizes(path)
    return all(sizes.get(name) == size for name, size in listed.items())


def position(name: str) -> Optional[tuple[int, int]]:
    """(epochs, steps) of a checkpoint folder's name, or None for another name."""
    match = re.fullmatch(rf"{PREFIX}(\d+)(?:-step-(\d+))?", name)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def found(run_dir: str) -> list[tuple[tuple[int, int], str]]:
    """Complete checkpoints in ``run_dir`` as ((epochs, steps), path), oldest first."""
    out = []
    for name in storage.listdir(run_dir):
        at = position(name)
        if at and complete(storage.join(run_dir, name)):
            out.append((at, storage.join(run_dir, name)))
    return sorted(out)


def on_storage(run_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints in ``run_dir`` as (epochs done, path), oldest first (a step
    checkpoint after the epoch's own)."""
    return [(at[0], path) for at, path in found(run_dir)]


def latest(run_dir: str) -> Optional[tuple[int, str]]:
    """The newest complete checkpoint in ``run_dir``, or None."""
    found = on_storage(run_dir)
    return found[-1] if found else None


def persist(folder: str, run_dir: str, epoch: int, keep: int, step: int = 0) -> str:
    """Copy a local checkpoint into the run directory and keep only the newest ``keep``
    (local mode; with Ray workers Ray Train does this)."""
    dest = storage.join(run_dir, dir_name(epoch, step))
    storage.upload_dir(folder, dest)
    old = found(run_dir)
    if step:  # with Ray workers Ray Train keeps the epoch checkpoints: prune only the step ones here
        old = [(at, path) for at, path in old if at[1]]
    for _, path in old[:-keep]:
        storage.delete_dir(path)
    return dest
