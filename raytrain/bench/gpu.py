"""``raytrain bench --gpu-check``: can this node train on its GPUs with Keras 3 on JAX?

Trains the built-in cnn on synthetic data (``raytrain train --local --framework keras``,
so the path a run takes: loaders, read-ahead, ``fit`` on every GPU JAX sees as one
data-parallel mesh) and prints the steps per second and the share of the steps' time
spent waiting for data. Where JAX sees no GPU (no CUDA build of jaxlib, no driver, no
device), one line says so and the exit code is 1.
"""

from __future__ import annotations

import datetime
import statistics
from typing import Any, Optional

from raytrain.bench import machine, table, train_run, workspace
from raytrain.data.synth import make_hdf5
from raytrain.errors import RaytrainError
from raytrain.run.rundir import read_dataset, read_metrics


class NoGpu(RaytrainError):
    """JAX sees no GPU on this node."""


def gpus() -> list[str]:
    """The GPUs JAX sees here, or [] (JAX's own import and platform probe, in this process)."""
    import jax

    try:
        return [str(d) for d in jax.devices("gpu")]
    except RuntimeError:  # "Unknown backend: 'gpu' requested, but no platforms that are instances of gpu are present"
        return []


def run_check(samples: int = 8192, shape: tuple[int, ...] = (64, 64, 3), batch: int = 256, epochs: int = 3,
              workdir: Optional[str] = None, timeout: float = 1800, progress: Any = print) -> dict[str, Any]:
    """Train and return the figures (see the module docstring); raises :class:`NoGpu`."""
    found = gpus()
    if not found:
        import jax

        raise NoGpu(f"JAX sees no GPU on this node (its devices: {[str(d) for d in jax.devices()]}); install a CUDA "
                    "build (pip install 'jax[cuda12]') on a node with an NVIDIA driver")
    with workspace(workdir) as workdir:
        path = f"{workdir}/gpu-check.h5"
        progress(f"writing {samples:,} synthetic samples of {shape} to {path}")
        make_hdf5(path, samples, shape, classes=4)
        progress(f"training the built-in cnn on {len(found)} GPU(s) with Keras 3 on JAX ({epochs} epochs)")
        run_dir = train_run(path, workdir, timeout, "raytrain train --local --framework keras", "--local",
                            "--framework", "keras", "--epochs", str(epochs), "--batch-size", str(batch),
                            "--validation-ratio", "0", "--gpus-per-worker", str(len(found)))
        records, plan = read_metrics(run_dir), read_dataset(run_dir)["plan"]
    later = records[1:] or records  # the first epoch compiles
    return {"date": datetime.date.today().isoformat(), "machine": machine(), "gpus": found, "samples": samples,
            "shape": list(shape), "batch": batch, "epochs": epochs,
            "steps_per_s": statistics.median(r["samples_per_s"] for r in later) / batch,
            "samples_per_s": statistics.median(r["samples_per_s"] for r in later),
            "data_wait_fraction": statistics.median(r["data_wait_fraction"] for r in later),
            "steps_per_epoch": plan["train_steps"]}


def render(result: dict[str, Any]) -> str:
    return "\n".join([
        f"raytrain bench --gpu-check, {result['date']}: the cnn on {len(result['gpus'])} GPU(s) "
        f"({', '.join(result['gpus'])}), Keras 3 on JAX, {result['samples']:,} samples of {tuple(result['shape'])}, "
        f"batch {result['batch']} (median of the epochs after the first)",
        "",
        *table(["steps/s", "samples/s", "data wait"],
               [[f"{result['steps_per_s']:.1f}", f"{result['samples_per_s']:,.0f}",
                 f"{100 * result['data_wait_fraction']:.1f}%"]], right=(0, 1, 2)),
    ])
