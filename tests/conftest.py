"""Fixtures: tiny synthetic HDF5 files, the one --local order, and a guard that no Ray process outlives the tests.
Shared helpers live in tests/common.py."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")  # as raytrain sets it (raytrain.env): before anything imports keras

from raytrain.data.synth import make_hdf5
from tests.common import ray_pids

RAY_BEFORE = pytest.StashKey[set]()  # the Ray processes running when the session started


def _controller(config) -> bool:
    """Whether this process runs the whole session: pytest alone, or pytest-xdist's controller
    (its workers are not: a Ray process one of them starts is not another's leak)."""
    return not hasattr(config, "workerinput")


def pytest_collection_modifyitems(config, items):
    """The longest tests first, for ``make test``'s two pytest-xdist processes (``--dist load
    --maxschedchunk 1`` hands tests out two at first, then one at a time): the short ones fill
    the gaps at the end. The two simulated-cluster tests lead, so that the first process runs
    both, one after the other."""
    def cost(item) -> int:
        marks = {m.name for m in item.iter_markers()}
        return next((rank for rank, mark in enumerate(("simulated_cluster", "ray", "slow")) if mark in marks), 3)

    items.sort(key=cost)


@pytest.fixture(autouse=True)
def one_simulated_cluster_at_a_time(request):
    """A simulated cluster has fixed ports (6379, 8265): its tests wait for each other, in any
    pytest process on this machine."""
    if not request.node.get_closest_marker("simulated_cluster"):
        yield
        return
    with open(os.path.join(tempfile.gettempdir(), "raytrain-tests-simulated-cluster.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(autouse=True)
def ray_auth_mode_as_it_was():
    """Reading a cluster file in this process sets ``RAY_AUTH_MODE=token`` when a token is at
    hand (``raytrain.cluster.jobs.use_token_auth``, for the job client). Left behind, a later
    test's local ``ray.init`` in this process starts its GCS with tokens while the driver,
    having read the mode when Ray was imported, sends none (``InvalidAuthToken``)."""
    before = os.environ.get("RAY_AUTH_MODE")
    yield
    if before is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = before


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


@pytest.fixture
def ray_local():
    """A private local Ray in this process, always shut down. Its dashboard's address is given
    to its processes, as raytrain.modes.init_ray does, so Ray Train's placement-group cleaner
    does not ask another test's Ray about this one's controller."""
    import ray

    from raytrain.backend import free_port

    port = free_port()
    ray.init(address="local", num_cpus=2, dashboard_host="127.0.0.1", dashboard_port=port,
             runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def other_ray():
    """Another Ray on this machine for the length of a test (a head as ``ray start`` makes
    one, on free ports; its agents' default ports would collide with another head's). Ended
    by PID: its processes are found by its temporary folder."""
    import shutil
    import subprocess
    import tempfile

    from raytrain.cluster.launch import free_agent_ports
    from raytrain.cluster.processes import cluster_pids, end
    from tests.common import free_port

    temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # Ray's socket paths must stay short
    ports = [f"--port={free_port()}", f"--dashboard-port={free_port()}", *free_agent_ports()]
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    try:
        subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
                        "--dashboard-host=127.0.0.1", *ports, f"--temp-dir={temp}", "--disable-usage-stats"],
                       env=dict(os.environ, RAY_AUTH_MODE="disabled"), check=True, capture_output=True, timeout=120)
        yield temp
    finally:
        end(cluster_pids(temp), 5)
        shutil.rmtree(temp, ignore_errors=True)


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




@pytest.fixture(scope="session")
def jax_python(tmp_path_factory):
    """The Python of a fresh environment made as a user without TensorFlow makes it:
    ``pip install 'raytrain[jax]'`` (this checkout), with uv's installer, which resolves the
    same requirements in seconds where pip took ~90 s. Built once per session."""
    from uv import find_uv_bin

    from tests.common import ROOT

    env = tmp_path_factory.mktemp("jax-env")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = str(env / "bin" / "python")
    # Compiled now: with PYTHONDONTWRITEBYTECODE set (as on this machine) every process would
    # otherwise compile JAX, Keras and Ray from source at each import.
    subprocess.run([find_uv_bin(), "pip", "install", "--quiet", "--compile-bytecode", "--python", python,
                    f"{ROOT}[jax]"], check=True, timeout=900)
    assert subprocess.run([python, "-c", "import tensorflow"], capture_output=True).returncode != 0
    return python
