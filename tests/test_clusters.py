"""Cluster files validate against Ray's own schema; a simulated multi-node cluster is brought up,
trained on with `raytrain submit`, and brought down leaving no process behind."""

import glob
import json
import os
import time

import pytest
import yaml

from raytrain.cluster.files import load_cluster, schema
from raytrain.cluster.launch import read_state
from raytrain.cluster.processes import cluster_pids
from raytrain.errors import RaytrainError
from tests.conftest import ROOT, _ray_pids, run_cli

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


@pytest.mark.ray
def test_rehearsal_on_a_simulated_multi_node_cluster(tmp_path, make_h5):
    """local-sim.yaml up; a 2-worker job submitted; two simulated nodes; down; nothing left."""
    env_home = str(tmp_path / "home")
    os.environ["RAYTRAIN_HOME"] = env_home
    sim = os.path.join(CLUSTERS, "local-sim.yaml")
    before = _ray_pids()
    started = time.time()
    up = run_cli("up", sim, cwd=str(tmp_path))
    state = read_state(load_cluster(sim))
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        data = make_h5("train.h5", samples=1200, shape=(16, 16, 3), classes=3)
        job = run_cli("submit", os.path.join(ROOT, "examples", "hdf5.yaml"), "--data", data,
                      "--address", "http://127.0.0.1:8265", "--num-workers", "2", "--epochs", "2",
                      "--batch-size", "32", "--name", "sim", "--storage-path", str(tmp_path / "runs"),
                      cwd=str(tmp_path))
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-2000:]
        assert "succeeded (exit 0)" in job.stdout and "finished 2 epochs (2 workers)" in job.stdout
        ranks = [json.load(open(p)) for p in sorted(glob.glob(str(tmp_path / "runs" / "sim" / "workers" / "*.json")))]
        nodes = {r["node_id"] for r in ranks}
        assert len(ranks) == 2 and len(nodes) == 2, "the two training workers ran on different nodes"
        assert all(n.startswith("fffff") for n in nodes), "nodes the fake_multinode autoscaler launched"
        assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]

        # The GPU path, on simulated GPUs: Ray schedules a worker per GPU node and hands it its device.
        gpu = run_cli("submit", "--data", data, "--address", "http://127.0.0.1:8265", "--num-workers", "2",
                      "--gpus-per-worker", "1", "--placement", "spread", "--epochs", "1", "--batch-size", "32",
                      "--name", "gpu", "--storage-path", str(tmp_path / "runs"), cwd=str(tmp_path))
        assert gpu.returncode == 0, gpu.stdout[-3000:] + gpu.stderr[-2000:]
        gpu_ranks = [json.load(open(p)) for p in sorted(glob.glob(str(tmp_path / "runs" / "gpu" / "workers" / "*.json")))]
        assert {r["cuda_visible_devices"] for r in gpu_ranks} == {"0"}
        assert len({r["node_id"] for r in gpu_ranks}) == 2 and not {r["node_id"] for r in gpu_ranks} & nodes
        assert all(r["local_replicas"] == 1 for r in gpu_ranks)  # TensorFlow sees no real GPU here
    finally:
        down = run_cli("down", sim, cwd=str(tmp_path))
        os.environ.pop("RAYTRAIN_HOME", None)
    print(f"rehearsal: {time.time() - started:.0f} s from up to down")
    assert down.returncode == 0, down.stderr[-2000:]
    assert not cluster_pids(state["temp_dir"]), "a process of the simulated cluster is still running"
    assert not (_ray_pids() - before), "a Ray process started by the rehearsal is still running"
    assert not os.path.exists(os.path.join(env_home, "clusters", "raytrain-local-sim.json"))
