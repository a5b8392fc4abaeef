"""``raytrain report``: curves of one run or several."""

from __future__ import annotations

import argparse
from typing import Any

from raytrain.cli.lazy import module_doc


def command_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="draw report.png of one run, or overlay several, and print a table",
                       description=module_doc("raytrain.run.report"), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories: <storage_path>/<name>")
    p.add_argument("--out", help="the picture to write (default: in the first run's directory)")
    p.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> int:
    from raytrain.run import report as reporting

    out, text = reporting.report(args.run_dirs, args.out)
    print(text)
    print(f"\nreport: {out}")
    return 0
