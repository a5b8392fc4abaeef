"""``raytrain doctor`` on this machine: real probes of the installed frameworks in child
processes. (Every node of a cluster: tests/test_clusters.py's rehearsal.)"""

import os
import subprocess
import sys

import pytest

from tests.common import ROOT, run_cli

pytestmark = pytest.mark.slow


def test_this_node_is_ready_with_both_frameworks_on_cpus(tmp_path):
    proc = run_cli("doctor", "--cache-dir", str(tmp_path / "cache"), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "TensorFlow (tf_keras)  tensorflow 2.21" in out and "JAX (Keras 3)" in out
    assert out.count("no GPU seen (CPU only)") == 2
    assert "none: training runs on CPUs" in out
    assert f"GiB at {tmp_path / 'cache'} (the node cache)" in out
    assert out.rstrip().endswith("raytrain doctor: ready to train")


def test_a_framework_that_fails_to_import_is_a_problem(tmp_path):
    fake = tmp_path / "shadow" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('libcudart.so.12: cannot open shared object file')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = f"{tmp_path / 'shadow'}:{ROOT}"  # a tensorflow that shadows the installed one
    proc = subprocess.run([sys.executable, "-m", "raytrain", "doctor"], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    problems = [line for line in proc.stdout.splitlines() if line.startswith("raytrain doctor: problem:")]
    assert problems == ["raytrain doctor: problem: TensorFlow (tf_keras) is installed but fails to import (ImportError: "
                        "libcudart.so.12: cannot open shared object file); reinstall it with pip install "
                        "'raytrain[tensorflow]'"]
    assert "ready to train" not in proc.stdout


def test_without_tensorflow_the_jax_framework_trains(jax_python, tmp_path):
    proc = run_cli("doctor", "--train", cwd=str(tmp_path), python=jax_python)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "TensorFlow (tf_keras)  not installed" in out
    assert "mlflow" in out and "not installed (pip install 'raytrain[mlflow]'" in out
    (line,) = [line for line in out.splitlines() if "train JAX (Keras 3)" in line]
    assert "steps/s on CPU, data wait" in line and float(line.split()[4]) > 0
