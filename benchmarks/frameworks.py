"""tf_keras on TensorFlow against Keras 3 on JAX, one process, in-memory ``fit``, on this machine's CPUs.

    python benchmarks/frameworks.py            # prints a table, writes benchmarks/results/frameworks-<date>.json

Three models (a dense 1024-512-512-4 net on 256 features, one Conv2D(32) on 32x32x3, the
built-in cnn on 64x64x3), 2,048 random samples, batch 64, each framework in a fresh
process; the time of the third epoch (the first two compile and warm up). The JAX rows
also run with XLA flags that change its CPU code: ``--xla_cpu_use_thunk_runtime=false``
(XLA's older CPU runtime) and ``--xla_cpu_multi_thread_eigen=false`` (one thread per op).
A flag the installed XLA does not know ends its row with an error, which the table shows.
"""

import datetime
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = {"dense": (256,), "conv": (32, 32, 3), "cnn": (64, 64, 3)}
JAX_FLAGS = ["", "--xla_cpu_use_thunk_runtime=false", "--xla_cpu_multi_thread_eigen=false"]


def child(framework: str, kind: str) -> float:
    """In a fresh process: the third epoch's seconds of ``kind`` on ``framework``."""
    import numpy as np

    if framework == "keras":
        import keras
    else:
        import tf_keras as keras
    shape = MODELS[kind]
    layers = keras.layers
    if kind == "dense":
        body = [layers.Dense(1024, activation="relu"), layers.Dense(512, activation="relu"),
                layers.Dense(512, activation="relu")]
        model = keras.Sequential([keras.Input(shape), *body, layers.Dense(4, activation="softmax")])
    elif kind == "conv":
        model = keras.Sequential([keras.Input(shape), layers.Conv2D(32, 3, activation="relu"),
                                  layers.GlobalAveragePooling2D(), layers.Dense(4, activation="softmax")])
    else:
        from raytrain.models import cnn

        model = cnn(shape, 4, framework=framework)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x, y = rng.random((2048, *shape), dtype=np.float32), rng.integers(0, 4, 2048)
    ends = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ends.append(time.perf_counter())

    model.fit(x, y, batch_size=64, epochs=3, verbose=0, callbacks=[Timer()])
    return ends[2] - ends[1]


def measure(framework: str, kind: str, flags: str = "") -> dict:
    env = dict(os.environ, KERAS_BACKEND="jax", TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=ROOT, **({"XLA_FLAGS": flags} if flags else {}))
    proc = subprocess.run([sys.executable, __file__, "--child", framework, kind], capture_output=True, text=True,
                          env=env, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"framework": framework, "model": kind, "flags": flags,
                "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]}
    return {"framework": framework, "model": kind, "flags": flags, **json.loads(lines[-1])}


def main() -> None:
    rows = []
    for kind in MODELS:
        rows.append(measure("tf_keras", kind))
        for flags in JAX_FLAGS:
            rows.append(measure("keras", kind, flags))
        print(f"measured {kind}", file=sys.stderr, flush=True)
    import jax
    import tensorflow as tf

    result = {"date": datetime.date.today().isoformat(), "machine": {"cpus": os.cpu_count(),
              "python": platform.python_version()}, "jax": jax.__version__, "tensorflow": tf.__version__, "rows": rows}
    out = os.path.join(HERE, "results", f"frameworks-{result['date']}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(render(result))
    print(f"\nresults: {out}")


def render(result: dict) -> str:
    lines = [f"frameworks, {result['date']}, {result['machine']['cpus']} cores: jax {result['jax']} vs TensorFlow "
             f"{result['tensorflow']}, in-memory fit, batch 64, third epoch of 2,048 samples",
             "", "| model | framework | XLA_FLAGS | epoch s |", "|---|---|---|---:|"]
    for row in result["rows"]:
        value = f"{row['epoch_s']:.2f}" if "epoch_s" in row else f"error: {row['error']}"
        lines.append(f"| {row['model']} | {row['framework']} | `{row['flags'] or '(none)'}` | {value} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps({"epoch_s": child(sys.argv[2], sys.argv[3])}))
    else:
        main()
