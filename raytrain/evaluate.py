"""``raytrain evaluate RUN_DIR``: the exported model of a run on a dataset, read by raytrain's loaders.

The data is the run's own (``job.yaml``) unless ``--data`` / ``--directory`` /
``--manifest`` name other files; how samples are read and prepared (HDF5 keys, image
size, colour mode, interpolation, bad-file policy) is always the run's, so the model
sees what it was trained on. Every sample is evaluated once (the last batch is
shorter), in this process. The result is printed and appended to
``<run>/evaluations.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Optional

from raytrain import rundir, storage
from raytrain.errors import RaytrainError


def load_run_job(run_dir: str) -> Any:
    """The job a run saved in its directory."""
    import yaml

    from raytrain.config import from_dict

    text = storage.read_text(storage.join(run_dir, "job.yaml"))
    if text is None:
        raise RaytrainError(f"{run_dir} is not a raytrain run (no job.yaml); pass a run directory such as runs/NAME")
    return from_dict(yaml.safe_load(text), source=storage.join(run_dir, "job.yaml"))


def _load_model(run_dir: str) -> Any:
    import tempfile

    import tf_keras

    path = storage.join(run_dir, rundir.MODEL_KERAS)
    if not storage.exists(path):
        status = (rundir.read_status(run_dir) or {}).get("status", "unknown")
        raise RaytrainError(f"{run_dir} has no exported model ({rundir.MODEL_KERAS}; the run is {status}); "
                            "evaluate a finished run, or finish this one with raytrain train --resume")
    local = storage.local_path(path)
    if local is None:  # a URI: copy it here first
        import pyarrow.fs

        local = tempfile.mkdtemp(prefix="raytrain-eval-") + "/" + rundir.MODEL_KERAS
        fs, p = pyarrow.fs.FileSystem.from_uri(path)
        pyarrow.fs.copy_files(p, local, source_filesystem=fs)
    return tf_keras.models.load_model(local)


def evaluate(run_dir: str, data: Optional[dict[str, Any]] = None, batch_size: int = 64) -> dict[str, Any]:
    """Evaluate ``<run_dir>/model.keras`` and return ``{"samples", "metrics", ...}``.

    Args:
        run_dir: A finished run.
        data: ``data`` keys that replace the run's (e.g. ``{"paths": [...]}``); None = the run's data.
        batch_size: Samples per evaluation batch.
    """
    import os

    from raytrain.trainer import WORKER_ENV

    for k, v in WORKER_ENV.items():  # before TensorFlow loads, as for training
        os.environ.setdefault(k, v)
    import numpy as np
    import tensorflow as tf

    from raytrain.config import validate_source
    from raytrain.index import build_index
    from raytrain.shard import VALIDATION, Shard, StepPlan
    from raytrain.worker import WorkerSpec, batch_to_model, make_loader

    if batch_size < 1:
        raise RaytrainError(f"--batch-size must be a positive integer. Received: {batch_size}")
    job = load_run_job(run_dir)
    meta = json.loads(storage.read_text(storage.join(run_dir, "dataset.json")) or "{}")
    d = job.data
    if data:  # other files, read the run's way
        d = dataclasses.replace(d, **{"kind": None, "paths": [], "directory": None, "manifest": None, **data})
        validate_source(d)
    index = build_index(d)
    trained = tuple(meta.get("sample_shape", ()))
    if index.sample_shape != trained:
        raise RaytrainError(
            f"samples of {d.paths or d.directory or d.manifest} have shape {index.sample_shape} but the model of "
            f"{run_dir} was trained on {trained}; evaluate on data of the same shape"
        )
    if index.num_classes > meta.get("num_classes", index.num_classes):
        raise RaytrainError(
            f"the data has {index.num_classes} classes but the model of {run_dir} knows {meta['num_classes']}"
        )
    model = _load_model(run_dir)
    job = dataclasses.replace(job, data=d, scaling=dataclasses.replace(job.scaling, num_workers=0))
    steps = math.ceil(len(index) / batch_size)
    plan = StepPlan(1, batch_size, batch_size, steps, 0)
    spec = WorkerSpec(job, plan, index.sample_shape, meta.get("num_classes", index.num_classes),
                      bool(meta.get("one_hot", index.one_hot)), index.dtype, index.rows_per_block,
                      meta.get("shuffle_window") or 4096)
    loader = make_loader(spec, Shard(index.table, index.rows_per_block), 0, VALIDATION)
    started = time.perf_counter()
    try:
        ds = tf.data.Dataset.from_generator(
            lambda: loader.epoch(0, steps, batch_size, tail=True),
            output_signature=(tf.TensorSpec((None, *index.sample_shape), np.dtype(index.dtype)),
                              tf.TensorSpec((None,), tf.int64)),
        ).map(batch_to_model(spec))
        metrics = model.evaluate(ds, verbose=0, return_dict=True)
    finally:
        loader.close()
    result = {
        "time": time.time(),
        "data": d.paths or d.directory or d.manifest,
        "samples": len(index),
        "seconds": time.perf_counter() - started,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "skipped_files": sorted(loader.skipped),
    }
    storage.append_line(storage.join(run_dir, "evaluations.jsonl"), json.dumps(result))
    return result
