"""The job's flags, shared by ``raytrain train`` and ``raytrain submit``.

Every job key has a flag of the same name (``training.batch_size`` -> ``--batch-size``);
``--data`` sets ``data.paths`` and ``--model`` sets ``model.builder``. Each flag's help,
choices and default come from the job's fields (:func:`raytrain.config.options`).
"""

from __future__ import annotations

import argparse
import os
import re
import typing
from typing import Any, Callable

from raytrain import config as cfg
from raytrain.errors import RaytrainError
from raytrain.run import rundir, storage


WORKERS = ("scaling", "num_workers")  # takes N or an elastic MIN..MAX (see raytrain.config.parse_workers)
MLFLOW = ("run", "mlflow")  # --mlflow alone, or --mlflow URI


def parse_list(text: str) -> list[str]:
    return [p for p in text.split(",") if p]


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be comma-separated integers such as 32,32,3. Received: {text}")


def parse_int_list(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 200,200. Received: {text}")


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false. Received: {text}")


def parse_mapping(text: str) -> dict[str, Any]:
    """``key=value,key=value``; true/false become booleans."""
    out: dict[str, Any] = {}
    for part in parse_list(text):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected key=value pairs such as region=eu-west-1. Received: {text}")
        out[key.strip()] = {"true": True, "false": False}.get(value.strip().lower(), value.strip())
    return out


def _flag_type(kind: Any) -> Callable[[str], Any]:
    if kind is bool:
        return parse_bool
    if typing.get_origin(kind) is dict:
        return parse_mapping
    if typing.get_origin(kind) is typing.Union:
        (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) is list:
        return parse_int_list if typing.get_args(kind) == (int,) else parse_list
    return kind


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "not set"
    return "not set" if value is None else str(value)


def _flag_help(option: cfg.Option, repeatable: bool) -> str:
    kind = _flag_type(option.kind)
    how = " (repeat or comma-separate)" if repeatable or kind is parse_list else \
        " (comma-separated)" if kind is parse_int_list else ""
    return f"{option.help}{how}; default: {_shown(option.default)} ({option.section}.{option.key})"


def add_job_flags(p: argparse.ArgumentParser, skip: tuple[tuple[str, str], ...] = ()) -> None:
    """A flag for every job key (``training.batch_size`` -> ``--batch-size``), grouped by section."""
    p.add_argument("job", nargs="?", help="YAML job file (optional when --data, --directory or --manifest is given)")
    p.add_argument("--local", action="store_true", help="run in-process on this machine (same as --num-workers 0)")
    groups: dict[str, Any] = {}
    for option in cfg.options():
        if (option.section, option.key) in skip:
            continue
        section = option.section
        group = groups.setdefault(section, p.add_argument_group(f"{section} (job file section '{section}')"))
        flag = cfg.flag_name(section, option.key)
        repeatable = (section, option.key) == ("data", "paths")
        extra: dict[str, Any] = {"action": "append"} if repeatable else {}
        if (section, option.key) == MLFLOW:  # a bare --mlflow is --mlflow true
            extra = {"nargs": "?", "const": "true"}
        kind = str if repeatable or (section, option.key) == WORKERS else _flag_type(option.kind)
        group.add_argument(
            f"--{flag}", dest=f"{section}.{option.key}", type=kind,
            # Choices are shown, not enforced here: argparse's own error prints the whole usage;
            # raytrain.config.validate rejects a bad value with one line.
            default=None, metavar="{" + ",".join(option.choices) + "}" if option.choices else flag.upper().replace("-", "_"),
            help=_flag_help(option, repeatable), **extra,
        )


def job_from_args(args: argparse.Namespace) -> cfg.JobConfig:
    """The validated job of ``raytrain train``: the job file (if any), then the flags.
    With ``--resume``: the job the run saved in its directory, then the flags."""
    given = getattr(args, "run.mlflow", None) or ""
    if given.endswith((".yaml", ".yml")):  # argparse gave the job file to the bare --mlflow before it
        raise RaytrainError(f"--mlflow took {given} as its tracking URI; put --mlflow after the job file, or write "
                            "--mlflow=URI")
    job = cfg.load_job(args.job) if args.job else cfg.JobConfig()
    if getattr(args, "resume", False):
        job = _saved_job(args, job)
    overrides: dict[tuple[str, str], Any] = {}
    for option in cfg.options():
        section, key = option.section, option.key
        value = getattr(args, f"{section}.{key}", None)
        if (section, key) == ("data", "paths") and value is not None:
            value = [p for part in value for p in parse_list(part)]
        overrides[(section, key)] = value
    if overrides[WORKERS] is not None:  # --num-workers N is exactly N; MIN..MAX is elastic
        overrides[("scaling", "min_workers")], overrides[WORKERS] = cfg.parse_workers(overrides[WORKERS],
                                                                                      "--num-workers")
        if getattr(args, "scaling.min_workers", None) is not None and not overrides[("scaling", "min_workers")]:
            overrides[("scaling", "min_workers")] = getattr(args, "scaling.min_workers")
    if args.local:
        if overrides[WORKERS] not in (None, 0):
            raise RaytrainError("--local runs in-process and cannot be combined with --num-workers > 0; drop one of them")
        overrides[WORKERS], overrides[("scaling", "min_workers")] = 0, 0
    job = cfg.apply_overrides(job, overrides)
    # An image source given as a flag replaces the job file's other image source.
    given = [k for k in ("directory", "manifest") if overrides[("data", k)] is not None]
    if len(given) == 1:
        setattr(job.data, "manifest" if given[0] == "directory" else "directory", None)
    if job.run.mlflow_experiment is None and job.run.mlflow not in (None, "false"):
        job.run.mlflow_experiment = os.path.splitext(os.path.basename(args.job))[0] if args.job else "raytrain"
    return cfg.validate(job, default_name=_default_stem(args, job))


def _saved_job(args: argparse.Namespace, job: cfg.JobConfig) -> cfg.JobConfig:
    """The job saved in the run directory ``--resume`` continues."""
    name = getattr(args, "run.name", None) or job.run.name
    base = getattr(args, "run.storage_path", None) or job.run.storage_path
    base = cfg.validate_storage_path(base)
    if not name:
        stem = _default_stem(args, job)
        runs = [n for n in storage.listdir(base) if re.fullmatch(rf"{re.escape(stem)}-\d{{8}}-\d{{6}}", n)]
        if not runs:
            raise RaytrainError(f"--resume: no run of '{stem}' in {base}; name the run with --name")
        name = max(runs)  # the timestamp sorts
    if not rundir.is_run(storage.join(base, name)):
        raise RaytrainError(f"--resume: {storage.join(base, name)} holds no run; check --name and --storage-path")
    saved = rundir.read_job(storage.join(base, name))
    saved.run.name, saved.run.storage_path = name, base
    return saved


def _default_stem(args: argparse.Namespace, job: cfg.JobConfig) -> str:
    source = args.job or (job.data.paths or [job.data.directory or job.data.manifest or "run"])[0]
    return os.path.splitext(os.path.basename(source.rstrip("/")))[0]
