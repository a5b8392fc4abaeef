"""The job file: typed sections, loading, validation and command-line overrides.

A job is five sections (``data``, ``model``, ``training``, ``scaling``, ``run``). Every
key can be set in a YAML job file and overridden by a command-line flag of the same
name (``training.batch_size`` -> ``--batch-size``); two keys have short flags
(``data.paths`` -> ``--data``, ``model.builder`` -> ``--model``). Unknown keys are
rejected by name. :func:`validate` runs once at the edge; the rest of raytrain trusts
the config.

Relative paths (``data.paths``, ``data.directory``, ``data.manifest``, ``run.storage_path``,
a ``model.builder`` file) are relative to the directory raytrain is started from, not to
the job file. Paths inside a manifest are relative to the manifest's folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from raytrain.errors import RaytrainError


@dataclass
class DataSection:
    kind: Optional[str] = None  # hdf5 or images; None = hdf5 if paths are set, images if directory/manifest is
    paths: list[str] = field(default_factory=list)  # hdf5: files or globs; many files form one dataset
    x_key: str = "X"  # hdf5: features dataset in each file
    y_key: str = "Y"  # hdf5: labels dataset: integer classes or one-hot rows
    directory: Optional[str] = None  # images: a class-per-folder tree (as image_dataset_from_directory reads)
    manifest: Optional[str] = None  # images: a CSV or Parquet list of files and labels, or a `raytrain index` output
    path_column: str = "path"  # images: the manifest's column of image paths (relative = to the manifest's folder)
    label_column: str = "label"  # images: the manifest's column of labels (class names or class indices)
    image_size: list[int] = field(default_factory=lambda: [200, 200])  # images: [height, width] after resizing
    color_mode: str = "rgb"  # images: rgb (3 channels) or grayscale (1)
    interpolation: str = "bilinear"  # images: nearest, bilinear, bicubic, area or lanczos
    decode_threads: int = 0  # images: decoding threads per worker; 0 = the worker's CPUs
    on_bad_sample: str = "error"  # images: error (stop, naming the file) or skip (replace it with another sample)
    validation_ratio: float = 0.2  # fraction of samples held out; 0 = no validation
    seed: int = 0  # fixes the train/validation split and every epoch's order
    shuffle_window: int = 0  # samples shuffled together in memory; 0 = auto (64 MiB of samples, at most 4096)
    prefetch_batches: int = 8  # batches each worker reads ahead of training (a bounded queue)


@dataclass
class ModelSection:
    builder: str = "cnn"  # built-in name, path/to/file.py:function or pkg.module:function
    optimizer: str = "adam"  # any tf_keras optimizer name
    learning_rate: float = 0.001
    loss: str = "auto"  # auto: sparse/categorical crossentropy from the labels' shape
    metrics: list[str] = field(default_factory=lambda: ["accuracy"])


@dataclass
class TrainingSection:
    epochs: int = 5
    batch_size: int = 64  # GLOBAL batch; each worker reads batch_size / num_workers


@dataclass
class ScalingSection:
    num_workers: int = 0  # 0 = in-process on this machine (Ray Train local mode)
    gpus_per_worker: float = 0  # each worker's GPUs are local replicas of the strategy
    cpus_per_worker: float = 1
    placement: str = "pack"  # pack: workers on as few nodes as possible; spread: on as many as possible
    address: Optional[str] = None  # None = a private local Ray; "auto" or ray://HOST:10001 joins a cluster


@dataclass
class RunSection:
    name: Optional[str] = None  # None = "<job or data file stem>-<UTC timestamp>"
    storage_path: str = "./runs"  # results go to <storage_path>/<name>/; a path, shared FS path, s3:// or gs:// URI
    keep_checkpoints: int = 2  # per-epoch checkpoints kept (the newest)
    max_failures: Optional[int] = None  # worker-group restarts; None = 0 on this machine, 3 on a cluster (--address)
    log_every_steps: int = 50  # TensorBoard batch scalars every this many steps; 0 = per epoch only


@dataclass
class JobConfig:
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    run: RunSection = field(default_factory=RunSection)

    @property
    def run_dir(self) -> str:
        """Where this run's results are written."""
        assert self.run.name is not None, "validate() names the run"
        return os.path.join(self.run.storage_path, self.run.name)


SECTIONS = [f.name for f in dataclasses.fields(JobConfig)]
# Flags that do not follow the <key-with-dashes> rule.
SHORT_FLAGS = {("data", "paths"): "data", ("model", "builder"): "model"}


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(JobConfig)
    return {name: hints[name] for name in SECTIONS}


def flag_name(section: str, key: str) -> str:
    """The command-line flag (without ``--``) that overrides ``section.key``."""
    return SHORT_FLAGS.get((section, key), key).replace("_", "-")


def option_fields() -> list[tuple[str, str, Any]]:
    """Every (section, key, type) of a job, in file order."""
    out = []
    for section, cls in _section_types().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out.append((section, f.name, hints[f.name]))
    return out


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Check ``value`` against a field type; ints are accepted for floats."""
    origin = typing.get_origin(kind)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
        origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, str) and item is str:
            value = [value]
        ok = isinstance(value, list) and all(isinstance(v, item) and not isinstance(v, bool) for v in value)
        if not ok:
            what = "strings" if item is str else "integers"
            raise RaytrainError(f"{where} must be a list of {what}. Received: {where}={value!r}")
        return list(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str) and (not isinstance(value, kind) or isinstance(value, bool)):
        raise RaytrainError(
            f"{where} must be {'a string' if kind is str else f'an {kind.__name__}' if kind is int else 'a number'}. "
            f"Received: {where}={value!r}"
        )
    return value


def from_dict(raw: Any, source: str = "job file") -> JobConfig:
    """Build a JobConfig from parsed YAML, rejecting unknown sections and keys.

    Args:
        raw: The parsed YAML (a mapping of sections), or None for an empty file.
        source: Named in error messages (the job file's path).

    Raises:
        RaytrainError: On an unknown key or a value of the wrong type.
    """
    raw = raw or {}
    if not isinstance(raw, dict):
        raise RaytrainError(f"{source} must be a mapping of sections {SECTIONS}. Received: {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise RaytrainError(f"unknown sections {unknown} in {source}; expected some of {list(SECTIONS)}")
    sections = {}
    for name, cls in _section_types().items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise RaytrainError(f"section '{name}' in {source} must be a mapping. Received: {values!r}")
        hints = typing.get_type_hints(cls)
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise RaytrainError(
                f"unknown keys {unknown} in section '{name}' of {source}; known keys: {known}"
            )
        sections[name] = cls(**{k: _coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()})
    return JobConfig(**sections)


def load_job(path: str) -> JobConfig:
    """Load and type-check a YAML job file (not yet validated: see :func:`validate`)."""
    import yaml

    if not os.path.isfile(path):
        raise RaytrainError(f"job file {path} does not exist; check the path")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise RaytrainError(f"job file {path} is not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    return from_dict(raw, source=path)


def apply_overrides(job: JobConfig, overrides: dict[tuple[str, str], Any]) -> JobConfig:
    """Return a copy of ``job`` with ``{(section, key): value}`` replaced (None = keep)."""
    job = dataclasses.replace(job, **{s: dataclasses.replace(getattr(job, s)) for s in SECTIONS})
    for (section, key), value in overrides.items():
        if value is not None:
            setattr(getattr(job, section), key, value)
    return job


def _positive(where: str, value: float, flag: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise RaytrainError(f"{where} must be {bound}. Received: {where}={value} (set it with --{flag})")


def validate(job: JobConfig, default_name: str = "run") -> JobConfig:
    """Check values, resolve paths to absolute ones, and name the run.

    Args:
        job: The config after overrides.
        default_name: Stem of the run name when ``run.name`` is not set.

    Returns:
        A new, validated JobConfig.
    """
    job = apply_overrides(job, {})
    d, m, t, s, r = job.data, job.model, job.training, job.scaling, job.run
    validate_source(d)
    if not 0 <= d.validation_ratio < 1:
        raise RaytrainError(
            f"data.validation_ratio must be in [0, 1). Received: {d.validation_ratio} (set it with --validation-ratio)"
        )
    _positive("data.shuffle_window", d.shuffle_window, "shuffle-window", allow_zero=True)
    _positive("data.prefetch_batches", d.prefetch_batches, "prefetch-batches")
    if not m.builder:
        raise RaytrainError("model.builder is empty; name a built-in model (e.g. cnn) or file.py:function")
    _positive("model.learning_rate", m.learning_rate, "learning-rate")
    _positive("training.epochs", t.epochs, "epochs")
    _positive("training.batch_size", t.batch_size, "batch-size")
    _positive("scaling.num_workers", s.num_workers, "num-workers", allow_zero=True)
    _positive("scaling.gpus_per_worker", s.gpus_per_worker, "gpus-per-worker", allow_zero=True)
    _positive("scaling.cpus_per_worker", s.cpus_per_worker, "cpus-per-worker")
    if s.gpus_per_worker > 1 and s.gpus_per_worker != int(s.gpus_per_worker):
        raise RaytrainError(
            f"scaling.gpus_per_worker above 1 must be a whole number. Received: {s.gpus_per_worker}"
        )
    if s.placement not in PLACEMENTS:
        raise RaytrainError(
            f"scaling.placement must be one of {list(PLACEMENTS)}. Received: {s.placement!r} (set it with --placement)"
        )
    workers = max(s.num_workers, 1)
    replicas = max(int(s.gpus_per_worker), 1) * workers
    if t.batch_size < workers:
        raise RaytrainError(
            f"training.batch_size {t.batch_size} is smaller than the {workers} workers; "
            f"each worker needs at least one sample per step: use --batch-size {workers} or more"
        )
    if t.batch_size % replicas:
        lower = t.batch_size // replicas * replicas
        raise RaytrainError(
            f"training.batch_size {t.batch_size} (global) does not divide evenly over {replicas} replicas "
            f"({workers} workers x {max(int(s.gpus_per_worker), 1)} per worker); "
            f"use --batch-size {lower or replicas} or {lower + replicas}"
        )
    d.paths = [os.path.abspath(os.path.expanduser(p)) for p in d.paths]
    d.directory = d.directory and os.path.abspath(os.path.expanduser(d.directory))
    d.manifest = d.manifest and os.path.abspath(os.path.expanduser(d.manifest))
    r.storage_path = validate_storage_path(r.storage_path)
    if not r.name:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        r.name = f"{default_name}-{stamp}"
    _positive("run.keep_checkpoints", r.keep_checkpoints, "keep-checkpoints")
    _positive("run.log_every_steps", r.log_every_steps, "log-every-steps", allow_zero=True)
    if r.max_failures is None:
        r.max_failures = 0 if s.address is None else CLUSTER_MAX_FAILURES
    if r.max_failures < -1:
        raise RaytrainError(
            f"run.max_failures must be -1 (no limit), 0 or more. Received: {r.max_failures} (set it with --max-failures)"
        )
    if "/" in r.name or r.name in (".", ".."):
        raise RaytrainError(f"run.name must be a plain name without '/'. Received: {r.name!r}")
    return job


PLACEMENTS = {"pack": "PACK", "spread": "SPREAD"}  # scaling.placement -> Ray's placement group strategy
CLUSTER_MAX_FAILURES = 3  # run.max_failures when joining a cluster, where nodes come and go
KINDS = ("hdf5", "images")
COLOR_MODES = {"rgb": 3, "grayscale": 1}  # channels
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "lanczos")
BAD_SAMPLE_POLICIES = ("error", "skip")


def validate_source(d: DataSection) -> None:
    """Infer ``data.kind`` and check that exactly one source of that kind is set."""
    images = [k for k in ("directory", "manifest") if getattr(d, k)]
    if d.kind is None:
        d.kind = "images" if images and not d.paths else "hdf5"
    if d.kind not in KINDS:
        raise RaytrainError(f"data.kind must be one of {list(KINDS)}. Received: data.kind={d.kind!r}")
    if d.kind == "hdf5":
        if images:
            raise RaytrainError(
                f"data.{images[0]} is for image datasets but data.kind is hdf5; set --kind images, or drop data.paths"
            )
        if not d.paths:
            raise RaytrainError(
                "no data: set data.paths (HDF5 files, --data FILE.h5), data.directory (--directory DIR) "
                "or data.manifest (--manifest FILE.csv)"
            )
        return
    if d.paths:
        raise RaytrainError(
            "data.paths / --data name HDF5 files but data.kind is images; give images with --directory or --manifest"
        )
    if len(images) != 1:
        raise RaytrainError(
            "an image dataset needs exactly one of data.directory (--directory DIR) and data.manifest "
            f"(--manifest FILE). Received: {', '.join(images) or 'neither'}"
        )
    if len(d.image_size) != 2 or min(d.image_size) < 1:
        raise RaytrainError(
            f"data.image_size must be [height, width], two positive integers. Received: {d.image_size} "
            "(set it with --image-size 200,200)"
        )
    for key, allowed in (("color_mode", COLOR_MODES), ("interpolation", INTERPOLATIONS),
                         ("on_bad_sample", BAD_SAMPLE_POLICIES)):
        if getattr(d, key) not in allowed:
            raise RaytrainError(
                f"data.{key} must be one of {list(allowed)}. Received: {getattr(d, key)!r} "
                f"(set it with --{key.replace('_', '-')})"
            )
    _positive("data.decode_threads", d.decode_threads, "decode-threads", allow_zero=True)
    if not d.path_column or not d.label_column:
        raise RaytrainError("data.path_column and data.label_column must name the manifest's columns; they are empty")


def validate_storage_path(path: str) -> str:
    """``run.storage_path`` made absolute (URIs are kept as they are)."""
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def to_dict(job: JobConfig) -> dict[str, dict[str, Any]]:
    """The job as plain data (for writing ``job.yaml`` into the run directory)."""
    return dataclasses.asdict(job)
