"""Clusters: ``raytrain up`` / ``raytrain down`` and ``raytrain submit``.

Cluster files are Ray's own cluster-launcher YAML (``clusters/*.yaml``), checked
against Ray's schema (``ray/autoscaler/ray-schema.json``) before anything starts.

- A cloud or on-premises file: ``up``/``down`` run ``ray up -y FILE`` / ``ray down -y FILE``.
- A simulated cluster (``provider: {type: fake_multinode}``, ``clusters/local-sim.yaml``):
  ``up`` starts a head on this machine (``RAY_FAKE_CLUSTER=1 ray start --head --block``,
  GCS on port 6379, dashboard and job server on 127.0.0.1:8265, no CPUs unless the head
  type declares some) with its own Ray temp folder, and records it under
  ``$RAYTRAIN_HOME/clusters/`` (default ``~/.raytrain``). The autoscaler then starts a
  simulated node (a raylet on this machine) whenever work asks for a worker type's
  resources. ``down`` ends the head, then every process still running from that temp
  folder (the simulated nodes outlive the head), by PID.

``submit`` runs ``raytrain train`` on a cluster as a Ray Job: the job is resolved here
(every path absolute, ``scaling.address: auto``), written with a model builder file (if
any) into a folder that travels as the job's working directory, and the local
``raytrain`` package travels too (``py_modules``), so the cluster runs the code that
submitted it. The cluster's Python must have raytrain's dependencies (the cluster files'
``setup_commands`` install them). Logs are streamed; the exit code is the job's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator, Optional

import yaml

from raytrain.errors import RaytrainError

SIM_GCS_PORT = 6379  # the fake_multinode provider connects its nodes to this port
SIM_DASHBOARD = "http://127.0.0.1:8265"
UP_TIMEOUT_S = 120


def schema() -> dict[str, Any]:
    use_token_auth()
    import ray

    with open(os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")) as f:
        return json.load(f)


def load_cluster(path: str) -> dict[str, Any]:
    """A cluster file, validated against Ray's schema.

    Raises:
        RaytrainError: The file is missing, not YAML, or breaks the schema (the first
            problem, with where it is).
    """
    import jsonschema

    use_token_auth()  # before Ray is imported: it reads RAY_AUTH_MODE once
    if not os.path.isfile(path):
        raise RaytrainError(f"cluster file {path} does not exist; see clusters/ for examples")
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise RaytrainError(f"cluster file {path} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if isinstance(config, dict) and config.get("kind") == "RayCluster":
        raise RaytrainError(f"{path} is a KubeRay RayCluster: apply it with kubectl apply -f {path}")
    try:
        jsonschema.validate(config, schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "top level"
        raise RaytrainError(f"cluster file {path}: {where}: {e.message.splitlines()[0]} (Ray's cluster schema)") from None
    return config


def is_simulated(config: dict[str, Any]) -> bool:
    return config.get("provider", {}).get("type") == "fake_multinode"


def _ray_cli() -> str:
    return os.path.join(os.path.dirname(sys.executable), "ray")


def _state_path(config: dict[str, Any]) -> str:
    home = os.environ.get("RAYTRAIN_HOME") or os.path.expanduser("~/.raytrain")
    return os.path.join(home, "clusters", f"{config['cluster_name']}.json")


def read_state(config: dict[str, Any]) -> Optional[dict[str, Any]]:
    path = _state_path(config)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def use_token_auth() -> None:
    """Ray 2.60 clusters require a token; the job client only sends it with
    ``RAY_AUTH_MODE=token``. Set that when a token is at hand (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, which ``ray start`` writes)."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or \
            os.path.exists(os.path.expanduser("~/.ray/auth_token")):
        os.environ["RAY_AUTH_MODE"] = "token"


def _job_client(address: str) -> Any:
    use_token_auth()
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # connection refused, authentication, a wrong URL
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RaytrainError(
            f"no Ray job server at {address} ({first}); start the cluster (raytrain up CLUSTER.yaml) "
            "and pass its dashboard address, e.g. --address http://127.0.0.1:8265"
        ) from None


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
    roots = set(_pids_under(folder)) | ({head_pid} if head_pid and _alive(head_pid) else set())
    tree, found, todo = _children(), set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in found or pid == os.getpid():
            continue
        found.add(pid)
        todo.extend(tree.get(pid, []))
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def up(path: str, progress: Any = print) -> dict[str, Any]:
    """Bring the cluster of ``path`` up (see the module docstring); return its record."""
    config = load_cluster(path)
    if not is_simulated(config):
        code = subprocess.call([_ray_cli(), "up", "-y", path])
        if code:
            raise RaytrainError(f"ray up {path} failed (exit {code}); see its output above")
        return {"cluster_name": config["cluster_name"], "config": os.path.abspath(path)}
    state = read_state(config)
    if state and _alive(state["head_pid"]):
        raise RaytrainError(
            f"simulated cluster {config['cluster_name']} is already up (head pid {state['head_pid']}); "
            f"raytrain down {path} first"
        )
    head_type = config["available_node_types"][config["head_node_type"]]
    cpus = head_type.get("resources", {}).get("CPU", 0)
    gpus = head_type.get("resources", {}).get("GPU", 0)
    temp_dir = tempfile.mkdtemp(prefix="raytrain-sim-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = dict(os.environ, RAY_FAKE_CLUSTER="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # jobs run this Python
    log = open(os.path.join(temp_dir, "head.log"), "w")
    cmd = [_ray_cli(), "start", "--head", "--block", f"--num-cpus={cpus}", f"--num-gpus={gpus}",
           f"--port={SIM_GCS_PORT}", "--dashboard-host=127.0.0.1", "--dashboard-port=8265",
           f"--autoscaling-config={os.path.abspath(path)}", f"--temp-dir={temp_dir}"]
    head = subprocess.Popen(cmd, env=env, cwd=temp_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    state = {"cluster_name": config["cluster_name"], "config": os.path.abspath(path), "head_pid": head.pid,
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
            _job_client(SIM_DASHBOARD).get_version()
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
    # Every process of the cluster is listed before any is signalled: once a raylet is
    # gone its workers are re-parented and could no longer be told apart.
    pids = cluster_pids(state["temp_dir"], state["head_pid"])
    if _alive(state["head_pid"]):
        os.kill(state["head_pid"], signal.SIGTERM)  # `ray start --block` stops the head's processes
        deadline = time.time() + 5  # then end the rest directly: a raylet would drain for 30 s
        while _alive(state["head_pid"]) and time.time() < deadline:
            time.sleep(0.2)
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        left = [pid for pid in sorted(set(pids) | set(cluster_pids(state["temp_dir"]))) if _alive(pid)]
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait_s
        while any(_alive(pid) for pid in left) and time.time() < deadline:
            time.sleep(0.2)
    ended = pids
    left = [pid for pid in pids if _alive(pid)]
    if left:
        raise RaytrainError(f"processes of {config['cluster_name']} still run after SIGKILL: {left}")
    os.remove(_state_path(config))
    progress(f"{config['cluster_name']} is down ({len(ended)} processes ended; logs stay in {state['temp_dir']})")
    return ended


def stage_job(job: Any) -> tuple[str, Any]:
    """A folder holding the resolved ``job.yaml`` (and the model builder file, if any) to
    travel as the job's working directory; returns (folder, job as submitted)."""
    import dataclasses

    from raytrain.config import to_dict

    folder = tempfile.mkdtemp(prefix="raytrain-submit-")
    builder = job.model.builder
    if ".py:" in builder:
        source, function = builder.rsplit(":", 1)
        shutil.copy(source, os.path.join(folder, os.path.basename(source)))
        builder = f"{os.path.basename(source)}:{function}"
    job = dataclasses.replace(
        job, model=dataclasses.replace(job.model, builder=builder),
        scaling=dataclasses.replace(job.scaling, address="auto"),
    )
    with open(os.path.join(folder, "job.yaml"), "w") as f:
        yaml.safe_dump(to_dict(job), f, sort_keys=False)
    return folder, job


def submit(job: Any, address: str, progress: Any = print) -> int:
    """Submit ``raytrain train`` of a validated job as a Ray Job, stream its logs, and
    return its exit code (Ctrl-C stops the job)."""
    import asyncio
    import logging

    import raytrain

    client = _job_client(address)
    for name in ["ray", *[n for n in logging.root.manager.loggerDict if n.startswith("ray.")]]:
        logging.getLogger(name).setLevel(logging.WARNING)  # not a line per uploaded package
    folder, job = stage_job(job)
    package = os.path.dirname(os.path.abspath(raytrain.__file__))
    entrypoint = "python -m raytrain train job.yaml"
    job_id = client.submit_job(
        entrypoint=entrypoint,
        submission_id=f"raytrain-{job.run.name}-{int(time.time())}",
        runtime_env={"working_dir": folder, "py_modules": [package]},
        entrypoint_num_cpus=0,  # the driver only coordinates; the head may have no CPUs
    )
    progress(f"submitted {job_id} to {address}: {job.scaling.num_workers} workers, run {job.run_dir}")

    async def stream() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        asyncio.run(stream())
        while client.get_job_status(job_id) not in ("SUCCEEDED", "FAILED", "STOPPED"):
            time.sleep(0.5)
    except KeyboardInterrupt:
        client.stop_job(job_id)
        progress(f"stopped {job_id}")
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    info = client.get_job_info(job_id)
    code = getattr(info, "driver_exit_code", None)
    if code is None:
        code = 0 if info.status == "SUCCEEDED" else 1
    progress(f"{job_id} {str(info.status).lower()} (exit {code})")
    return int(code)
