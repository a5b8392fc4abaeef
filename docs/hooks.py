"""MkDocs hook: the pages' generated parts, made from the code and the results on every build.

A page asks for a part with a marker line such as ``<!-- generated: job-keys -->``. The job
keys come from the config fields' metadata, the commands' help from the parser, the exit codes
from ``raytrain.errors`` and the benchmark tables from the newest JSON of each kind in
``benchmarks/results/``: none of them can drift from what they describe.
"""

from __future__ import annotations

import glob
import json
import os
import re
import typing
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
MARKER = re.compile(r"^<!-- generated: ([a-z0-9-]+) -->$", re.MULTILINE)


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is typing.Union:
        (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (list, dict):
        args = ", ".join(a.__name__ for a in typing.get_args(kind))
        return f"{typing.get_origin(kind).__name__}[{args}]"
    return getattr(kind, "__name__", str(kind))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def job_keys() -> str:
    """One table per job section: key, flag, type, default, choices, meaning."""
    from raytrain import config as cfg

    out: list[str] = []
    section = None
    for option in cfg.options():
        if option.section != section:
            section = option.section
            out += ["", f"### `{section}`", "", "| key | flag | type | default | choices | what |", "|---|---|---|---|---|---|"]
        default = "not set" if option.default in (None, [], {}) else f"`{option.default}`"
        choices = ", ".join(f"`{c}`" for c in option.choices) if option.choices else ""
        out.append(f"| `{option.key}` | `--{cfg.flag_name(option.section, option.key)}` | {_type_name(option.kind)} "
                   f"| {_cell(default)} | {choices} | {_cell(option.help)} |")
    return "\n".join(out)


def commands_help() -> str:
    """Each command's ``--help``, as the terminal shows it at 100 columns."""
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal's width
    from raytrain.cli import build_parser

    parser = build_parser()
    out = ["## `raytrain`", "", "```", parser.format_help().rstrip(), "```"]
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, command in sub.choices.items():
        out += ["", f"## `raytrain {name}`", "", "```", command.format_help().rstrip(), "```"]
    return "\n".join(out)


def exit_codes() -> str:
    from raytrain import errors

    meaning = {
        "EXIT_FAILED": "training failed (workers died or raised more often than `run.max_failures` allows, or the "
                       "loss became NaN); the line names the newest checkpoint and the `--resume` command",
        "EXIT_USER_ERROR": "bad input or environment: one line names the problem and the fix; nothing was started "
                           "or written",
        "EXIT_INTERRUPTED": "interrupted (Ctrl-C): the checkpoints already written stay valid, `status.json` says "
                            "`interrupted`; continue with `--resume`",
    }
    rows = ["| code | constant | meaning |", "|---:|---|---|", "| 0 | | the command did what was asked |"]
    for name in ("EXIT_FAILED", "EXIT_USER_ERROR", "EXIT_INTERRUPTED"):
        rows.append(f"| {getattr(errors, name)} | `{name}` | {meaning[name]} |")
    return "\n".join(rows)


def _newest(pattern: str) -> tuple[str, dict[str, Any]]:
    """The newest result file matching ``pattern`` (by its date, then its name)."""
    paths = glob.glob(os.path.join(RESULTS, pattern))
    if not paths:
        raise FileNotFoundError(f"no benchmark results match {pattern} in {RESULTS}")
    loaded = [(json.load(open(p)).get("date", ""), os.path.basename(p), p) for p in paths]
    date, name, path = max(loaded)
    return name, json.load(open(path))


def _bench(pattern: str, render: Callable[[dict[str, Any]], str], command: str) -> str:
    name, result = _newest(pattern)
    machine = result.get("machine", {})
    where = f"{machine.get('cpus', '?')} CPUs, Python {machine.get('python', '?')}"
    return "\n".join([
        f"Reproduce: `{command}`. Newest result: `benchmarks/results/{name}`, {result.get('date')}, {where}.",
        "", render(result),
    ])


def bench_hdf5() -> str:
    from raytrain.bench import hdf5

    return _bench("hdf5-*.json", hdf5.render, "python benchmarks/hdf5_loader.py")


def bench_images() -> str:
    from raytrain.bench import images

    return _bench("images-*.json", images.render, "python benchmarks/images_loader.py")


def bench_store() -> str:
    from raytrain.bench import store

    return _bench("store-*.json", store.render, "python benchmarks/store_loader.py")


def bench_workers() -> str:
    from raytrain.bench import workers

    return _bench("workers-2-*.json", workers.render, "raytrain bench --workers 2")


def bench_workers_keras() -> str:
    from raytrain.bench import workers

    return _bench("keras-workers-2-*.json", workers.render, "raytrain bench --workers 2 --framework keras")


def _script(name: str) -> Any:
    """A benchmark script of ``benchmarks/`` as a module (for its ``render``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_frameworks() -> str:
    return _bench("frameworks-*.json", _script("frameworks").render, "python benchmarks/frameworks.py")


def bench_digits() -> str:
    return _bench("digits-*.json", _script("digits").render, "python benchmarks/digits.py")


PARTS: dict[str, Callable[[], str]] = {
    "job-keys": job_keys,
    "commands-help": commands_help,
    "exit-codes": exit_codes,
    "bench-hdf5": bench_hdf5,
    "bench-images": bench_images,
    "bench-store": bench_store,
    "bench-workers": bench_workers,
    "bench-workers-keras": bench_workers_keras,
    "bench-frameworks": bench_frameworks,
    "bench-digits": bench_digits,
}


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    def generate(match: re.Match) -> str:
        name = match.group(1)
        if name not in PARTS:
            raise KeyError(f"unknown generated part '{name}'; known: {sorted(PARTS)}")
        return PARTS[name]()

    done = MARKER.sub(generate, markdown)
    if "<!-- generated:" in done:  # a marker the pattern did not take would vanish as a comment
        raise ValueError(f"a generated-part marker in {kwargs['page'].file.src_path} was not replaced")
    return done
