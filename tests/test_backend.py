"""The TensorFlow backend's port choice (the 2-worker training tests run it for real)."""

import json
import os
import socket

import pytest

from raytrain import backend


def test_a_port_is_drawn_below_the_ephemeral_range_and_is_free():
    high = backend.ephemeral_start()
    for _ in range(20):
        port = backend.free_port()
        assert backend.LOWEST_PORT <= port < high
        with socket.socket() as s:
            s.bind(("", port))  # nothing holds it


def test_a_port_in_use_is_never_drawn(monkeypatch):
    busy, free = backend.free_port(), backend.free_port()
    with socket.socket() as held:
        held.bind(("", busy))
        draws = iter([busy, busy, free])
        monkeypatch.setattr(backend.random, "randrange", lambda low, high: next(draws))
        assert backend.free_port() == free


def test_when_no_port_below_the_range_is_free_the_kernel_chooses(monkeypatch):
    monkeypatch.setattr(backend, "ephemeral_start", lambda: backend.LOWEST_PORT + 10)
    port = backend.free_port()
    with socket.socket() as s:
        s.bind(("", port))
    assert not backend.LOWEST_PORT <= port < backend.LOWEST_PORT + 10


def test_two_workers_of_one_node_never_share_a_port():
    redrawn = []

    def redraw(rank, taken):
        redrawn.append((rank, taken))
        return "10.0.0.1", 23001

    picked = [("10.0.0.1", 23000), ("10.0.0.2", 23000), ("10.0.0.1", 23000), ("::1", 23000)]
    assert backend.assign(picked, redraw) == ["10.0.0.1:23000", "10.0.0.2:23000", "10.0.0.1:23001", "[::1]:23000"]
    assert redrawn == [(2, frozenset({23000}))]


def test_tf_config_names_every_worker_and_this_ones_index(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "")  # restored after the test
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "0")
    backend._set_tf_config(["10.0.0.1:23000", "10.0.0.2:23000"], 1)
    assert json.loads(os.environ["TF_CONFIG"]) == {
        "cluster": {"worker": ["10.0.0.1:23000", "10.0.0.2:23000"]}, "task": {"type": "worker", "index": 1}}
    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"


@pytest.mark.ray
def test_two_real_workers_get_their_ports_from_this_backend(ray_local, tmp_path):
    from ray import train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    def loop():
        rank = train.get_context().get_world_rank()
        (tmp_path / f"tf_config-{rank}.json").write_text(os.environ["TF_CONFIG"])

    result = TensorflowTrainer(
        loop, tensorflow_config=backend.RaytrainTensorflowConfig(),
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(tmp_path), name="ports"),
    ).fit()
    assert result.error is None
    configs = [json.loads((tmp_path / f"tf_config-{rank}.json").read_text()) for rank in range(2)]
    assert [c["task"]["index"] for c in configs] == [0, 1]
    assert configs[0]["cluster"] == configs[1]["cluster"]
    ports = [int(address.rsplit(":", 1)[1]) for address in configs[0]["cluster"]["worker"]]
    assert len(set(ports)) == 2
    assert all(backend.LOWEST_PORT <= port < backend.ephemeral_start() for port in ports)
