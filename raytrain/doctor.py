"""``raytrain doctor``: is this node, or every node of a cluster, ready to train?

A node's check (:func:`node_report`): the versions of Python, raytrain, Ray and each
framework; the GPUs each framework sees, with its CUDA and cuDNN versions, probed in a
child process per framework (an import that crashes cannot take the check down, and
TensorFlow and JAX do not share one process's GPUs); the CPUs as Ray counts them; the free
disk where the node cache would go; and where ``s3://`` and ``gs://`` credentials would
come from. Decision: credentials are looked for where the cloud SDKs look (environment,
profile files, a web-identity token), not tried against a bucket (the check knows none)
and not against the instance-metadata service (a network call that hangs off the cloud);
their values are never printed.

``--train`` also trains the built-in cnn for two short epochs on synthetic data with each
installed framework (``raytrain train --local``, on the GPUs the framework sees) and gives
its steps/s and data-wait share. ``--address`` runs the same check on every alive node of
a cluster as Ray tasks pinned to each node, and marks the nodes that differ from the head.

Problems (each one line; the exit code is 1 when there is one): no framework installed,
a framework that fails to import, a node whose Ray resources hold GPUs that no installed
framework sees, less than 1 GiB free for the node cache, a failed ``--train``, and on a
cluster a node whose versions or frameworks differ from the head's.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from importlib import metadata
from typing import Any, Optional

DISTRIBUTIONS = ("raytrain", "ray", "tensorflow", "tf-keras", "jax", "jaxlib", "keras", "h5py", "pyarrow", "mlflow")
COMPARED = ("python", "raytrain", "ray", "tensorflow", "tf-keras", "jax", "keras")  # must match the head's
FRAMEWORKS = {"tf_keras": ("tensorflow", "tf-keras"), "keras": ("jax", "keras")}
LABELS = {"tf_keras": "TensorFlow (tf_keras)", "keras": "JAX (Keras 3)"}
EXTRAS = {"tf_keras": "raytrain[tensorflow]", "keras": "raytrain[jax]"}
FREE_DISK_MIN_GIB = 1.0
PROBE_TIMEOUT_S = 300

# Run in a child process: sys.argv[1] is the framework; prints one JSON object.
PROBE = r"""
import json, os, sys
out = {}
try:
    if sys.argv[1] == "tf_keras":
        import tensorflow as tf
        import tf_keras  # noqa: F401
        out["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
        info = tf.sysconfig.get_build_info()
        out["cuda"], out["cudnn"] = info.get("cuda_version"), info.get("cudnn_version")
    else:
        os.environ.setdefault("KERAS_BACKEND", "jax")
        import jax
        import keras  # noqa: F401
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        out["gpus"] = [str(d) for d in gpus]
        if gpus:
            out["cuda"] = gpus[0].client.platform_version
except BaseException as e:
    out["error"] = (f"{type(e).__name__}: {e}".splitlines() or [""])[0][:300]
print(json.dumps(out))
"""


def _version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def probe(framework: str) -> dict[str, Any]:
    """What ``framework`` sees on this node (its GPUs, CUDA and cuDNN), or its import error."""
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, framework], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        lines = done.stdout.strip().splitlines()
        if lines:
            return json.loads(lines[-1])
        return {"error": f"the probe exited with {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1]}"}
    except subprocess.TimeoutExpired:
        return {"error": f"its import took over {PROBE_TIMEOUT_S} s"}


def _free_gib(path: str) -> float:
    """Free space of the filesystem that holds ``path`` (or would: its nearest existing folder)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free / 2**30


def credentials() -> dict[str, str]:
    """Where object-storage credentials would come from here, in words (never their values)."""
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        s3 = "environment (AWS_ACCESS_KEY_ID)"
    elif env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        s3 = "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)"
    else:
        profile = env.get("AWS_PROFILE", "default")
        files = [env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"), env.get("AWS_CONFIG_FILE", "~/.aws/config")]
        found = [f for f in files if _has_profile(os.path.expanduser(f), profile)]
        s3 = f"profile '{profile}' ({found[0]})" if found else "none found (an instance role is not checked)"
    adc = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    gcloud = os.path.expanduser("~/.config/gcloud/application_default_credentials.json")
    if adc:
        gs = "GOOGLE_APPLICATION_CREDENTIALS" if os.path.exists(adc) else \
            "GOOGLE_APPLICATION_CREDENTIALS names a file that does not exist"
    else:
        gs = "gcloud application-default login" if os.path.exists(gcloud) else \
            "none found (a VM's service account is not checked)"
    return {"s3": s3, "gs": gs}


def _has_profile(path: str, profile: str) -> bool:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return False
    return f"[{profile}]" in text or f"[profile {profile}]" in text


def node_report(cache_dir: Optional[str] = None, train: bool = False) -> dict[str, Any]:
    """This node's check (see the module docstring), as plain data."""
    from raytrain import compat
    from raytrain.modes import cpu_count

    versions = {"python": platform.python_version(), **{name: _version(name) for name in DISTRIBUTIONS}}
    frameworks = {name: probe(name) if all(versions[p] for p in packages) else None
                  for name, packages in FRAMEWORKS.items()}
    where = cache_dir or tempfile.gettempdir()
    report = {"host": socket.gethostname(), "versions": versions, "frameworks": frameworks, "cpus": cpu_count(),
              "gpus": compat.gpu_count(), "disk": {"path": where, "free_gib": round(_free_gib(where), 1)},
              "credentials": credentials()}
    if train:
        report["train"] = {name: _train(name, seen) for name, seen in frameworks.items()
                           if seen is not None and "error" not in seen}
    return report


def _train(framework: str, seen: dict[str, Any]) -> dict[str, Any]:
    """Two short epochs of the built-in cnn with ``framework``: steps/s and the data-wait share."""
    from raytrain.bench import train_run
    from raytrain.data.synth import make_hdf5
    from raytrain.run.rundir import read_metrics

    batch = 64
    with tempfile.TemporaryDirectory(prefix="raytrain-doctor-") as folder:
        path = os.path.join(folder, "doctor.h5")
        make_hdf5(path, 1024, (32, 32, 3), classes=4)
        gpus = ["--gpus-per-worker", str(len(seen["gpus"]))] if seen.get("gpus") else []
        try:
            run_dir = train_run(path, folder, 900, f"raytrain train --local --framework {framework}", "--local",
                                "--framework", framework, "--epochs", "2", "--batch-size", str(batch),
                                "--validation-ratio", "0", *gpus)
        except Exception as e:
            return {"error": " ".join(str(e).split())[:300]}
        last = read_metrics(run_dir)[-1]  # the first epoch compiles
    return {"steps_per_s": last["samples_per_s"] / batch, "data_wait_fraction": last["data_wait_fraction"],
            "devices": f"{len(seen['gpus'])} GPU(s)" if seen.get("gpus") else "CPU"}


def problems(report: dict[str, Any], ray_gpus: Optional[float] = None) -> list[str]:
    """What keeps this node from training, one line each (``ray_gpus``: the node's GPUs in
    Ray's resources, when a cluster says; else the GPUs Ray would detect here)."""
    out = []
    frameworks = report["frameworks"]
    if report["versions"]["ray"] is None:
        out.append("Ray is not installed: pip install raytrain")
    if all(v is None for v in frameworks.values()):
        out.append("no framework is installed: pip install 'raytrain[tensorflow]' (tf_keras) or 'raytrain[jax]' "
                   "(Keras 3 on JAX)")
    for name, seen in frameworks.items():
        if seen is not None and "error" in seen:
            out.append(f"{LABELS[name]} is installed but fails to import ({seen['error']}); reinstall it with "
                       f"pip install '{EXTRAS[name]}'")
    gpus = report["gpus"] if ray_gpus is None else ray_gpus
    working = {n: s for n, s in frameworks.items() if s is not None and "error" not in s}
    if gpus and working and not any(s.get("gpus") for s in working.values()):
        names = " nor ".join(LABELS[n] for n in working)
        out.append(f"Ray counts {gpus:g} GPU(s) here but neither {names} sees one; install a CUDA build "
                   "(pip install 'jax[cuda12]', or tensorflow[and-cuda]) matching the node's driver")
    if report["disk"]["free_gib"] < FREE_DISK_MIN_GIB:
        out.append(f"{report['disk']['free_gib']:.1f} GiB free at {report['disk']['path']}, under "
                   f"{FREE_DISK_MIN_GIB:g} GiB for the node cache; free some or pass --cache-dir on a larger disk")
    for name, result in report.get("train", {}).items():
        if "error" in result:
            out.append(f"a short training with {LABELS[name]} failed: {result['error']}")
    return out


def differences(report: dict[str, Any], head: dict[str, Any]) -> list[str]:
    """Where a node's versions or frameworks differ from the head's."""
    out = []
    for name in COMPARED:
        mine, theirs = report["versions"].get(name), head["versions"].get(name)
        if mine != theirs:
            out.append(f"{name} {mine or 'missing'} (the head has {theirs or 'none'})")
    return out


def cluster_reports(address: str, cache_dir: Optional[str] = None, train: bool = False,
                    timeout: float = 600) -> list[dict[str, Any]]:
    """:func:`node_report` on every alive node of the cluster at ``address``, the head first;
    each with its node id, IP and the GPUs in its Ray resources."""
    import logging

    from raytrain.cluster.jobs import use_token_auth

    use_token_auth()  # before Ray is imported
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        nodes.sort(key=lambda n: "node:__internal_head__" not in n["Resources"])
        check = ray.remote(num_cpus=0)(node_report)
        refs = [check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(cache_dir, train) for n in nodes]
        out = []
        for node, ref in zip(nodes, refs):
            try:
                report = ray.get(ref, timeout=timeout)
            except Exception as e:
                report = {"error": " ".join(str(e).split())[:300]}
            report.update(node_id=node["NodeID"], ip=node["NodeManagerAddress"],
                          ray_gpus=node["Resources"].get("GPU", 0.0),
                          head="node:__internal_head__" in node["Resources"])
            out.append(report)
        return out
    finally:
        ray.shutdown()
