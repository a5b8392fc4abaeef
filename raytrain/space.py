"""What ``raytrain tune`` searches: ``KEY=DISTRIBUTION(ARGS)`` parsed and checked on the driver.

A search is one or more job keys, each with a distribution::

    model.learning_rate=loguniform(1e-4,1e-2)
    training.batch_size=choice(32,64,128)
    data.image_size=grid([64,64],[128,128])

Distributions (Ray Tune's, by the same names): ``choice(a, b, ...)`` (one at random),
``grid(a, b, ...)`` (every value, in every trial set), ``uniform(low, high)`` and
``loguniform(low, high)`` (numbers; loguniform needs ``0 < low``), ``randint(low, high)``
(integers ``low .. high - 1``: Ray Tune's upper bound is exclusive). Arguments are YAML
values, so lists and strings work (``choice(adam, sgd)``). Every value must have the
key's type (a float key takes ints too); a continuous distribution over an integer key
is refused (use randint or choice).

The same search in a job file's ``tune:`` section::

    tune:
      search:
        model.learning_rate: loguniform(1e-4,1e-2)
        training.batch_size: choice(32,64,128)
      trials: 8
      metric: val_accuracy

``run.name``, ``run.storage_path`` and ``scaling.address`` cannot be searched: the search
names and places every trial's run, and one search runs on one cluster.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, Optional

import yaml

from raytrain import config as cfg
from raytrain.errors import RaytrainError
from raytrain.run.runs import higher_is_better

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
SCHEDULERS = ("asha", "fifo")  # asha: Ray Tune's AsyncHyperBandScheduler; fifo: every trial runs to the end
NOT_SEARCHABLE = (("run", "name"), ("run", "storage_path"), ("scaling", "address"))
EXAMPLE = "model.learning_rate=loguniform(1e-4,1e-2)"
_SPEC = re.compile(r"^\s*([A-Za-z_][\w]*)\.([A-Za-z_]\w*)\s*=\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Search:
    """One searched key: ``section.key`` drawn from ``distribution(*args)``."""

    section: str
    key: str
    distribution: str
    args: tuple[Any, ...]

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def text(self) -> str:
        return f"{self.name}={self.distribution}({', '.join(_show(a) for a in self.args)})"

    def values_to_check(self) -> list[Any]:
        """Every value a discrete distribution takes; the bounds of a continuous one."""
        if self.distribution in ("choice", "grid"):
            return list(self.args)
        if self.distribution == "randint":
            return [self.args[0], self.args[1] - 1]
        return list(self.args)

    def to_tune(self) -> Any:
        """The Ray Tune search space object of this key."""
        from ray import tune

        if self.distribution == "grid":
            return tune.grid_search(list(self.args))
        return getattr(tune, self.distribution)(*self.args) if self.distribution != "choice" else \
            tune.choice(list(self.args))


@dataclass(frozen=True)
class TuneOptions:
    """A search: the keys, how many trials, what to optimize and how to stop weak trials."""

    search: tuple[Search, ...]
    trials: int
    metric: str
    mode: str
    scheduler: str
    max_concurrent: Optional[int]  # None: as many as the cluster's CPUs and GPUs hold

    def total_trials(self) -> int:
        grid = math.prod(len(s.args) for s in self.search if s.distribution == "grid")
        return self.trials * grid

    def to_dict(self) -> dict[str, Any]:
        """As a job file's ``tune:`` section."""
        return {"search": {s.name: s.text.split("=", 1)[1] for s in self.search}, "trials": self.trials,
                "metric": self.metric, "mode": self.mode, "scheduler": self.scheduler,
                "max_concurrent": self.max_concurrent}


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _option(section: str, key: str) -> cfg.Option:
    for option in cfg.options():
        if (option.section, option.key) == (section, key):
            return option
    names = [f"{o.section}.{o.key}" for o in cfg.options()]
    # An abbreviation (model.lr): the keys of that section with its letters in order, then spelling.
    near = [f"{section}.{o.key}" for o in cfg.options() if o.section == section and key
            and o.key[0] == key[0] and _in_order(key, o.key)]
    near = near or difflib.get_close_matches(f"{section}.{key}", names, n=3)
    hint = f"did you mean {' or '.join(near)}?" if near else "see `raytrain train --help` for every key"
    raise RaytrainError(f"--search {section}.{key}: no such job key; {hint}")


def _number(value: Any) -> Any:
    """``1e-4`` as a number: YAML 1.1 reads an exponent without a dot as a string."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def _in_order(letters: str, word: str) -> bool:
    rest = iter(word)
    return all(c in rest for c in letters)


def _base_type(kind: Any) -> Any:
    if typing.get_origin(kind) is typing.Union:  # Optional[X]
        (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
    return kind


def parse(text: str) -> Search:
    """One ``KEY=DISTRIBUTION(ARGS)``, checked against the job's keys and their types.

    Raises:
        RaytrainError: One line naming the problem and what is accepted.
    """
    match = _SPEC.match(text)
    if not match:
        raise RaytrainError(f"--search {text!r}: expected KEY=DISTRIBUTION(ARGS) such as {EXAMPLE}")
    section, key, distribution, inner = match.groups()
    where = f"--search {text.strip()}"
    option = _option(section, key)
    if (section, key) in NOT_SEARCHABLE:
        raise RaytrainError(f"{where}: {section}.{key} cannot be searched (the search names and places every "
                            "trial's run, on one cluster); set it for the whole search with its flag")
    if distribution not in DISTRIBUTIONS:
        raise RaytrainError(f"{where}: unknown distribution {distribution!r}; use one of {', '.join(DISTRIBUTIONS)}")
    try:
        args = yaml.safe_load(f"[{inner}]")
    except yaml.YAMLError:
        raise RaytrainError(f"{where}: the arguments are not comma-separated values such as 32,64,128") from None
    args = [_number(v) for v in args]
    kind = _base_type(option.kind)
    if distribution in ("choice", "grid"):
        if not args:
            raise RaytrainError(f"{where}: {distribution} needs at least one value, such as {distribution}(32,64)")
        args = [cfg.coerce(v, option.kind, f"{section}.{key}") for v in args]
        if option.choices:
            bad = [v for v in args if v not in option.choices]
            if bad:
                raise RaytrainError(f"{where}: {section}.{key} takes one of {list(option.choices)}. "
                                    f"Received: {bad[0]!r}")
        return Search(section, key, distribution, tuple(args))
    if len(args) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in args):
        raise RaytrainError(f"{where}: {distribution} takes two numbers (low, high), such as {distribution}(1, 10)")
    low, high = args
    if distribution == "randint":
        if kind is not int or not all(isinstance(v, int) for v in args):
            raise RaytrainError(f"{where}: randint draws integers, for an integer key with integer bounds; "
                                f"{section}.{key} is {_type_name(kind)}: use uniform, loguniform or choice")
    elif kind is not float:
        suggestion = "use randint or choice" if kind is int else "use choice"
        raise RaytrainError(f"{where}: {distribution} draws real numbers but {section}.{key} is {_type_name(kind)}; "
                            f"{suggestion}")
    if not low < high or (distribution == "loguniform" and low <= 0):
        need = "0 < low < high" if distribution == "loguniform" else "low < high"
        raise RaytrainError(f"{where}: {distribution} needs {need}. Received: low={low}, high={high}")
    return Search(section, key, distribution, (float(low), float(high)) if kind is float else (low, high))


def _type_name(kind: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(kind, "a list")


def parse_all(texts: list[str]) -> tuple[Search, ...]:
    """Several ``--search`` values; a key may be searched once."""
    searches = [parse(t) for t in texts]
    seen: set[str] = set()
    for s in searches:
        if s.name in seen:
            raise RaytrainError(f"--search {s.name} is given twice; search each key once")
        seen.add(s.name)
    return tuple(searches)


def produced_metrics(job: cfg.JobConfig) -> list[str]:
    """The metrics every epoch of a run of ``job`` reports (what ``--metric`` may name)."""
    train = ["loss", *job.model.metrics]
    return train + ([f"val_{m}" for m in train] if job.data.validation_ratio > 0 else [])


def options_from(section: dict[str, Any], flags: dict[str, Any], job: cfg.JobConfig) -> TuneOptions:
    """The search of a job file's ``tune:`` section, overridden by flags (None = not given).

    Args:
        section: The job file's ``tune:`` section (may be empty).
        flags: ``search`` (list of KEY=DIST(ARGS)), ``trials``, ``metric``, ``mode``,
            ``scheduler``, ``max_concurrent``.
        job: The base job (its metrics decide which ``metric`` exists and its default mode).
    """
    known = {"search", "trials", "metric", "mode", "scheduler", "max_concurrent"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise RaytrainError(f"unknown keys {unknown} in section 'tune' of the job file; known keys: {sorted(known)}")
    written = section.get("search") or {}
    if not isinstance(written, dict):
        raise RaytrainError("tune.search in the job file must map job keys to distributions, such as "
                            "model.learning_rate: loguniform(1e-4,1e-2)")
    texts = [f"{k}={v}" for k, v in written.items()]
    given = {s.split("=", 1)[0].strip() for s in flags.get("search") or []}
    texts = [t for t in texts if t.split("=", 1)[0] not in given] + list(flags.get("search") or [])
    searches = parse_all(texts)
    if not searches:
        raise RaytrainError(f"nothing to search: pass --search KEY=DISTRIBUTION(ARGS) such as {EXAMPLE} "
                            "(or a tune.search section in the job file)")

    def pick(name: str) -> Any:
        value = flags.get(name)
        return section.get(name) if value is None else value

    grid_only = all(s.distribution == "grid" for s in searches)
    trials = pick("trials")
    trials = (1 if grid_only else 8) if trials is None else trials
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise RaytrainError(f"--trials must be a whole number of 1 or more. Received: {trials!r}")
    metrics = produced_metrics(job)
    first = job.model.metrics[0] if job.model.metrics else "loss"
    metric = pick("metric") or (f"val_{first}" if job.data.validation_ratio > 0 else first)
    if metric not in metrics:
        raise RaytrainError(f"--metric {metric}: the runs of this job report {', '.join(metrics)}; pick one of them")
    mode = pick("mode") or ("max" if higher_is_better(metric) else "min")
    if mode not in ("max", "min"):
        raise RaytrainError(f"--mode must be max or min. Received: {mode!r}")
    scheduler = pick("scheduler") or "asha"
    if scheduler not in SCHEDULERS:
        raise RaytrainError(f"--scheduler must be one of {', '.join(SCHEDULERS)}. Received: {scheduler!r}")
    concurrent = pick("max_concurrent")
    if concurrent is not None and (not isinstance(concurrent, int) or isinstance(concurrent, bool) or concurrent < 1):
        raise RaytrainError(f"--max-concurrent must be a whole number of 1 or more. Received: {concurrent!r}")
    return TuneOptions(searches, trials, metric, mode, scheduler, concurrent)


def with_values(job: cfg.JobConfig, values: dict[str, Any]) -> cfg.JobConfig:
    """A copy of ``job`` with ``{"section.key": value}`` set (not validated)."""
    return cfg.apply_overrides(job, {tuple(name.split(".", 1)): v for name, v in values.items()})
