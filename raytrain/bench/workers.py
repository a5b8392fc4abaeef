"""``raytrain bench --workers N``: N Ray Train workers against one process and against Ray Train's TF recipe.

On one HDF5 file (yours, or a synthetic 20,000 x 64x64x3 uint8 one), the built-in
``cnn``, the same global batch everywhere, each in a fresh process:

- **in memory**: a plain ``tf_keras`` ``fit`` of the whole file as float32 arrays in
  memory, one process (the floor ``--local`` is held to);
- **raytrain, local**: ``raytrain train --local`` (one process, the whole machine);
- **raytrain, N workers**: ``raytrain train --num-workers N``;
- **Ray's recipe, as documented**: ``TensorflowTrainer`` with the data as a Ray Dataset
  (``ray.data.from_numpy``), each worker calling ``fit`` once per epoch on
  ``get_dataset_shard("train").to_tf(..., batch_size=per-worker batch)``, as Ray Train's
  TensorFlow guide does it. Under ``MultiWorkerMirroredStrategy`` ``fit`` takes that
  batch as the global one and splits it over the replicas: every replica trains on
  ``batch / N**2`` of the intended ``batch / N``, with N times the steps;
- **Ray's recipe, corrected**: the same with ``to_tf(batch_size=global batch)``, so each
  replica gets the intended per-worker batch.

The epoch time compared is the **marginal** one, in every row: the median gap between
the ends of consecutive epochs (the first epoch, with graph tracing and start-up, is left
out), so checkpoints, reports, validation set-up, the in-memory fit's new iterator each
epoch and the recipe's per-``fit`` pause all count. Each row splits it in two: **the
steps** (median over the epochs after the first of the time from ``fit``'s epoch begin to
the last step's end, as raytrain's ``samples_per_s`` counts it; shown as the samples an
epoch trains on per second of it) and **between epochs** (the marginal epoch minus the
steps: what the epoch boundary costs).

**Frameworks.** ``--framework keras`` measures Keras 3 on JAX instead: the in-memory row
is a plain Keras 3 ``fit`` and raytrain's rows train with ``--framework keras``; Ray's
recipe rows (TensorFlow) are left out. The other framework's plain in-memory fit is a row
too where it is installed, so each framework is shown against the other on this model.

**Rounds.** This machine's epochs swing by 10-40% from one run to the next, more than
the bars' margins, so the in-memory, ``--local`` and N-worker rows run ``repeats`` times
(default 3), interleaved (in memory, local, N workers, then again). A row shows the
median of its rounds; the ratios the bars judge are medians over the rounds of the
ratio within a round, whose rows ran minutes apart. The recipe rows (minutes each) and
the fixed cost run once.

The in-memory and recipe rows compile the cnn as raytrain does but keep tf_keras's own
training loop (``build_model(read_metrics_once=False)``; see :mod:`raytrain.execution`).
Validation is off (``--validation-ratio 0``) in every row; Ray's recipe feeds uint8
features (its guide has no scaling step), raytrain float32 in [0, 1]. The recipe's
Ray runs with N + 1 logical CPUs: its Ray Data tasks need a CPU besides the N workers
(with N they wait forever, see the project notes), which changes nothing physical.

**Per-epoch fixed cost**: on a small dataset (1,796 samples of 8x8x1, 20 % held out for
validation: 1,437 to train, batch 32, 20 epochs)
with N workers and locally, the marginal epoch minus its training steps' own time
(``metrics.jsonl``: samples / samples_per_s): what every epoch pays besides its steps.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import time
from typing import Any, Optional

import h5py

from raytrain.bench import bars_table, child, judge, machine, table, train_run, workspace
from raytrain.data.synth import make_hdf5
from raytrain.errors import RaytrainError
from raytrain.run.rundir import read_dataset, read_metrics

SMALL = {"samples": 1796, "shape": (8, 8, 1), "classes": 10, "epochs": 20, "batch": 32}
BARS = [
    ("workers_vs_local", "N workers >= 0.8x the --local rate", lambda v: v >= 0.8),
    ("raytrain_vs_recipe", "raytrain N workers >= 2x Ray's corrected recipe", lambda v: v >= 2.0),
    ("fixed_cost_s", "per-epoch fixed cost with N workers <= 0.5 s", lambda v: v <= 0.5),
    ("local_vs_memory", "--local marginal epoch <= 1.0x a plain in-memory tf_keras fit", lambda v: v <= 1.0),
]

# Keras 3 on JAX (bench --workers N --framework keras): Ray has no recipe for it to compare with.
KERAS_BARS = [
    ("workers_vs_local", "N Keras 3 workers >= 0.8x its --local rate", lambda v: v >= 0.8),
    ("fixed_cost_s", "per-epoch fixed cost with N workers <= 0.5 s", lambda v: v <= 0.5),
    ("local_vs_memory", "--local marginal epoch <= 1.1x a plain in-memory Keras 3 fit", lambda v: v <= 1.1),
]


def _marginal(times: list[float]) -> float:
    """The median gap between consecutive epoch ends, the first epoch left out."""
    gaps = [b - a for a, b in zip(times[:-1], times[1:])]
    return statistics.median(gaps)


def _row(ends: list[float], steps_s: list[float], trained: int, steps: int, replica_batch: int) -> dict[str, Any]:
    """A row from its epochs' ends and each epoch's steps time (the first epoch left out)."""
    return {"marginal_epoch_s": _marginal(ends), "steps_s": statistics.median(steps_s[1:]), "trained": trained,
            "steps_per_epoch": steps, "replica_batch": replica_batch}


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from its rounds: the median of each timing, the rest as in the first."""
    timings = ("marginal_epoch_s", "steps_s")
    return dict(runs[0], **{key: statistics.median(run[key] for run in runs) for key in timings})


def _train(path: str, workers: int, batch: int, epochs: int, validation: float, workdir: str,
           timeout: float, framework: str = "tf_keras") -> tuple[list[dict[str, Any]], int]:
    """``raytrain train`` on the file; returns its ``metrics.jsonl`` records and the
    samples an epoch trains on (its steps x the global batch)."""
    run_dir = train_run(path, workdir, timeout, f"raytrain train --num-workers {workers}", "--epochs", str(epochs),
                        "--batch-size", str(batch), "--validation-ratio", str(validation),
                        "--num-workers", str(workers), "--framework", framework)
    plan = read_dataset(run_dir)["plan"]
    return read_metrics(run_dir), plan["train_steps"] * plan["worker_batch"] * plan["world_size"]


def recipe_child(args: dict[str, Any]) -> dict[str, Any]:
    """Ray Train's TensorFlow recipe (see the module docstring), in this fresh process."""
    import ray
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    with h5py.File(args["path"], "r") as f:
        x, y = f["X"][:], f["Y"][:]
    workers, batch = args["workers"], args["to_tf_batch"]
    os.makedirs(args["storage"], exist_ok=True)
    log_path = os.path.join(args["storage"], f"epochs-{batch}-{time.time_ns()}.jsonl")
    from raytrain.backend import free_port
    from raytrain.env import API_SERVER_ENV

    # Ray Train's placement-group cleaner needs a dashboard of its own Ray (raytrain.modes.init_ray).
    port = free_port()
    ray.init(address="local", num_cpus=workers + 1, dashboard_host="127.0.0.1", dashboard_port=port,
             log_to_driver=False, runtime_env={"env_vars": {API_SERVER_ENV: f"http://127.0.0.1:{port}"}})
    try:
        dataset = ray.data.from_numpy(x).zip(ray.data.from_numpy(y)).rename_columns({"data": "x", "data_1": "y"})
        dataset = dataset.materialize()
        trainer = TensorflowTrainer(
            _recipe_loop, train_loop_config={"epochs": args["epochs"], "batch": batch, "shape": list(x.shape[1:]),
                                     "classes": int(y.max()) + 1, "log": log_path},
            scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name="recipe", storage_path=args["storage"]),
            datasets={"train": dataset},
        )
        trainer.fit()
    finally:
        ray.shutdown()
    with open(log_path) as log:
        history = [json.loads(line) for line in log]
    ends = [h["time"] for h in history]
    return {"epoch_ends": ends, "steps_per_epoch": history[-1]["steps"], "marginal_epoch_s": _marginal(ends),
            "epochs_steps_s": [h["steps_s"] for h in history],
            "steps_s": statistics.median(h["steps_s"] for h in history[1:])}


def _recipe_loop(config: dict[str, Any]) -> None:
    """The recipe's worker loop: one ``fit`` per epoch on ``to_tf`` of the worker's shard;
    rank 0 logs each epoch's end and its steps' time."""
    import ray.train
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import tf_keras

    from raytrain.config import ModelSection, TrainingSection
    from raytrain.models import build_model

    with strategy.scope():
        model = build_model(ModelSection(), TrainingSection(), config["shape"], config["classes"], False,
                            read_metrics_once=False)  # the built-in cnn, tf_keras's own loop
    shard = ray.train.get_dataset_shard("train")
    steps: dict[str, Any] = {}

    class Steps(tf_keras.callbacks.Callback):
        """The epoch's steps, timed as raytrain times its own: from ``fit``'s epoch
        begin to the last step's end."""

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            steps.update(count=0, begin=time.perf_counter())

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            steps.update(count=steps["count"] + 1, end=time.perf_counter())

    for epoch in range(config["epochs"]):
        data = shard.to_tf(feature_columns="x", label_columns="y", batch_size=config["batch"])
        model.fit(data, verbose=0, callbacks=[Steps()])
        if ray.train.get_context().get_world_rank() == 0:
            with open(config["log"], "a") as log:
                log.write(json.dumps({"epoch": epoch + 1, "time": time.time(), "steps": steps["count"],
                                      "steps_s": steps["end"] - steps["begin"]}) + "\n")
        ray.train.report({"epoch": epoch + 1})


def _file(path: Optional[str], samples: int, shape: tuple[int, ...], workdir: str, progress: Any) -> tuple[str, int]:
    if path is None:
        path = os.path.join(workdir, "workers.h5")
        progress(f"writing {samples:,} synthetic samples of {shape} to {path}")
        make_hdf5(path, samples, shape, classes=4)
    with h5py.File(path, "r") as f:
        if "X" not in f or "Y" not in f:
            raise RaytrainError(f"bench --workers reads datasets X and Y; {path} has {sorted(f)}")
        return path, len(f["X"])


def run_bench(path: Optional[str] = None, samples: int = 20_000, shape: tuple[int, ...] = (64, 64, 3),
              workers: int = 2, batch: int = 64, epochs: int = 4, repeats: int = 3, workdir: Optional[str] = None,
              timeout: float = 3600, progress: Any = print, framework: str = "tf_keras") -> dict[str, Any]:
    """Run the measurements (the first rows ``repeats`` times, interleaved) and return the
    results (see the module docstring). ``framework``: the one raytrain and the in-memory
    row train with; the other framework's in-memory fit is a row too where it is installed,
    and Ray's recipe rows (TensorFlow) run for tf_keras only."""
    from raytrain import frameworks

    other = frameworks.KERAS if framework == frameworks.TF_KERAS else frameworks.TF_KERAS
    with workspace(workdir) as workdir:
        path, n = _file(path, samples, shape, workdir, progress)
        rounds: list[dict[str, dict[str, Any]]] = []
        for r in range(repeats):
            one: dict[str, dict[str, Any]] = {}
            for key, fw in (("in_memory", framework), ("in_memory_other", other)):
                if key == "in_memory_other" and not frameworks.installed(other):
                    continue
                progress(f"round {r + 1}/{repeats}: in-memory {fw} fit ({epochs} epochs)")
                got = child("in_memory", {"path": path, "x_key": "X", "y_key": "Y", "batch": batch, "epochs": epochs,
                                          "framework": fw}, timeout)
                one[key] = _row(got["epoch_ends"], got["epoch_times_s"], n, got["steps"], batch)
            for key, count in (("local", 0), ("workers", workers)):
                progress(f"round {r + 1}/{repeats}: raytrain train --num-workers {count} ({epochs} epochs)")
                records, trained = _train(path, count, batch, epochs, 0, workdir, timeout, framework)
                one[key] = _row([e["time"] for e in records], [trained / e["samples_per_s"] for e in records], trained,
                                trained // batch, batch // max(count, 1))
            rounds.append(one)
        rows = {key: _median_row([one[key] for one in rounds]) for key in rounds[0]}
        recipes = (("recipe_documented", batch // workers), ("recipe_corrected", batch))
        for key, to_tf_batch in recipes if framework == frameworks.TF_KERAS else ():
            progress(f"Ray Train's TF recipe, to_tf(batch_size={to_tf_batch}) ({epochs} epochs)")
            got = child("recipe", {"path": path, "workers": workers, "to_tf_batch": to_tf_batch, "epochs": epochs,
                                   "storage": os.path.join(workdir, "ray")}, timeout)
            rows[key] = dict(got, replica_batch=to_tf_batch // workers,
                             trained=got["steps_per_epoch"] * to_tf_batch)
        small_path = os.path.join(workdir, "small.h5")
        make_hdf5(small_path, SMALL["samples"], SMALL["shape"], classes=SMALL["classes"])
        fixed = {}
        for key, count in (("local", 0), ("workers", workers)):
            progress(f"fixed cost: raytrain train --num-workers {count}, {SMALL['epochs']} short epochs")
            records, trained = _train(small_path, count, SMALL["batch"], SMALL["epochs"], 0.2, workdir, timeout,
                                      framework)
            steps_s = statistics.median(trained / r["samples_per_s"] for r in records[1:])
            marginal = _marginal([r["time"] for r in records])
            fixed[key] = {"marginal_epoch_s": marginal, "steps_s": steps_s, "fixed_s": marginal - steps_s}
    for row in rows.values():
        row["samples_per_s"] = n / row["marginal_epoch_s"]
        row["steps_samples_per_s"] = row["trained"] / row["steps_s"]
        row["between_epochs_s"] = row["marginal_epoch_s"] - row["steps_s"]

    def paired(a: str, b: str) -> float:
        """The median over the rounds of row a's marginal epoch over row b's, run minutes apart."""
        return statistics.median(one[a]["marginal_epoch_s"] / one[b]["marginal_epoch_s"] for one in rounds)

    ratios = {
        "workers_vs_local": paired("local", "workers"),
        "fixed_cost_s": fixed["workers"]["fixed_s"],
        "local_vs_memory": paired("local", "in_memory"),
    }
    if "recipe_corrected" in rows:
        ratios["raytrain_vs_recipe"] = rows["workers"]["samples_per_s"] / rows["recipe_corrected"]["samples_per_s"]
        ratios["raytrain_vs_documented"] = rows["workers"]["samples_per_s"] / rows["recipe_documented"]["samples_per_s"]
    if "in_memory_other" in rows:
        ratios["memory_vs_other"] = paired("in_memory", "in_memory_other")
    bars = BARS if framework == frameworks.TF_KERAS else KERAS_BARS
    return {"date": datetime.date.today().isoformat(), "machine": machine(), "framework": framework,
            "samples": n, "shape": list(shape),
            "workers": workers, "batch": batch, "epochs": epochs, "repeats": repeats, "rows": rows,
            "rounds": [{key: row["marginal_epoch_s"] for key, row in one.items()} for one in rounds],
            "fixed_cost": fixed,
            "small": dict(SMALL, shape=list(SMALL["shape"])), "ratios": ratios,
            "bars": judge([b for b in bars if b[0] in ratios], ratios)}


def render(result: dict[str, Any]) -> str:
    """The results as Markdown tables (as the docs show them: docs/benchmarks.md)."""
    r, f, n, w = result["rows"], result["fixed_cost"], result["workers"], result["batch"]
    framework = result.get("framework", "tf_keras")
    label = {"tf_keras": "`tf_keras`", "keras": "Keras 3 (JAX)"}
    other = "keras" if framework == "tf_keras" else "tf_keras"
    names = [
        ("in_memory", f"plain {label[framework]} fit of float32 arrays in memory (one process)"),
        ("in_memory_other", f"plain {label[other]} fit of float32 arrays in memory (one process)"),
        ("local", "raytrain `--local` (one process, whole machine)"),
        ("workers", f"raytrain `--num-workers {n}`"),
        ("recipe_documented", f"Ray's recipe as documented: `to_tf(batch_size={w // n})` per worker"),
        ("recipe_corrected", f"Ray's recipe corrected: `to_tf(batch_size={w})`"),
    ]
    names = [(k, name) for k, name in names if k in r]
    rows = [[name, f"{r[k]['marginal_epoch_s']:.2f}", f"{r[k]['samples_per_s']:,.0f}", str(r[k]["steps_per_epoch"]),
             str(r[k]["replica_batch"]), f"{r['workers']['samples_per_s'] / r[k]['samples_per_s']:.2f}x",
             f"{r[k]['steps_samples_per_s']:,.0f}", f"{r[k]['between_epochs_s']:.2f}"]
            for k, name in names]
    small = result["small"]
    fixed = [[f"`--num-workers {count}`" if count else "`--local`", f"{f[k]['marginal_epoch_s']:.2f}",
              f"{f[k]['steps_s']:.2f}", f"{f[k]['fixed_s']:.2f}"] for k, count in (("local", 0), ("workers", n))]
    return "\n".join([
        f"raytrain bench --workers {n} --framework {framework}, {result['date']}, {result['machine']['cpus']} cores: "
        f"{result['samples']:,} samples of {tuple(result['shape'])}, cnn, global batch {w}, {result['epochs']} epochs "
        "(marginal epoch: median gap between epoch ends after the first; the in-memory and raytrain rows: median of "
        f"{result['repeats']} interleaved rounds)",
        "",
        *table(["path", "marginal epoch s", "samples/s", "steps/epoch", "batch per replica",
                f"raytrain {n} workers is", "samples/s in the steps", "between epochs s"], rows,
               right=(1, 2, 3, 4, 5, 6, 7)),
        "",
        f"per-epoch fixed cost: {small['samples']:,} samples of {tuple(small['shape'])}, 20% validation, "
        f"batch {small['batch']}, {small['epochs']} epochs",
        "",
        *table(["run", "marginal epoch s", "training steps s", "fixed cost s"], fixed, right=(1, 2, 3)),
        "",
        *bars_table(result["bars"], lambda b: f"{b['value']:.2f} s" if "cost" in b["bar"] else f"{b['value']:.2f}x"),
    ])


def check_args(samples: int, workers: int, batch: int, epochs: int, repeats: int = 3) -> None:
    """Reject impossible settings with one line."""
    if workers < 1 or epochs < 3 or batch < workers or batch % workers or samples < 2 * batch or repeats < 1:
        raise RaytrainError(
            "bench --workers needs --workers >= 1, --epochs >= 3 (marginal epochs need two gaps after the first), "
            "a --batch-size that divides over the workers, --samples >= 2 x batch size and --repeats >= 1. "
            f"Received: workers={workers}, epochs={epochs}, batch_size={batch}, samples={samples}, repeats={repeats}"
        )
