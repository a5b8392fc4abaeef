"""End a private local Ray's processes when its driver dies without shutting Ray down.

``ray.init(address="local")`` starts GCS, a raylet, the dashboard and its agents as the
driver's children. When the driver is killed (SIGKILL, the kernel's OOM killer) the
raylet and GCS notice within seconds, but the dashboard and runtime-env agents outlived
it by a minute or more. A small watcher, started beside the driver in a session of its
own, polls the driver; once the driver is gone, it ends every process whose command
line names the driver's Ray session folder, and their descendants, by PID. After a
normal exit (``ray.shutdown()`` ended them) it finds nothing and exits.

    python -m raytrain.cluster.reaper DRIVER_PID DRIVER_START SESSION_DIR
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Optional

from raytrain.cluster.processes import cluster_pids, descendants, end, same_process, start_time

POLL_SECONDS = 0.5  # how soon after the driver's death its Ray processes are ended (and how often its tree is read)
GRACE_SECONDS = 3  # SIGTERM first, then SIGKILL what is left


def start(session_dir: str) -> None:
    """Watch this process (the driver) and its local Ray in ``session_dir``."""
    me = os.getpid()
    subprocess.Popen(
        [sys.executable, "-m", "raytrain.cluster.reaper", str(me), str(start_time(me)), session_dir],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in the terminal must not end the watcher before the driver
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
    )


def watch(driver_pid: int, driver_start: int, session_dir: str) -> list[int]:
    """Wait for the driver to end, then end what is left of its Ray; return those PIDs.

    The driver's process tree is recorded while it lives (with start times, so a PID
    reused later is not mistaken for one of them): when the driver is killed, children of
    the raylet and the dashboard are re-parented as their parents exit, and their command
    lines (``ray::DashboardAgent``) do not name the session folder.
    """
    known: dict[int, Optional[int]] = {}
    while same_process(driver_pid, driver_start):
        for pid in descendants([driver_pid]):
            if pid not in known:
                known[pid] = start_time(pid)
        time.sleep(POLL_SECONDS)
    left = sorted({pid for pid, started in known.items() if same_process(pid, started)} | set(cluster_pids(session_dir)))
    end(left, grace_s=GRACE_SECONDS)
    return left


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
