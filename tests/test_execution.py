"""Metrics are read once per execution (raytrain.execution): same logs, fewer collectives.

Each case runs in fresh processes: TensorFlow's devices (two logical CPUs) and a
multi-worker strategy (TF_CONFIG) must be set before TensorFlow starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.common import ROOT, free_port


def child(mode: str, config: dict) -> dict:
    """Fit the same small cnn twice, raytrain's way and tf_keras's own, from the same
    weights on the same batches; return both histories and the ops in each loop body."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if mode == "mwms":
        os.environ["TF_CONFIG"] = json.dumps(config)
    import numpy as np
    import tensorflow as tf

    from raytrain.config import ModelSection, TrainingSection
    from raytrain.models import build_model

    tf.config.threading.set_intra_op_parallelism_threads(1)
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 3), dtype=np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int64)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat().with_options(options)
    out: dict = {}
    weights = None
    for name in ("raytrain", "stock"):
        with strategy.scope():  # "stock": tf_keras's own loop, as before raytrain.execution
            model = build_model(ModelSection(), TrainingSection(), (8, 8, 3), 2, False, steps_per_execution=2,
                                read_metrics_once=name == "raytrain")
        if weights is not None:
            model.set_weights(weights)
        weights = model.get_weights()
        history = model.fit(data, steps_per_epoch=4, epochs=2, verbose=0,
                            validation_data=data, validation_steps=4).history
        ops: dict[str, int] = {}  # in the loop body of the (first) traced train function
        function = model.train_function._list_all_concrete_functions()[0]
        for f in function.graph.as_graph_def().library.function:
            if f.signature.name.startswith("while_body"):
                for node in f.node_def:
                    ops[node.op] = ops.get(node.op, 0) + 1
        out[name] = {"history": history, "loop_ops": ops}
    return out


def _run(mode: str, configs: list[dict]) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, __file__, mode, json.dumps(c)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for c in configs]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _assert_same_logs(result: dict) -> None:
    ours, stock = result["raytrain"]["history"], result["stock"]["history"]
    assert sorted(ours) == sorted(stock) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    for key in stock:
        assert ours[key] == pytest.approx(stock[key], rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_two_replicas_log_the_same_metrics_without_reading_them_each_step():
    """Two replicas in one process: raytrain's loop logs what tf_keras's logs (the
    metrics of both replicas, read after the last step) and its loop body holds no
    metric read: no sum of the replicas' metric variables (AddN) and fewer divisions
    (each metric's total by its count, per replica)."""
    (result,) = _run("mirrored", [{}])
    _assert_same_logs(result)
    ours, stock = result["raytrain"]["loop_ops"], result["stock"]["loop_ops"]
    assert ours.get("AddN", 0) == 0 < stock["AddN"]
    assert ours["DivNoNan"] < stock["DivNoNan"]


@pytest.mark.slow
def test_two_workers_all_reduce_once_per_step():
    """Two TensorFlow workers (MultiWorkerMirroredStrategy over 127.0.0.1): each step
    all-reduces the gradients only, where tf_keras's step all-reduces each metric's
    variables too, and both workers log the same all-reduced metrics as tf_keras does."""
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    results = _run("mwms", [{"cluster": cluster, "task": {"type": "worker", "index": i}} for i in range(2)])
    for result in results:
        _assert_same_logs(result)
        ours, stock = result["raytrain"]["loop_ops"], result["stock"]["loop_ops"]
        assert ours["CollectiveReduceV2"] == 1
        assert stock["CollectiveReduceV2"] > 1
    assert results[0]["raytrain"]["history"] == results[1]["raytrain"]["history"]


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], json.loads(sys.argv[2]))))
