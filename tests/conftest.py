"""Fixtures: tiny synthetic HDF5 files, a CLI runner, and a guard that no Ray process outlives the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable

import h5py
import numpy as np
import pytest

from raytrain.data.synth import make_hdf5

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY_PROCESS_MARKERS = ("raylet", "gcs_server", "ray::", "default_worker.py", "dashboard.py", "log_monitor.py")


def _ray_pids() -> set[int]:
    from raytrain.cluster.processes import process_cmdlines

    return {pid for pid, cmd in process_cmdlines() if any(m in cmd for m in RAY_PROCESS_MARKERS)}


@pytest.fixture(scope="session", autouse=True)
def no_ray_left_behind():
    """Fail the session if a Ray process started during the tests is still running."""
    before = _ray_pids()
    yield
    import time

    deadline = time.time() + 20
    while (left := _ray_pids() - before) and time.time() < deadline:
        time.sleep(0.5)
    for pid in left:  # end what the tests leaked, by PID, then report it
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    assert not left, f"Ray processes outlived the tests: {sorted(left)}"


@pytest.fixture
def ray_local():
    """A private local Ray instance, always shut down."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def make_h5(tmp_path) -> Callable[..., str]:
    """Write a learnable synthetic dataset and return its path."""

    def make(name: str = "data.h5", samples: int = 64, **kwargs) -> str:
        path = str(tmp_path / name)
        make_hdf5(path, samples, **kwargs)
        return path

    return make


@pytest.fixture(scope="session")
def ids_order(tmp_path_factory):
    """(path, samples, {global step: sample ids}): 960 samples whose features are their ids,
    and what a ``--local`` run trains at each step (tests/test_spot.py: ``local_order``).
    One run serves every test that compares a multi-worker run's order to it."""
    from tests.test_spot import local_order

    return local_order(tmp_path_factory.mktemp("ids"))


def write_h5(path: str, x: np.ndarray, y: np.ndarray, sample_count: int | None = None, x_key="X", y_key="Y") -> str:
    """Write given arrays as an HDF5 dataset file."""
    with h5py.File(path, "w") as f:
        f.create_dataset(x_key, data=x, chunks=(min(8, max(len(x), 1)), *x.shape[1:]) if len(x) else None)
        f.create_dataset(y_key, data=y)
        if sample_count is not None:
            f.attrs["sample_count"] = sample_count
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, cwd: str, timeout: float = 600, **env_vars: str) -> subprocess.CompletedProcess:
    """Run ``python -m raytrain ARGS`` (with ``env_vars`` added to its environment) and capture its output."""
    env = dict(os.environ, PYTHONPATH=ROOT, **env_vars)
    return subprocess.run(
        [sys.executable, "-m", "raytrain", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def write_image(path: str, pixels: np.ndarray) -> str:
    """Write an RGB (H, W, 3) or grayscale (H, W) uint8 image; the format follows the extension."""
    from PIL import Image

    Image.fromarray(pixels).save(path, format={"jpg": "JPEG"}.get(path.rsplit(".", 1)[-1].lower()))
    return path
