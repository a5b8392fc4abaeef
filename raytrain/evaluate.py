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
import math
import os
import tempfile
import time
from typing import Any, Optional

from raytrain import frameworks
from raytrain.config import validate_source
from raytrain.data.feed import read_ahead, to_model
from raytrain.data.loader import AUTO_WINDOW_MAX
from raytrain.data.kinds import build_index, make_loader
from raytrain.data.loader import ReadSpec, reading_threads
from raytrain.data.order import VALIDATION
from raytrain.data.shard import Shard
from raytrain.env import set_worker_env
from raytrain.errors import RaytrainError
from raytrain.models import resolve_builder, scales_uint8
from raytrain.run import rundir, storage
from raytrain.run.progress import quiet_stderr

# The frameworks are imported in the functions that use them, and their C++ start-up lines
# are silenced around the import.


def _load_model(run_dir: str, builder: str, framework: str) -> Any:
    """The run's exported model. The builder's module is imported first, so custom layers
    it registers (``@keras.saving.register_keras_serializable()``) can be rebuilt."""
    from raytrain.models import keras_module

    keras = keras_module(framework)
    path = rundir.path(run_dir, rundir.MODEL_KERAS)
    if not storage.exists(path):
        status = (rundir.read_status(run_dir) or {}).get("status", "unknown")
        raise RaytrainError(f"{run_dir} has no exported model ({rundir.MODEL_KERAS}; the run is {status}); "
                            "evaluate a finished run, or finish this one with raytrain train --resume")
    local = storage.local_path(path)
    if local is None:  # a URI: copy it here first
        local = os.path.join(tempfile.mkdtemp(prefix="raytrain-eval-"), rundir.MODEL_KERAS)
        storage.download_file(path, local)
    try:
        resolve_builder(builder, framework)
    except RaytrainError:
        pass  # the builder moved or is gone: a model of built-in layers still loads
    try:
        return keras.models.load_model(local)
    except (TypeError, ValueError) as e:
        raise RaytrainError(
            f"{path} cannot be loaded: {str(e).splitlines()[0]}; a custom layer must be registered with "
            f"@{keras.__name__}.saving.register_keras_serializable() in the builder's module (and get_config for its "
            "arguments)"
        ) from None


def _check_like_training(index: Any, meta: dict[str, Any], where: str, run_dir: str) -> None:
    """The data must have the shape and no more classes than the model was trained on."""
    trained = tuple(meta.get("sample_shape", ()))
    if index.sample_shape != trained:
        raise RaytrainError(
            f"samples of {where} have shape {index.sample_shape} but the model of "
            f"{run_dir} was trained on {trained}; evaluate on data of the same shape"
        )
    if index.num_classes > meta.get("num_classes", index.num_classes):
        raise RaytrainError(
            f"the data has {index.num_classes} classes but the model of {run_dir} knows {meta['num_classes']}"
        )


def evaluate(run_dir: str, data: Optional[dict[str, Any]] = None, batch_size: int = 64) -> dict[str, Any]:
    """Evaluate ``<run_dir>/model.keras`` and return ``{"samples", "metrics", ...}``.

    Args:
        run_dir: A finished run.
        data: ``data`` keys that replace the run's (e.g. ``{"paths": [...]}``); None = the run's data.
        batch_size: Samples per evaluation batch.
    """
    set_worker_env(os.environ)  # before TensorFlow loads, as for training
    if batch_size < 1:
        raise RaytrainError(f"--batch-size must be a positive integer. Received: {batch_size}")
    job = rundir.read_job(run_dir)
    meta = rundir.read_dataset(run_dir)
    d = job.data
    if data:  # other files, read the run's way
        d = dataclasses.replace(d, **{"kind": None, "paths": [], "directory": None, "manifest": None, **data})
        validate_source(d)
    where = d.paths or d.directory or d.manifest
    index = build_index(d)
    _check_like_training(index, meta, str(where), run_dir)
    framework = "tf_keras" if job.model.framework == "auto" else job.model.framework  # runs from before the choice
    frameworks.check(framework)
    with quiet_stderr():
        model = _load_model(run_dir, job.model.builder, framework)
    read = ReadSpec(d, index.sample_shape, index.dtype, index.rows_per_block,
                    meta.get("shuffle_window") or AUTO_WINDOW_MAX, reading_threads(d, None))  # all this process's CPUs
    loader = make_loader(read, Shard(index.table, index.rows_per_block), 0, VALIDATION)
    steps = math.ceil(len(index) / batch_size)
    classes, one_hot = meta.get("num_classes", index.num_classes), bool(meta.get("one_hot", index.one_hot))
    batches = loader.epoch(0, steps, batch_size, tail=True)
    started = time.perf_counter()
    if framework == frameworks.KERAS:
        from raytrain.frameworks.keras_jax import BatchQueue, to_numpy

        feed = BatchQueue(d.prefetch_batches, to_numpy(index.dtype, classes, one_hot, scales_uint8(d.scale, model)))
        feed.start(batches)
        model.steps_per_execution = 1  # one call per batch: the last one is shorter
        ds = feed.take(steps)
    else:
        convert = to_model(index.dtype, classes, one_hot, scales_uint8(d.scale, model))
        feed, ds = read_ahead(batches, steps, (None, *index.sample_shape), index.dtype, d.prefetch_batches, convert)
    try:
        metrics = model.evaluate(ds, steps=steps, verbose=0, return_dict=True)
    except Exception:
        if feed.error is not None:
            raise feed.error from None  # the reader's error, not the queue's "cancelled"
        raise
    finally:
        feed.stop()
        loader.close()
    result = {
        "time": time.time(),
        "data": where,
        "samples": len(index),
        "seconds": time.perf_counter() - started,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "skipped_files": sorted(loader.skipped),
    }
    rundir.append_evaluation(run_dir, result)
    return result
