"""Ray Train's backends of raytrain's two frameworks, with ports no other connection can take.

:class:`RaytrainTensorflowConfig` sets ``TF_CONFIG`` for TensorFlow's collective;
:class:`RaytrainJaxConfig` gives every worker the JAX coordinator's address (rank 0's
node), the process count and its id, which :mod:`raytrain.frameworks.keras_jax` hands to
``keras.distribution.initialize`` (Ray's own ``JaxTrainer`` sets JAX up only for TPUs and
GPUs). Both draw their ports as follows.

Ray Train's own backend (``ray.train.tensorflow.config``) gives each worker a port by
binding port 0 and closing it again, then writes ``TF_CONFIG``; TensorFlow binds that
port only later, when the loop creates ``MultiWorkerMirroredStrategy``, seconds after.
Port 0 comes from the kernel's ephemeral range (``net.ipv4.ip_local_port_range``,
32768-60999 on Linux), the range every outgoing TCP connection on the node also draws
from, and Ray's processes open many. When one of them takes the port in that window the
worker fails with ``UnknownError: Could not start gRPC server`` (seen once in ~75
two-worker starts in this project's suite). TensorFlow's gRPC server does not set
``SO_REUSEPORT``, so the port cannot be held open for it either.

These backends are Ray's, except that each worker draws its port at random from below
the ephemeral range and above Ray's worker ports (10002-19999 by default), where only a
server asking for that very number can take it, and two workers of one node never get
the same one.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
from dataclasses import dataclass
from typing import Callable

from ray.train.backend import Backend, BackendConfig

from raytrain.env import LEGACY_KERAS_ENV

LOWEST_PORT = 20000  # above Ray's worker ports (ray start --max-worker-port, 19999 by default)
TRIES = 200


def ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (what binding port 0 returns)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152 if sys.platform == "darwin" else 32768  # IANA's range; Linux's default


def free_port(family: int = socket.AF_INET, taken: frozenset[int] = frozenset()) -> int:
    """A port no socket on this node is bound to, below the ephemeral range where it can
    be; falls back to the kernel's choice (port 0) when that range is too narrow or full."""
    high = ephemeral_start()
    for _ in range(TRIES if high - LOWEST_PORT >= 1000 else 0):
        port = random.randrange(LOWEST_PORT, high)
        if port not in taken and _bindable(family, port):
            return port
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _bindable(family: int, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _address(taken: frozenset[int] = frozenset()) -> tuple[str, int]:
    import ray

    ip = ray.util.get_node_ip_address()
    return ip, free_port(socket.AF_INET6 if ":" in ip else socket.AF_INET, taken)


def _set_tf_config(addresses: list[str], index: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})
    os.environ.update(LEGACY_KERAS_ENV)  # as Ray Train's own backend does


def assign(picked: list[tuple[str, int]], redraw: Callable[[int, frozenset[int]], tuple[str, int]]) -> list[str]:
    """The workers' ``host:port`` addresses from each one's draw; a worker that drew a
    port an earlier worker of its node holds draws again (``redraw(rank, taken)``)."""
    picked = list(picked)
    for rank in range(len(picked)):
        while picked[rank] in picked[:rank]:
            taken = frozenset(port for ip, port in picked[:rank] if ip == picked[rank][0])
            picked[rank] = redraw(rank, taken)
    return [host_port(ip, port) for ip, port in picked]


def host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class _Backend(Backend):
    def on_start(self, worker_group, backend_config):  # noqa: ANN001 - Ray Train's Backend interface
        import ray

        addresses = assign(worker_group.execute(_address),
                           lambda rank, taken: worker_group.execute_single(rank, _address, taken))
        ray.get([worker_group.execute_single_async(rank, _set_tf_config, addresses, rank)
                 for rank in range(len(addresses))])


@dataclass
class RaytrainTensorflowConfig(BackendConfig):
    """``TensorflowTrainer(tensorflow_config=...)``: Ray Train's TensorFlow backend with
    the port choice above.

    Not a subclass of Ray's ``TensorflowConfig``: its package imports TensorFlow, and the
    Train controller, which unpickles this config, would spend 3-4 s on that import before
    it starts the workers. So Ray's dashboard shows the run's framework as unspecified."""

    @property
    def backend_cls(self) -> type:
        return _Backend


def _set_jax_env(coordinator: str, processes: int, rank: int) -> None:
    from raytrain.frameworks.keras_jax import COORDINATOR_ENV, PROCESS_ID_ENV, PROCESSES_ENV

    os.environ.update({COORDINATOR_ENV: coordinator, PROCESSES_ENV: str(processes), PROCESS_ID_ENV: str(rank)})


class _JaxBackend(Backend):
    def on_start(self, worker_group, backend_config):  # noqa: ANN001 - Ray Train's Backend interface
        import ray

        processes = len(worker_group.execute(os.getpid))
        coordinator = host_port(*worker_group.execute_single(0, _address))  # rank 0's process serves it
        ray.get([worker_group.execute_single_async(rank, _set_jax_env, coordinator, processes, rank)
                 for rank in range(processes)])


@dataclass
class RaytrainJaxConfig(BackendConfig):
    """Ray Train's backend config for Keras 3 on JAX (see the module docstring)."""

    @property
    def backend_cls(self) -> type:
        return _JaxBackend
