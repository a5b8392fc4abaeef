"""Fixtures: tiny synthetic HDF5 files, the one --local order, and a guard that no Ray process outlives the tests.
Shared helpers live in tests/common.py."""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

import pytest

from raytrain.data.synth import make_hdf5
from tests.common import ray_pids

RAY_BEFORE = pytest.StashKey[set]()  # the Ray processes running when the session started


def _controller(config) -> bool:
    """Whether this process runs the whole session: pytest alone, or pytest-xdist's controller
    (its workers are not: a Ray process one of them starts is not another's leak)."""
    return not hasattr(config, "workerinput")


def pytest_sessionstart(session):
    if _controller(session.config):
        session.config.stash[RAY_BEFORE] = ray_pids()


def pytest_sessionfinish(session, exitstatus):
    """Fail the session if a Ray process started during the tests is still running; end
    what the tests leaked, by PID."""
    if not _controller(session.config) or RAY_BEFORE not in session.config.stash:
        return
    before = session.config.stash[RAY_BEFORE]
    deadline = time.time() + 20
    while (left := ray_pids() - before) and time.time() < deadline:
        time.sleep(0.5)
    for pid in left:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    if left:
        print(f"\nFAILED: Ray processes outlived the tests: {sorted(left)}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def ray_head():
    """A Ray head on this machine (2 CPUs, its own temporary folder and ports), started once
    per test process and shared through ``--address`` by the tests whose point is not
    starting or stopping Ray: each run then joins it instead of starting its own. Ended by
    PID (its processes are found by its temporary folder), never by name."""
    import shutil
    import subprocess
    import tempfile

    from raytrain.cluster.processes import cluster_pids, end
    from tests.common import ROOT, free_port

    temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    # `ray start` gives its agents and client server fixed default ports (52365, 10001): a
    # second head on the machine (the other test process's, the simulated cluster's) would
    # lose its agents to the first, and with them every worker that has a runtime env.
    ports = [f"--{name}={free_port()}" for name in (
        "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "ray-client-server-port")]
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    env = dict(os.environ, PYTHONPATH=ROOT, RAY_AUTH_MODE="disabled")
    subprocess.run([ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                    "--num-gpus=0", "--dashboard-host=127.0.0.1", *ports, f"--temp-dir={temp}",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        end(cluster_pids(temp), 5)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def on_ray_head(ray_head) -> tuple[str, ...]:
    """Flags that run a training on the shared head: ``--address`` (which raytrain only ever
    joins when told) and no restarts unless the test asks for them (after these flags)."""
    return ("--address", ray_head, "--max-failures", "0")


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
    from tests.common import local_order

    return local_order(tmp_path_factory.mktemp("ids"))


