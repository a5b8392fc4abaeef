"""Cluster files: Ray's own cluster-launcher YAML (``clusters/*.yaml``), checked against
Ray's schema (``ray/autoscaler/ray-schema.json``) before anything starts."""

from __future__ import annotations

import json
import os
from typing import Any

import jsonschema

from raytrain.cluster.jobs import use_token_auth
from raytrain.config import read_yaml
from raytrain.errors import RaytrainError


def schema() -> dict[str, Any]:
    use_token_auth()  # before Ray is imported: it reads RAY_AUTH_MODE once
    import ray  # only when a cluster file is read

    with open(os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")) as f:
        return json.load(f)


def load_cluster(path: str) -> dict[str, Any]:
    """A cluster file, validated against Ray's schema.

    Raises:
        RaytrainError: The file is missing, not YAML, or breaks the schema (the first
            problem, with where it is).
    """
    config = read_yaml(path, "cluster file", "see clusters/ for examples")
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
