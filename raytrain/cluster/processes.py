"""The processes of a simulated cluster, found and checked through ``/proc`` (by PID,
never by name)."""

from __future__ import annotations

import os
import signal
import time
from typing import Iterator, Optional

KILL_WAIT_S = 5  # how long a SIGKILLed process may take to disappear


def process_cmdlines() -> Iterator[tuple[int, str]]:
    """(pid, command line) of every process this user can see, from /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                yield int(entry), f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue


def start_time(pid: int) -> Optional[int]:
    """When ``pid`` started (clock ticks since boot, /proc/PID/stat field 22), or None if it
    is gone. With the PID it names one process: a PID reused later has another start time."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def same_process(pid: int, started: Optional[int]) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` (and alive)."""
    return started is not None and alive(pid) and start_time(pid) == started


def _pids_under(folder: str) -> list[int]:
    """PIDs of the processes whose command line names ``folder`` (a cluster's own Ray temp folder)."""
    return [pid for pid, cmd in process_cmdlines() if folder in cmd and pid != os.getpid()]


def _children() -> dict[int, list[int]]:
    """Parent PID -> child PIDs, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def cluster_pids(folder: str, head_pid: Optional[int] = None) -> list[int]:
    """The processes of a simulated cluster: those naming its temp ``folder`` on their
    command line (raylets, GCS, dashboard, monitor) and all their descendants (Ray's
    workers rename themselves ``ray::...`` and no longer show the folder)."""
    roots = set(_pids_under(folder)) | ({head_pid} if head_pid and alive(head_pid) else set())
    return sorted(roots | set(descendants(roots)))


def descendants(roots: set[int] | list[int]) -> list[int]:
    """Every process below ``roots`` in the process tree (not ``roots`` themselves, nor this process)."""
    tree, found = _children(), set()
    todo = [child for root in roots for child in tree.get(root, [])]
    while todo:
        pid = todo.pop()
        if pid in found or pid == os.getpid():
            continue
        found.add(pid)
        todo.extend(tree.get(pid, []))
    return sorted(found)


def end(pids: list[int], grace_s: float) -> list[int]:
    """SIGTERM ``pids``, give them ``grace_s`` seconds, SIGKILL the rest; return any still alive."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, KILL_WAIT_S)):
        left = [pid for pid in pids if alive(pid)]
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait_s
        while any(alive(pid) for pid in left) and time.time() < deadline:
            time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
