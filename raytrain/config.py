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
import math
import re
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import yaml

from raytrain.errors import RaytrainError


def option(default: Any = None, help: str = "", choices: Optional[tuple[str, ...]] = None,
           factory: Optional[Callable[[], Any]] = None) -> Any:
    """A job key: its default, the sentence ``--help`` shows, and its allowed values."""
    metadata = {"help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


KINDS = ("hdf5", "images")  # data.kind; the loaders' registry (raytrain.data.kinds) has one entry each
COLOR_MODES = {"rgb": 3, "grayscale": 1}  # data.color_mode -> channels
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "lanczos")
BAD_SAMPLE_POLICIES = ("error", "skip")
SCALES = ("auto", "unit", "none")  # data.scale
NAME_MAX_BYTES = 200  # run.name: filesystems hold 255-byte names; checkpoints and temporary copies add to it
FRAMEWORKS = ("auto", "tf_keras", "keras")  # model.framework (raytrain.frameworks)
PLACEMENTS = {"pack": "PACK", "spread": "SPREAD"}  # scaling.placement -> Ray's placement group strategy
DATA_URI_SCHEMES = ("s3", "gs", "gcs", "file")  # data locations may be URIs of these (raytrain.data.store)
STORAGE_OPTION_KEYS = ("endpoint", "region", "anonymous")  # data.storage_options
MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"  # run.mlflow: true uses it when set
CLUSTER_MAX_FAILURES = 3  # run.max_failures when joining a cluster, where nodes come and go


@dataclass
class DataSection:
    kind: Optional[str] = option(None, "what the data is; inferred when not set: hdf5 if data.paths is set, "
                                 "images if data.directory or data.manifest is", KINDS)
    paths: list[str] = option(help="HDF5 files or globs, local or s3:// / gs:// URIs (globs over keys); several "
                              "files form one dataset, in sorted order", factory=list)
    x_key: str = option("X", "HDF5: the features dataset in each file, shape (N, *sample_shape)")
    y_key: str = option("Y", "HDF5: the labels dataset in each file: class indices (N,) or one-hot rows (N, C)")
    directory: Optional[str] = option(None, "images: a class-per-folder tree, read by the rules of "
                                      "image_dataset_from_directory")
    manifest: Optional[str] = option(None, "images: a CSV/TSV/Parquet list of files and labels, or a "
                                     "`raytrain index` output")
    path_column: str = option("path", "images: the manifest's column of image paths (relative paths are "
                              "relative to the manifest's folder)")
    label_column: str = option("label", "images: the manifest's column of labels (class names or class indices)")
    image_size: list[int] = option(help="images: height,width every image is resized to",
                                   factory=lambda: [200, 200])
    color_mode: str = option("rgb", "images: rgb (3 channels) or grayscale (1)", tuple(COLOR_MODES))
    interpolation: str = option("bilinear", "images: the resize interpolation", INTERPOLATIONS)
    decode_threads: int = option(0, "images: decoding threads per worker; 0 = the CPUs the worker holds")
    on_bad_sample: str = option("error", "images: what an unreadable image does: error stops the run naming "
                                "the file; skip replaces it with another sample of the shard and lists it",
                                BAD_SAMPLE_POLICIES)
    scale: str = option("auto", "how uint8 features reach the model: unit = divided by 255 (values in [0, 1]); "
                        "none = as stored (0-255, what Keras's own loaders hand a model); auto = none when the "
                        "model begins with a Rescaling layer, else unit", SCALES)
    validation_ratio: float = option(0.2, "fraction of the samples held out for validation; 0 = no validation")
    seed: int = option(0, "fixes the train/validation split and every epoch's sample order")
    shuffle_window: int = option(0, "samples shuffled together, across all workers (each holds its share); "
                                 "0 = auto (64 MiB of samples, at most 4096)")
    partitions: int = option(0, "canonical partitions of the sample order: the order is the same for every "
                             "worker count that divides it; 0 = auto: 24 (1, 2, 3, 4, 6, 8, 12, 24 workers), or "
                             "for an elastic --num-workers MIN..MAX the smallest multiple of 24 that every count "
                             "of the range divides (2..8: 840)")
    storage_options: dict[str, Any] = option(help="object storage: endpoint (URL), region, anonymous "
                                             "(true for a public bucket); not set = the cloud's standard settings "
                                             "(AWS_ENDPOINT_URL, AWS_REGION, profiles, instance roles)",
                                             factory=dict)
    cache_dir: Optional[str] = option(None, "object storage: a folder on each node's local disk where workers "
                                      "keep the bytes they fetched (epoch 2 on reads local disk); not set = no "
                                      "cache")
    cache_max_gib: float = option(20.0, "object storage: the cache folder's size cap per node (GiB); the least "
                                  "recently used entries are evicted above it")
    prefetch_batches: int = option(8, "batches each worker reads ahead of the training step (a bounded "
                                   "queue); the same for training, evaluate and bench")


@dataclass
class ModelSection:
    builder: str = option("cnn", "a built-in model (cnn, video3d), path/to/file.py:function or "
                          "package.module:function")
    optimizer: str = option("adam", "a Keras optimizer name (adam, sgd, rmsprop, ...)")
    learning_rate: float = option(0.001, "the optimizer's learning rate")
    loss: str = option("auto", "a Keras loss name; auto = (sparse) categorical crossentropy from the "
                       "labels' format")
    metrics: list[str] = option(help="Keras metric names, reported every epoch", factory=lambda: ["accuracy"])
    framework: str = option("auto", "which Keras trains the model: tf_keras (TensorFlow), keras (Keras 3 on JAX); "
                            "auto = the one the builder imports (built-ins: tf_keras when TensorFlow is installed)",
                            FRAMEWORKS)


@dataclass
class TrainingSection:
    epochs: int = option(5, "passes over the training data")
    batch_size: int = option(64, "the GLOBAL batch: samples per step summed over every worker and GPU; "
                             "each worker reads batch_size / num_workers")
    mixed_precision: bool = option(False, "compute in 16-bit floats with float32 variables: float16 with loss "
                                   "scaling on GPUs, bfloat16 on CPUs")
    jit_compile: bool = option(False, "compile the training step with XLA")
    steps_per_execution: int = option(0, "training steps per compiled call (TensorFlow or XLA) (fewer Python round trips "
                                      "and metric reads per step); 0 = auto: the largest divisor of "
                                      "run.log_every_steps up to 16 (16 when that is 0)")


@dataclass
class ScalingSection:
    num_workers: int = option(0, "Ray Train workers; 0 = in-process on this machine (the same as --local); "
                              "MIN..MAX (2..8) = elastic: at most MAX, training goes on with MIN or more")
    min_workers: int = option(0, "elastic training: the fewest workers the run trains with (--num-workers "
                              "MIN..MAX sets both); 0 = exactly num_workers")
    gpus_per_worker: float = option(0, "GPUs each worker holds; each one is a local replica of the strategy")
    cpus_per_worker: float = option(1, "CPUs each worker holds")
    placement: str = option("pack", "pack: workers on as few nodes as possible; spread: on as many as possible",
                            tuple(PLACEMENTS))
    address: Optional[str] = option(None, "the Ray cluster to join (auto, or ray://HOST:10001); not set = a "
                                    "private Ray on this machine")

    @property
    def world_size(self) -> int:
        """Processes that train: the workers, or 1 in local mode."""
        return max(self.num_workers, 1)

    @property
    def elastic(self) -> bool:
        """Whether Ray Train may run this job with fewer workers than ``num_workers``."""
        return 0 < self.min_workers < self.num_workers

    @property
    def shown(self) -> str:
        """The worker count as ``--num-workers`` takes it: ``4``, or ``2..8`` when elastic."""
        return f"{self.min_workers}..{self.num_workers}" if self.elastic else str(self.num_workers)

    @property
    def ray_num_workers(self) -> int | tuple[int, int]:
        """``ScalingConfig(num_workers=...)``: a count, or Ray Train's elastic ``(min, max)``."""
        return (self.min_workers, self.num_workers) if self.elastic else self.num_workers

    @property
    def worker_range(self) -> list[int]:
        """Every worker count the run may train with (``[world_size]`` unless elastic)."""
        return list(range(self.min_workers, self.num_workers + 1)) if self.elastic else [self.world_size]

    @property
    def replicas_per_worker(self) -> int:
        """Model replicas in each worker: one per GPU, or 1 on CPUs."""
        return max(int(self.gpus_per_worker), 1)


@dataclass
class RunSection:
    name: Optional[str] = option(None, "the run's folder name; not set = <job or data file stem>-<UTC time>")
    storage_path: str = option("./runs", "where runs are written, as <storage_path>/<name>/: a path, a shared "
                               "filesystem path, or an s3:// or gs:// URI")
    keep_checkpoints: int = option(2, "checkpoints kept (the newest), epoch ends and steps alike")
    checkpoint_every: str = option("10m", "a checkpoint within epochs every this many steps (500) or this much "
                                   "training time (90s, 10m, 1h); 0 = at epoch ends only. Every epoch end and "
                                   "a worker's SIGTERM (a spot node's notice) also take one")
    max_failures: Optional[int] = option(None, "worker-group restarts before the run fails; -1 = no limit; "
                                         f"not set = 0 on this machine, {CLUSTER_MAX_FAILURES} on a cluster")
    log_every_steps: int = option(50, "TensorBoard (and MLflow) batch scalars every this many steps; 0 = per epoch "
                                  "only")
    mlflow: Optional[str] = option(None, "log the run to MLflow: true = MLFLOW_TRACKING_URI when set, else SQLite at "
                                   "<storage_path>/mlflow.db; or a tracking URI (sqlite:///PATH, http://HOST:PORT, "
                                   "databricks); not set = off")
    mlflow_experiment: Optional[str] = option(None, "the MLflow experiment; not set = the job file's stem, else "
                                              "raytrain")


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
TUNE_SECTION = "tune"  # the search of `raytrain tune` (raytrain.space); `raytrain train` ignores it
# Flags that do not follow the <key-with-dashes> rule.
SHORT_FLAGS = {("data", "paths"): "data", ("model", "builder"): "model"}


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(JobConfig)
    return {name: hints[name] for name in SECTIONS}


def flag_name(section: str, key: str) -> str:
    """The command-line flag (without ``--``) that overrides ``section.key``."""
    return SHORT_FLAGS.get((section, key), key).replace("_", "-")


@dataclass(frozen=True)
class Option:
    """One job key as the command line shows it."""

    section: str
    key: str
    kind: Any  # the field's type
    default: Any
    help: str
    choices: Optional[tuple[str, ...]]


def options() -> list[Option]:
    """Every key of a job, in file order, with its type, default, help and choices."""
    out = []
    for section, cls in _section_types().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            out.append(Option(section, f.name, hints[f.name], default, f.metadata["help"], f.metadata["choices"]))
    return out


def coerce(value: Any, kind: Any, where: str) -> Any:
    """Check ``value`` against a field type; ints are accepted for floats."""
    origin = typing.get_origin(kind)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
        origin = typing.get_origin(kind)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise RaytrainError(f"{where} must be a mapping of names to values. Received: {where}={value!r}")
        return dict(value)
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
    if kind is str and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # e.g. run.checkpoint_every: 500 (steps)
    if kind is bool:
        if not isinstance(value, bool):
            raise RaytrainError(f"{where} must be true or false. Received: {where}={value!r}")
        return value
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
    unknown = sorted(set(raw) - {*SECTIONS, TUNE_SECTION})
    if unknown:
        raise RaytrainError(f"unknown sections {unknown} in {source}; expected some of {[*SECTIONS, TUNE_SECTION]}")
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
        if name == "run" and isinstance(values.get("mlflow"), bool):  # mlflow: true (or false) in a job file
            values = {**values, "mlflow": "true" if values["mlflow"] else None}
        if name == "scaling" and isinstance(values.get("num_workers"), str):  # num_workers: 2..8
            low, high = parse_workers(values["num_workers"])
            values = {**values, "num_workers": high, **({"min_workers": low} if low else {})}
        sections[name] = cls(**{k: coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()})
    return JobConfig(**sections)


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, again: int):
        super().__init__(f"sets '{key}' twice (lines {first} and {again}); keep one")


class _UniqueKeys(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word (``batch_size: 16`` then
    ``batch_size: 0`` trains with 0): a file that sets a key twice is refused instead."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in seen and key != "<<":  # a merge key may repeat
                    raise DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: PyYAML's own error follows
                pass
        return super().construct_mapping(node, deep)


def read_yaml(path: str, what: str, hint: str) -> Any:
    """The parsed YAML file ``path`` (a ``what``: "job file", "cluster file").

    Raises:
        RaytrainError: The file is missing (``hint`` says where to look) or not YAML.
    """
    if not os.path.isfile(path):
        raise RaytrainError(f"{what} {path} does not exist; {hint}")
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError:
        raise RaytrainError(f"{what} {path} is not a text file (UTF-8 YAML); check that you passed the right file") from None
    except DuplicateKey as e:
        raise RaytrainError(f"{what} {path} {e}") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise RaytrainError(f"{what} {path} is not valid YAML{at}: {getattr(e, 'problem', e)}") from None


def load_job(path: str) -> JobConfig:
    """Load and type-check a YAML job file (not yet validated: see :func:`validate`)."""
    return from_dict(read_yaml(path, "job file", "check the path"), source=path)


def load_tune_section(path: str) -> dict[str, Any]:
    """The job file's ``tune:`` section as written (empty when there is none)."""
    raw = read_yaml(path, "job file", "check the path") or {}
    section = raw.get(TUNE_SECTION) if isinstance(raw, dict) else None
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise RaytrainError(f"section '{TUNE_SECTION}' in {path} must be a mapping. Received: {section!r}")
    return section


def apply_overrides(job: JobConfig, overrides: dict[tuple[str, str], Any]) -> JobConfig:
    """Return a copy of ``job`` with ``{(section, key): value}`` replaced (None = keep)."""
    job = dataclasses.replace(job, **{s: dataclasses.replace(getattr(job, s)) for s in SECTIONS})
    for (section, key), value in overrides.items():
        if value is not None:
            setattr(getattr(job, section), key, value)
    return job


def _finite(job: JobConfig) -> None:
    """Every number of the job is finite: ``nan`` passes every comparison, so a NaN learning
    rate would otherwise be accepted and train to NaN."""
    for option in options():
        value = getattr(getattr(job, option.section), option.key)
        if isinstance(value, float) and not math.isfinite(value):
            flag = flag_name(option.section, option.key)
            raise RaytrainError(
                f"{option.section}.{option.key} must be a finite number. Received: {value} (set it with --{flag})"
            )


def _positive(where: str, value: float, flag: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise RaytrainError(f"{where} must be {bound}. Received: {where}={value} (set it with --{flag})")


TIME_UNITS = {"s": 1, "m": 60, "h": 3600}


def checkpoint_interval(value: str) -> tuple[int, float]:
    """``run.checkpoint_every`` as ``(steps, seconds)``, one of them 0 (both: epoch ends only)."""
    text = str(value).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smh]?)", text)
    if not match or (not match.group(2) and "." in text):
        raise RaytrainError(
            f"run.checkpoint_every must be a number of steps (500) or a time (90s, 10m, 1h). Received: {value!r} "
            "(set it with --checkpoint-every)"
        )
    number, unit = match.groups()
    return (0, float(number) * TIME_UNITS[unit]) if unit else (int(number), 0.0)


def worker_counts(partitions: int) -> list[int]:
    """The worker counts the sample order supports: the divisors of ``partitions``."""
    return [w for w in range(1, partitions + 1) if partitions % w == 0]


DEFAULT_PARTITIONS = 24  # divided by 1, 2, 3, 4, 6 and 8 workers


def auto_partitions(counts: list[int]) -> int:
    """``data.partitions: 0``: 24, or for an elastic range the smallest multiple of 24 that
    every count of it divides (2..8: 840). A single count that does not divide 24 is
    refused instead (:func:`_check_counts`): it would give that run an order no other
    worker count shares."""
    if len(counts) == 1:
        return DEFAULT_PARTITIONS
    return math.lcm(DEFAULT_PARTITIONS, *counts)


def parse_workers(value: Any, where: str = "scaling.num_workers") -> tuple[int, int]:
    """``num_workers`` as written (3, "3" or "2..8") -> (min_workers, num_workers); min 0 = not elastic."""
    if isinstance(value, int) and not isinstance(value, bool):
        return 0, value
    match = re.fullmatch(r"\s*(-?\d+)\s*(?:\.\.\s*(\d+)\s*)?", str(value)) if isinstance(value, str) else None
    if not match:
        raise RaytrainError(
            f"{where} must be a number of workers (4) or an elastic range MIN..MAX (2..8). Received: {value!r}"
        )
    low, high = match.groups()
    return (0, int(low)) if high is None else (int(low), int(high))


def _check_counts(counts: list[int], partitions: int, batch: int, replicas: int) -> None:
    """Every worker count the run may train with divides the order's partitions, and the
    global batch divides over each count's replicas."""
    elastic = len(counts) > 1
    named = f"--num-workers {counts[0]}..{counts[-1]}" if elastic else f"{counts[0]} workers"
    odd = [w for w in counts if partitions % w]
    if odd and not elastic:
        raise RaytrainError(
            f"{odd[0]} workers do not divide the sample order's {partitions} partitions (data.partitions); "
            f"use --num-workers {' or '.join(str(w) for w in worker_counts(partitions))}, "
            f"or set --partitions to a multiple of {odd[0]}"
        )
    if odd:
        raise RaytrainError(
            f"{named}: {_listed(odd)} workers do not divide the sample order's {partitions} partitions "
            f"(data.partitions); use --partitions {auto_partitions(counts)} (or 0 = auto), or a range "
            f"within {_listed(worker_counts(partitions))}"
        )
    if batch < counts[-1]:
        raise RaytrainError(
            f"training.batch_size {batch} is smaller than the {counts[-1]} workers; "
            f"each worker needs at least one sample per step: use --batch-size {counts[-1]} or more"
        )
    uneven = [w for w in counts if batch % (w * replicas)]
    if not uneven:
        return
    if not elastic:
        total = counts[0] * replicas
        lower = batch // total * total
        raise RaytrainError(
            f"training.batch_size {batch} (global) does not divide evenly over {total} replicas "
            f"({counts[0]} workers x {replicas} per worker); use --batch-size {lower or total} or {lower + total}"
        )
    step = math.lcm(*(w * replicas for w in counts))
    if step > 64 * batch:  # a batch that fits every count would be absurd: the range is the problem
        raise RaytrainError(_range_too_wide(counts, batch, replicas, uneven, step))
    fits = " or ".join(str(f) for f in sorted({max(batch // step, 1) * step, (batch // step + 1) * step}))
    raise RaytrainError(
        f"training.batch_size {batch} (global) does not divide evenly over {_listed(uneven)} workers "
        f"({replicas} replica{'s' if replicas > 1 else ''} each) of {named}; the global batch sizes that fit "
        f"the whole range are the multiples of {step}: use --batch-size {fits}, or narrow the range"
    )


def _range_too_wide(counts: list[int], batch: int, replicas: int, uneven: list[int], step: int) -> str:
    """Which elastic ranges (and fixed counts) the given global batch divides over."""
    fitting = [w for w in range(1, batch // replicas + 1) if batch % (w * replicas) == 0]
    runs: list[list[int]] = []
    for w in fitting:
        if runs and runs[-1][-1] == w - 1:
            runs[-1].append(w)
        else:
            runs.append([w])
    ranges = [f"{r[0]}..{r[-1]}" for r in runs if len(r) > 1]
    shown = _listed(uneven[:6]) if len(uneven) <= 6 else ", ".join(map(str, uneven[:6])) + f" and {len(uneven) - 6} more"
    works = f"the elastic range{'s' if len(ranges) > 1 else ''} {_listed_text(ranges)} or " if ranges else ""
    return (
        f"training.batch_size {batch} (global) does not divide evenly over {shown} worker counts of --num-workers "
        f"{counts[0]}..{counts[-1]}, and a global batch that fits every count in it is a multiple of a "
        f"{len(str(step))}-digit number: the range is too wide; with --batch-size {batch} use "
        f"{works}a fixed --num-workers {' or '.join(map(str, fitting))}"
    )


def _listed_text(values: list[str]) -> str:
    return ", ".join(values[:-1]) + (" and " if len(values) > 1 else "") + values[-1]


def _listed(values: list[int]) -> str:
    return ", ".join(str(v) for v in values[:-1]) + (" and " if len(values) > 1 else "") + str(values[-1])


def validate(job: JobConfig, default_name: str = "run") -> JobConfig:
    """Check values, resolve paths to absolute ones, and name the run.

    Args:
        job: The config after overrides.
        default_name: Stem of the run name when ``run.name`` is not set.

    Returns:
        A new, validated JobConfig.
    """
    job = apply_overrides(job, {})
    _finite(job)
    _validate_data(job.data)
    _validate_model_and_training(job.model, job.training)
    _validate_scaling(job)
    validate_locations(job.data)
    if job.data.cache_dir and job.scaling.address is None:  # the workers share this machine: check it here
        check_cache_dir(job.data.cache_dir)
    _validate_run(job.run, job.scaling, default_name)
    return job


def _validate_data(d: DataSection) -> None:
    validate_source(d)
    if not 0 <= d.validation_ratio < 1:
        raise RaytrainError(
            f"data.validation_ratio must be in [0, 1). Received: {d.validation_ratio} (set it with --validation-ratio)"
        )
    _positive("data.shuffle_window", d.shuffle_window, "shuffle-window", allow_zero=True)
    _positive("data.prefetch_batches", d.prefetch_batches, "prefetch-batches")
    _positive("data.seed", d.seed, "seed", allow_zero=True)  # numpy's generators take no negative seed
    if d.scale not in SCALES:
        raise RaytrainError(f"data.scale must be one of {list(SCALES)}. Received: {d.scale!r} (set it with --scale)")
    _positive("data.partitions", d.partitions, "partitions", allow_zero=True)


def _validate_model_and_training(m: ModelSection, t: TrainingSection) -> None:
    if not m.builder:
        raise RaytrainError("model.builder is empty; name a built-in model (e.g. cnn) or file.py:function")
    m.builder = absolute_builder(m.builder)
    _positive("model.learning_rate", m.learning_rate, "learning-rate")
    if m.framework not in FRAMEWORKS:
        raise RaytrainError(
            f"model.framework must be one of {list(FRAMEWORKS)}. Received: {m.framework!r} (set it with --framework)"
        )
    _positive("training.epochs", t.epochs, "epochs")
    _positive("training.batch_size", t.batch_size, "batch-size")
    _positive("training.steps_per_execution", t.steps_per_execution, "steps-per-execution", allow_zero=True)


def _validate_scaling(job: JobConfig) -> None:
    """The worker counts and resources, and that every count fits the order and the batch."""
    d, t, s = job.data, job.training, job.scaling
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
    _positive("scaling.min_workers", s.min_workers, "min-workers", allow_zero=True)
    if s.min_workers > s.num_workers:
        raise RaytrainError(
            f"scaling.min_workers {s.min_workers} is above num_workers {s.num_workers}; an elastic range is "
            f"--num-workers MIN..MAX with MIN <= MAX (e.g. --num-workers {s.num_workers}..{s.min_workers})"
        )
    counts = s.worker_range
    d.partitions = d.partitions or auto_partitions(counts)
    _check_counts(counts, d.partitions, t.batch_size, s.replicas_per_worker)


def _validate_run(r: RunSection, s: ScalingSection, default_name: str) -> None:
    r.storage_path = validate_storage_path(r.storage_path)
    if not r.name:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        r.name = f"{default_name}-{stamp}"
    _positive("run.keep_checkpoints", r.keep_checkpoints, "keep-checkpoints")
    _positive("run.log_every_steps", r.log_every_steps, "log-every-steps", allow_zero=True)
    checkpoint_interval(r.checkpoint_every)
    if r.max_failures is None:
        r.max_failures = 0 if s.address is None else CLUSTER_MAX_FAILURES
    if r.max_failures < -1:
        raise RaytrainError(
            f"run.max_failures must be -1 (no limit), 0 or more. Received: {r.max_failures} (set it with --max-failures)"
        )
    _validate_mlflow(r)
    if "/" in r.name or r.name in (".", ".."):
        raise RaytrainError(f"run.name must be a plain name without '/'. Received: {r.name!r}")
    if any(ord(c) < 32 or c in "\\\x7f" for c in r.name):  # a folder name on every filesystem and object store
        raise RaytrainError(f"run.name must not hold control characters or '\\'. Received: {r.name!r}")
    size = len(r.name.encode("utf-8"))
    if size > NAME_MAX_BYTES:
        raise RaytrainError(
            f"run.name is {size} bytes long; at most {NAME_MAX_BYTES} fit a folder name on every filesystem "
            f"(255 bytes, less what raytrain and Ray add); choose a shorter --name"
        )


def _validate_mlflow(r: RunSection) -> None:
    """``run.mlflow``: off, ``true`` or a tracking URI (see :mod:`raytrain.run.tracking`)."""
    value = (r.mlflow or "").strip()
    r.mlflow = None if value.lower() in ("", "false", "off", "no") else "true" if value.lower() in ("true", "on", "yes") \
        else value
    if r.mlflow is None or r.mlflow == "true":
        if r.mlflow and "://" in r.storage_path and not os.environ.get(MLFLOW_URI_ENV):
            raise RaytrainError(
                f"--mlflow keeps its SQLite store in run.storage_path, which is {r.storage_path}: SQLite needs a "
                "local folder; pass --mlflow sqlite:///PATH or http://HOST:PORT, or set MLFLOW_TRACKING_URI"
            )
        return
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", r.mlflow) and r.mlflow != "databricks":
        raise RaytrainError(
            f"run.mlflow must be true or a tracking URI such as sqlite:///PATH/mlflow.db, http://HOST:5000 or "
            f"databricks. Received: {r.mlflow!r}"
        )


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


def location(path: str, where: str) -> str:
    """A data location made absolute; a URI is checked (scheme, bucket) and kept."""
    if "://" not in path:
        return os.path.abspath(os.path.expanduser(path))
    head, rest = path.split("://", 1)
    if head.lower() not in DATA_URI_SCHEMES:
        raise RaytrainError(
            f"{where} {path} has the scheme {head}://; raytrain reads s3://, gs:// and file:// URIs or local paths"
        )
    if head.lower() != "file" and not rest.split("/", 1)[0]:
        raise RaytrainError(f"{where} {path} names no bucket; write it as {head}://BUCKET/KEY")
    return path


def validate_locations(d: DataSection) -> None:
    """Data locations absolute or checked URIs, storage options and the cache checked."""
    d.paths = [location(p, "data.paths") for p in d.paths]
    kinds = {"://" in p for p in d.paths}
    if len(kinds) > 1:
        raise RaytrainError(
            "data.paths mixes local files and URIs; put every file of the dataset in one place "
            f"(local: {[p for p in d.paths if '://' not in p][:1]}, URI: {[p for p in d.paths if '://' in p][:1]})"
        )
    d.directory = d.directory and location(d.directory, "data.directory")
    d.manifest = d.manifest and location(d.manifest, "data.manifest")
    unknown = sorted(set(d.storage_options) - set(STORAGE_OPTION_KEYS))
    if unknown:
        raise RaytrainError(
            f"data.storage_options has unknown keys {unknown}; known keys: {list(STORAGE_OPTION_KEYS)}"
        )
    if not isinstance(d.storage_options.get("anonymous", False), bool):
        raise RaytrainError(
            f"data.storage_options.anonymous must be true or false. Received: {d.storage_options['anonymous']!r}"
        )
    for key in ("endpoint", "region"):
        if not isinstance(d.storage_options.get(key, ""), str):
            raise RaytrainError(f"data.storage_options.{key} must be a string. Received: {d.storage_options[key]!r}")
    if d.cache_dir:
        if "://" in d.cache_dir:
            raise RaytrainError(f"data.cache_dir must be a folder on the node's local disk, not a URI: {d.cache_dir}")
        d.cache_dir = os.path.abspath(os.path.expanduser(d.cache_dir))
    _positive("data.cache_max_gib", d.cache_max_gib, "cache-max-gib")


def check_cache_dir(path: str) -> None:
    """``data.cache_dir`` can be a folder this process writes to (made if missing; nothing
    is written here). On a cluster each node's workers check their own disk instead."""
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise RaytrainError(f"data.cache_dir {path}: {probe} is a file, not a folder; pass a folder with --cache-dir")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RaytrainError(f"data.cache_dir {path}: {probe} is not writable by this user; pass a folder you can "
                            "write to with --cache-dir")


def absolute_builder(spec: str) -> str:
    """``model.builder`` with its file made absolute (``path/to/file.py:function``): Ray
    Train starts workers in a folder of its own, and ``--resume`` may run elsewhere."""
    target, sep, function = spec.rpartition(":")
    if sep and (target.endswith(".py") or os.sep in target):
        return f"{os.path.abspath(os.path.expanduser(target))}:{function}"
    return spec


def validate_storage_path(path: str) -> str:
    """``run.storage_path`` made absolute (URIs are kept as they are)."""
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def to_dict(job: JobConfig) -> dict[str, dict[str, Any]]:
    """The job as plain data (for writing ``job.yaml`` into the run directory)."""
    return dataclasses.asdict(job)
