"""``raytrain doctor``: check that this node, or every node of a cluster, can train.

This node (versions, the GPUs each framework sees, CPUs, free disk, credentials)::

    raytrain doctor

Also train the built-in cnn briefly with each installed framework (steps/s, data wait)::

    raytrain doctor --train

Every node of a cluster, one row each; nodes that differ from the head are marked::

    raytrain doctor --address auto

Exit code 0 when everything asked for works; 1 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
from typing import Any

from raytrain.errors import EXIT_FAILED


def command_parser(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check that this node (or every node of a cluster) can train",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", action="store_true",
                   help="also train the built-in cnn for two short epochs with each installed framework")
    p.add_argument("--address", default=None,
                   help="check every node of this Ray cluster (auto, HOST:6379 or ray://HOST:10001) as Ray tasks")
    p.add_argument("--cache-dir", default=None,
                   help="where the node cache would go (data.cache_dir); default: the system's temporary folder")
    p.set_defaults(func=doctor_command)


def _framework(name: str, report: dict[str, Any]) -> str:
    from raytrain.doctor import FRAMEWORKS

    packages = ", ".join(f"{p} {report['versions'][p]}" for p in FRAMEWORKS[name] if report["versions"][p])
    seen = report["frameworks"][name]
    if seen is None:
        return f"not installed{f' (only {packages})' if packages else ''}"
    if "error" in seen:
        return f"{packages}: fails to import"
    if not seen.get("gpus"):
        return f"{packages}: no GPU seen (CPU only)"
    cuda = ", ".join(f"{k} {seen[k]}" for k in ("cuda", "cudnn") if seen.get(k))
    return f"{packages}: {len(seen['gpus'])} GPU(s){f' ({cuda})' if cuda else ''}"


def _node_lines(report: dict[str, Any]) -> list[str]:
    from raytrain.doctor import LABELS

    v = report["versions"]
    rows = [("python", v["python"]), ("raytrain", v["raytrain"] or "not installed"),
            ("ray", v["ray"] or "not installed"),
            *((LABELS[name], _framework(name, report)) for name in report["frameworks"]),
            ("CPUs", f"{report['cpus']:g} (as Ray counts them)"),
            ("GPUs", f"{report['gpus']} (as Ray detects them)" if report["gpus"] else "none: training runs on CPUs"),
            ("free disk", f"{report['disk']['free_gib']:.1f} GiB at {report['disk']['path']} (the node cache)"),
            ("s3:// credentials", report["credentials"]["s3"]), ("gs:// credentials", report["credentials"]["gs"]),
            ("mlflow", v["mlflow"] or "not installed (pip install 'raytrain[mlflow]' for --mlflow)")]
    for name, result in report.get("train", {}).items():
        shown = result["error"][:120] if "error" in result else \
            f"{result['steps_per_s']:.1f} steps/s on {result['devices']}, data wait {100 * result['data_wait_fraction']:.0f}%"
        rows.append((f"train {LABELS[name]}", shown))
    width = max(len(label) for label, _ in rows)
    return [f"  {label:<{width}}  {value}" for label, value in rows]


def _cluster_lines(reports: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The table (one row per node) and the problems, each naming its node."""
    from raytrain.doctor import differences, problems

    head = next((r for r in reports if r.get("head") and "error" not in r), None)
    head_cols = ["node", "ip", "python", "raytrain", "ray", "tensorflow", "keras", "jax", "GPUs (Ray / seen)", "CPUs",
                 "free GiB", ""]
    rows, issues = [], []
    for r in reports:
        # Both ends of the id: Ray's simulated nodes share their first characters.
        name = f"{r['node_id'][:6]}..{r['node_id'][-6:]}" + (" (head)" if r.get("head") else "")
        if "error" in r:
            rows.append([name, r["ip"], *["?"] * 9, "!"])
            issues.append(f"node {name} {r['ip']}: the check did not run there ({r['error']})")
            continue
        v = r["versions"]
        seen = max((len(s.get("gpus") or []) for s in r["frameworks"].values() if s and "error" not in s), default=0)
        found = problems(r, ray_gpus=r["ray_gpus"])
        found += [f"differs from the head: {d}" for d in (differences(r, head) if head and r is not head else [])]
        issues += [f"node {name} {r['ip']}: {p}" for p in found]
        rows.append([name, r["ip"], v["python"], *(v[p] or "-" for p in ("raytrain", "ray", "tensorflow", "keras", "jax")),
                     f"{r['ray_gpus']:g} / {seen}", f"{r['cpus']:g}", f"{r['disk']['free_gib']:.1f}",
                     "!" if found else ""])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head_cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head_cols, *rows]]
    return lines, issues


def doctor_command(args: argparse.Namespace) -> int:
    from raytrain import doctor

    if args.address:
        print(f"raytrain doctor: checking every node of the cluster at {args.address}", flush=True)
        lines, issues = _cluster_lines(doctor.cluster_reports(args.address, args.cache_dir, args.train))
        print("\n".join(lines))
    else:
        report = doctor.node_report(args.cache_dir, args.train)
        print(f"raytrain doctor: this node ({report['host']})")
        print("\n".join(_node_lines(report)))
        issues = doctor.problems(report)
    if issues:
        print("\n".join(f"raytrain doctor: problem: {line}" for line in issues))
        return EXIT_FAILED
    print("raytrain doctor: ready to train")
    return 0
