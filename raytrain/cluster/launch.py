"""``raytrain up`` / ``raytrain down``: bring the cluster of a cluster file up or down.

- A cloud or on-premises file: ``up``/``down`` run ``ray up -y FILE`` / ``ray down -y FILE``.
- A simulated cluster (``provider: {type: fake_multinode}``, ``clusters/local-sim.yaml``):
  ``up`` starts a head on this machine (``RAY_FAKE_CLUSTER=1 ray start --head --block``,
  GCS on port 6379, dashboard and job server on 127.0.0.1:8265, no CPUs unless the head
  type declares some) with its own Ray temp folder, and records it under
  ``$RAYTRAIN_HOME/clusters/`` (default ``~/.raytrain``). The autoscaler then starts a
  simulated node (a raylet on this machine) whenever work asks for a worker type's
  resources. ``down`` ends the head, then every process still running from that temp
  folder (the simulated nodes outlive the head), by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

from raytrain.cluster.files import is_simulated, load_cluster
from raytrain.cluster.jobs import has_token, job_client
from raytrain.cluster.processes import alive, cluster_pids, end, same_process, start_time
from raytrain.env import DEFAULT_HOME, DEFAULT_RAY_AUTH_TOKEN_PATH, HOME_ENV, RAY_AUTH_MODE_ENV
from raytrain.errors import RaytrainError

SIM_GCS_PORT = 6379  # the fake_multinode provider connects its nodes to this port
SIM_DASHBOARD = "http://127.0.0.1:8265"
UP_TIMEOUT_S = 120
AGENT_PORT_FLAGS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                   "metrics-export-port", "ray-client-server-port")


def _ray_cli() -> str:
    return os.path.join(os.path.dirname(sys.executable), "ray")


def free_agent_ports() -> list[str]:
    """``ray start`` flags that give a head's agents free ports. Their defaults are fixed (the
    job agent's 52365, the client server's 10001), and another Ray on this machine (any
    ``ray.init()``) takes 52365 first: the head's agent then serves no HTTP, and every
    ``raytrain submit`` fails with "No available agent to submit job"."""
    from raytrain.backend import free_port

    ports: list[int] = []
    for _ in AGENT_PORT_FLAGS:
        ports.append(free_port(taken=frozenset(ports)))
    return [f"--{name}={port}" for name, port in zip(AGENT_PORT_FLAGS, ports)]


def _state_path(config: dict[str, Any]) -> str:
    home = os.path.expanduser(os.environ.get(HOME_ENV) or DEFAULT_HOME)
    return os.path.join(home, "clusters", f"{config['cluster_name']}.json")


def read_state(config: dict[str, Any]) -> Optional[dict[str, Any]]:
    path = _state_path(config)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def token_env(progress: Any = print) -> dict[str, str]:
    """The environment that starts a head with token authentication.

    ``ray start --head`` turns token authentication on only when a token already exists
    (``ray.init()`` creates one, ``ray start`` does not), so on a fresh machine a head
    would start without it. Unless ``RAY_AUTH_MODE`` is set explicitly, raytrain has Ray
    create the token its own way (``ray get-auth-token --generate``, which writes
    ``~/.ray/auth_token`` if there is none) and starts the head with ``RAY_AUTH_MODE=token``.
    """
    if RAY_AUTH_MODE_ENV in os.environ:
        return {}
    if not has_token():
        made = subprocess.run([_ray_cli(), "get-auth-token", "--generate"], capture_output=True, text=True)
        if made.returncode:
            raise RaytrainError(f"ray get-auth-token --generate failed: {made.stderr.strip().splitlines()[-1:]}")
        progress(f"created a Ray authentication token in {DEFAULT_RAY_AUTH_TOKEN_PATH} (ray get-auth-token --generate)")
    return {RAY_AUTH_MODE_ENV: "token"}


def up(path: str, progress: Any = print) -> dict[str, Any]:
    """Bring the cluster of ``path`` up (see the module docstring); return its record."""
    config = load_cluster(path)
    if not is_simulated(config):
        code = subprocess.call([_ray_cli(), "up", "-y", path])
        if code:
            raise RaytrainError(f"ray up {path} failed (exit {code}); see its output above")
        return {"cluster_name": config["cluster_name"], "config": os.path.abspath(path)}
    state = read_state(config)
    if state and same_process(state["head_pid"], state.get("head_start")):
        raise RaytrainError(
            f"simulated cluster {config['cluster_name']} is already up (head pid {state['head_pid']}); "
            f"raytrain down {path} first"
        )
    head_type = config["available_node_types"][config["head_node_type"]]
    cpus = head_type.get("resources", {}).get("CPU", 0)
    gpus = head_type.get("resources", {}).get("GPU", 0)
    temp_dir = tempfile.mkdtemp(prefix="raytrain-sim-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = dict(os.environ, RAY_FAKE_CLUSTER="1", **token_env(progress))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # jobs run this Python
    log = open(os.path.join(temp_dir, "head.log"), "w")
    cmd = [_ray_cli(), "start", "--head", "--block", f"--num-cpus={cpus}", f"--num-gpus={gpus}",
           f"--port={SIM_GCS_PORT}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           "--dashboard-port=8265", *free_agent_ports(), f"--autoscaling-config={os.path.abspath(path)}",
           f"--temp-dir={temp_dir}"]
    head = subprocess.Popen(cmd, env=env, cwd=temp_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    state = {"cluster_name": config["cluster_name"], "config": os.path.abspath(path), "head_pid": head.pid,
             "head_start": start_time(head.pid),  # with the pid, names this process (PIDs are reused)
             "temp_dir": temp_dir, "dashboard": SIM_DASHBOARD, "gcs_address": f"127.0.0.1:{SIM_GCS_PORT}",
             "started": time.time()}
    os.makedirs(os.path.dirname(_state_path(config)), exist_ok=True)
    with open(_state_path(config), "w") as f:
        json.dump(state, f, indent=1)
    progress(f"starting the head of {config['cluster_name']} (pid {head.pid}, logs in {temp_dir})")
    deadline = time.time() + UP_TIMEOUT_S
    while True:
        if head.poll() is not None:
            tail = open(os.path.join(temp_dir, "head.log")).read().strip().splitlines()[-1:]
            down(path, progress=lambda text: None)
            raise RaytrainError(f"the simulated head exited (code {head.returncode}): {' '.join(tail)}; "
                                f"is port {SIM_GCS_PORT} or 8265 taken by another Ray?")
        try:
            job_client(SIM_DASHBOARD).get_version()
            break
        except RaytrainError:
            if time.time() > deadline:
                down(path, progress=lambda text: None)
                raise RaytrainError(f"the simulated cluster's job server did not answer in {UP_TIMEOUT_S} s; "
                                    f"see {temp_dir}/head.log") from None
            time.sleep(1)
    progress(f"{config['cluster_name']} is up: submit jobs to {SIM_DASHBOARD}")
    return state


def down(path: str, progress: Any = print) -> list[int]:
    """Bring the cluster of ``path`` down; return the PIDs ended (simulated clusters)."""
    config = load_cluster(path)
    if not is_simulated(config):
        code = subprocess.call([_ray_cli(), "down", "-y", path])
        if code:
            raise RaytrainError(f"ray down {path} failed (exit {code}); see its output above")
        return []
    state = read_state(config)
    if state is None:
        progress(f"{config['cluster_name']} is not up (no record in {_state_path(config)})")
        return []
    # The recorded head only if it is still that process: after a reboot or a crash its PID
    # may name an unrelated process now (its tree must not be ended). The other processes
    # are found by the cluster's own temp folder on their command line.
    head = state["head_pid"] if same_process(state["head_pid"], state.get("head_start")) else None
    # Every process of the cluster is listed before any is signalled: once a raylet is
    # gone its workers are re-parented and could no longer be told apart.
    pids = cluster_pids(state["temp_dir"], head)
    if head is not None:
        os.kill(head, signal.SIGTERM)  # `ray start --block` stops the head's processes
        deadline = time.time() + 5  # then end the rest directly: a raylet would drain for 30 s
        while alive(head) and time.time() < deadline:
            time.sleep(0.2)
    ended = pids
    left = end(sorted(set(pids) | set(cluster_pids(state["temp_dir"]))), grace_s=10)
    if left:
        raise RaytrainError(f"processes of {config['cluster_name']} still run after SIGKILL: {left}")
    os.remove(_state_path(config))
    progress(f"{config['cluster_name']} is down ({len(ended)} processes ended; logs stay in {state['temp_dir']})")
    return ended
