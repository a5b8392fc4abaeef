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
    from tests.common import local_order

    return local_order(tmp_path_factory.mktemp("ids"))


