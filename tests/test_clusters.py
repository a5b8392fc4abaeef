"""Cluster files validate against Ray's own schema; a simulated multi-node cluster is brought up,
trained on with `raytrain submit`, and brought down leaving no process behind."""

import glob
import json
import os
import socket
import time

import pytest
import yaml

from raytrain.cluster.files import load_cluster, schema
from raytrain.cluster.launch import read_state
from raytrain.cluster.processes import cluster_pids
from raytrain.errors import RaytrainError
from tests.common import ROOT, run_cli, simulated_cluster_pids

CLUSTERS = os.path.join(ROOT, "clusters")
LAUNCHER_FILES = [p for p in sorted(glob.glob(os.path.join(CLUSTERS, "*.yaml"))) if not p.endswith("kuberay.yaml")]


def test_every_cluster_file_is_here():
    names = {os.path.basename(p) for p in glob.glob(os.path.join(CLUSTERS, "*.yaml"))}
    assert {"aws-gpu.yaml", "gcp-gpu.yaml", "onprem.yaml", "kuberay.yaml", "local-sim.yaml"} <= names


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=os.path.basename)
def test_launcher_files_validate_against_rays_schema(path):
    import jsonschema

    with open(path) as f:
        config = yaml.safe_load(f)
    jsonschema.validate(config, schema())  # raises with the offending key
    assert config["head_node_type"] in config["available_node_types"]
    for name, node_type in config["available_node_types"].items():
        assert "resources" in node_type, f"{name}: declare resources per node type"
    text = open(path).read()
    keys = [line for line in text.splitlines() if line.strip() and not line.strip().startswith("#")
            and ":" in line and not line.strip().startswith("-")]
    uncommented = [line for line in keys if "#" not in line]
    assert not uncommented, f"keys without a comment: {uncommented[:5]}"


@pytest.mark.parametrize("path", [p for p in LAUNCHER_FILES if "local-sim" not in p], ids=os.path.basename)
def test_cloud_files_install_raytrain_and_have_gpu_workers(path):
    config = yaml.safe_load(open(path))
    setup = " ".join(config.get("setup_commands", []))
    assert "raytrain" in setup
    if "gpu" in os.path.basename(path):
        assert any(t.get("resources", {}).get("GPU", 0) >= 1 for t in config["available_node_types"].values())


def test_kuberay_file_has_what_the_operator_requires():
    config = yaml.safe_load(open(os.path.join(CLUSTERS, "kuberay.yaml")))
    assert config["apiVersion"].startswith("ray.io/") and config["kind"] == "RayCluster"
    assert config["metadata"]["name"]
    spec = config["spec"]
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"][0]["image"]
    groups = spec["workerGroupSpecs"]
    gpu = [g for g in groups if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert gpu, "a GPU worker group"
    for group in groups:
        assert group["groupName"] and "rayStartParams" in group
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_a_broken_cluster_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"cluster_name": "x", "provider": {"type": "aws"}, "max_workers": "many"}))
    with pytest.raises(RaytrainError, match="max_workers"):
        load_cluster(str(bad))
    proc = run_cli("up", str(tmp_path / "missing.yaml"), cwd=str(tmp_path))
    assert proc.returncode == 2 and "cluster file" in proc.stderr and "does not exist" in proc.stderr


@pytest.mark.parametrize("path", [p for p in LAUNCHER_FILES if "local-sim" not in p], ids=os.path.basename)
def test_cloud_files_expose_nothing_and_copy_only_the_package(path):
    """The dashboard stays on the head's loopback (reached by `ray
    dashboard`'s SSH tunnel), and only the package travels to the nodes (no .git, no .env)."""
    text = open(path).read()
    config = yaml.safe_load(text)
    assert "0.0.0.0" not in text
    assert all("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert set(config["file_mounts"].values()) == {"./raytrain", "./pyproject.toml", "./README.md"}
    assert {".git", ".env"} <= set(config["rsync_exclude"])


def test_up_has_ray_create_a_token_when_there_is_none(tmp_path, monkeypatch):
    """On a fresh machine the head still starts with token authentication."""
    from raytrain.cluster.launch import token_env

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    assert token_env(progress=lambda text: None) == {"RAY_AUTH_MODE": "token"}
    assert len((tmp_path / ".ray" / "auth_token").read_text().strip()) >= 32
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # an explicit choice is respected
    assert token_env(progress=lambda text: None) == {}


def test_down_leaves_a_reused_pid_alone(tmp_path, monkeypatch):
    """A leftover state file whose head PID now names another process."""
    import subprocess
    import sys

    from raytrain.cluster import launch
    from raytrain.cluster.processes import alive, start_time

    monkeypatch.setenv("RAYTRAIN_HOME", str(tmp_path / "home"))
    path = os.path.join(CLUSTERS, "local-sim.yaml")
    config = load_cluster(path)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state_file = launch._state_path(config)
        os.makedirs(os.path.dirname(state_file))
        (tmp_path / "gone").mkdir()
        with open(state_file, "w") as f:  # the recorded head started at another time: not this process
            json.dump({"head_pid": stranger.pid, "head_start": start_time(stranger.pid) - 1,
                       "temp_dir": str(tmp_path / "gone"), "cluster_name": config["cluster_name"]}, f)
        assert launch.down(path, progress=lambda text: None) == []
        assert alive(stranger.pid) and not os.path.exists(state_file)
    finally:
        stranger.kill()
        stranger.wait()


def test_submit_ships_the_builders_folder_without_vcs_data_or_runs(tmp_path):
    """A builder that imports a module beside it works on the cluster; nothing else travels."""
    from raytrain import config as cfg
    from raytrain.cluster.jobs import SUBMITTED_JOB, plain_http_to_remote, stage_job
    from raytrain.run import rundir

    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / ".git" / "config").write_text("[core]")
    (project / "data").mkdir()
    (project / "data" / "big.h5").write_bytes(b"x" * 1000)
    (project / ".env").write_text("AWS_SECRET_ACCESS_KEY=...")
    (project / "helper.py").write_text("WIDTH = 8\n")
    (project / "net.py").write_text("from helper import WIDTH\ndef build(input_shape, num_classes):\n    pass\n")
    job = cfg.validate(cfg.from_dict({"data": {"paths": ["x.h5"]}, "model": {"builder": f"{project}/net.py:build"}}))
    folder, submitted = stage_job(job)
    shipped = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)
    assert shipped == [f"{SUBMITTED_JOB}/job.yaml", "helper.py", "net.py"]
    assert submitted.model.builder == "net.py:build" and submitted.scaling.address == "auto"
    assert rundir.read_job(os.path.join(folder, SUBMITTED_JOB)).model.builder == "net.py:build"
    with open(project / "weights.bin", "wb") as f:
        f.truncate(101 << 20)
    with pytest.raises(RaytrainError, match="submit ships the whole folder"):
        stage_job(job)
    assert plain_http_to_remote("http://10.0.0.5:8265") and plain_http_to_remote("ray.example.com:8265")
    assert not plain_http_to_remote("http://127.0.0.1:8265") and not plain_http_to_remote("https://ray.example.com")


@pytest.fixture
def agent_port_taken():
    """Ray's default port for a node's job agent (52365) held for the test, as any other Ray on
    the machine holds it: a head that used it would serve no job agent (unless it is held already)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a connection's TIME_WAIT does not hold it
        try:
            s.bind(("", 52365))
            s.listen()
        except OSError:
            pass  # held already: by another Ray, as this simulates
        yield


@pytest.mark.ray
@pytest.mark.simulated_cluster
def test_rehearsal_on_a_simulated_multi_node_cluster(tmp_path, make_h5, agent_port_taken):
    """local-sim.yaml up; a job file submitted with 2 workers on simulated GPU nodes; down;
    nothing left. (2 workers on CPU nodes, and a node lost under them: tests/test_elastic.py.)"""
    env_home = str(tmp_path / "home")
    os.environ["RAYTRAIN_HOME"] = env_home
    sim = os.path.join(CLUSTERS, "local-sim.yaml")
    before = simulated_cluster_pids()
    started = time.time()
    up = run_cli("up", sim, cwd=str(tmp_path))
    state = read_state(load_cluster(sim))
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        data = make_h5("train.h5", samples=600, shape=(16, 16, 3), classes=3)
        # The GPU path, on simulated GPUs: Ray schedules a worker per GPU node and hands it its device.
        gpu = run_cli("submit", os.path.join(ROOT, "examples", "hdf5.yaml"), "--data", data,
                      "--address", "http://127.0.0.1:8265", "--num-workers", "2", "--gpus-per-worker", "1",
                      "--placement", "spread", "--epochs", "1", "--batch-size", "32", "--name", "gpu",
                      "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
        assert gpu.returncode == 0, gpu.stdout[-3000:] + gpu.stderr[-2000:]
        assert "succeeded (exit 0)" in gpu.stdout and "finished 1 epochs (2 workers)" in gpu.stdout
        ranks = [json.load(open(p)) for p in sorted(glob.glob(str(tmp_path / "runs" / "gpu" / "workers" / "*.json")))]
        nodes = {r["node_id"] for r in ranks}
        assert len(ranks) == 2 and len(nodes) == 2, "the two training workers ran on different nodes"
        assert all(n.startswith("fffff") for n in nodes), "nodes the fake_multinode autoscaler launched"
        assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
        assert {r["cuda_visible_devices"] for r in ranks} == {"0"}
        assert all(r["local_replicas"] == 1 for r in ranks)  # TensorFlow sees no real GPU here
        # raytrain doctor on every node: the same versions everywhere, but the simulated GPU nodes'
        # GPUs are seen by no framework, which is what doctor is for.
        doctor = run_cli("doctor", "--address", "127.0.0.1:6379", cwd=str(tmp_path))
        assert doctor.returncode == 1, doctor.stdout[-3000:] + doctor.stderr[-2000:]
        table = doctor.stdout.splitlines()
        rows = [line for line in table[2:] if not line.startswith("raytrain doctor:")]  # after the header
        gpu_rows = [row for row in rows if " 1 / 0 " in row]
        assert "(head)" in rows[0] and not rows[0].endswith("!") and len(gpu_rows) >= 2
        assert all(row.endswith("!") for row in gpu_rows) and not any(row.endswith("!") for row in rows
                                                                        if row not in gpu_rows)
        problems = [line for line in table if line.startswith("raytrain doctor: problem:")]
        assert len(problems) == len(gpu_rows) and all("Ray counts 1 GPU(s) here but neither" in p for p in problems)
        assert not any("differs from the head" in line for line in table)
    finally:
        down = run_cli("down", sim, cwd=str(tmp_path))
        os.environ.pop("RAYTRAIN_HOME", None)
    print(f"rehearsal: {time.time() - started:.0f} s from up to down")
    assert down.returncode == 0, down.stderr[-2000:]
    assert not cluster_pids(state["temp_dir"]), "a process of the simulated cluster is still running"
    assert not (simulated_cluster_pids() - before), "a Ray process started by the rehearsal is still running"
    assert not os.path.exists(os.path.join(env_home, "clusters", "raytrain-local-sim.json"))
