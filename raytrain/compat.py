"""Every private API of another library that raytrain uses, in one place.

Each function wraps one internal that has no public equivalent, says why raytrain needs
it, and names the versions it was checked on (``CHECKED``). :func:`check` looks each one
up without using it; ``tests/test_compat.py`` runs it, so an upgrade that moves one fails
there with a line naming the internal, not deep inside a training run. Nothing outside
this module reaches into ``ray._private``, ``ray.train._internal`` or ``tf_keras.src``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

CHECKED = {"ray": "2.60", "tf_keras": "2.21", "tensorflow": "2.21"}


def gpu_count() -> int:
    """The GPUs a local Ray would find on this machine (``CUDA_VISIBLE_DEVICES`` and the other
    accelerator kinds Ray knows), without starting Ray: a run that cannot fit fails before
    Ray and TensorFlow start. Ray has no public function for it (checked on Ray 2.60)."""
    from ray._private.accelerators import get_accelerator_manager_for_resource

    return get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()


def run_in_worker_main_thread(function: Callable[[], Any]) -> Any:
    """Run ``function`` in the main thread of the Ray Train worker whose training thread calls
    this (only the main thread can install a signal handler). Ray Train's worker actor has an
    ``execute`` method for it, internal to Train V2 (``RayTrainWorker.execute``, Ray 2.60)."""
    import ray

    actor = ray.get_runtime_context().current_actor
    return ray.get(actor.execute.remote(function))


def quiet_raylet_messages() -> Callable[[], None]:
    """Stop the driver printing the raylet's messages; returns what undoes it.

    Ray's driver prints every message the raylet publishes whatever ``log_to_driver`` and
    the loggers say (``ray._private.worker.print_to_stdstream``, Ray 2.60). A search makes
    two kinds on purpose: "A worker died or was killed" for each trial process a stop ends,
    and "N PYTHON worker processes have been started" for its short-lived processes."""
    import ray._private.worker as ray_worker

    shown = ray_worker.print_to_stdstream

    def printer(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            shown(data, ignore_prefix)

    ray_worker.print_to_stdstream = printer

    def undo() -> None:
        ray_worker.print_to_stdstream = shown

    return undo


def tune_stop_event() -> Any:
    """The event Ray Tune sets when it stops the calling trial (a scheduler's early stop, an
    interrupted search), or None outside a trial. Tune's function session holds it; no public
    API exposes it (Ray 2.60: ``ray.train._internal.session.get_session().stop_event``)."""
    from ray.train._internal.session import get_session

    session = get_session()
    return None if session is None else session.stop_event


def reduce_per_replica() -> Callable[..., Any]:
    """tf_keras's reduction of a step's per-replica outputs, which ``fit``'s own loop uses;
    :mod:`raytrain.execution` rebuilds that loop with one metric read per call (tf_keras 2.21)."""
    from tf_keras.src.engine.training import reduce_per_replica as reduce

    return reduce


def steps_per_execution(model: Any) -> Any:
    """The variable ``fit`` loops over within one call into TensorFlow (tf_keras 2.21)."""
    return model._steps_per_execution


def step_counter(model: Any, which: str) -> Any:
    """The ``train`` or ``test`` step counter ``fit`` and ``evaluate`` advance (tf_keras 2.21)."""
    return getattr(model, f"_{which}_counter")


def create_optimizer_slots(optimizer: Any, variables: list[Any]) -> None:
    """Create a legacy tf_keras optimizer's slot variables now, so a checkpoint restores them
    instead of their being created empty at the first step. ``optimizers.get(name, config)``
    returns the legacy classes, which have no public ``build`` (tf_keras 2.21)."""
    optimizer._create_all_weights(variables)


def check() -> list[str]:
    """One line per internal above that cannot be found in the installed versions."""
    problems = []
    lookups = [
        ("ray._private.accelerators", "get_accelerator_manager_for_resource"),
        ("ray._private.worker", "print_to_stdstream"),
        ("ray.train._internal.session", "get_session"),
        ("ray.train.v2._internal.execution.worker_group.worker", "RayTrainWorker.execute"),
        ("tf_keras.src.engine.training", "reduce_per_replica"),
        ("tf_keras.src.optimizers.legacy.optimizer_v2", "OptimizerV2._create_all_weights"),
    ]
    for module, attribute in lookups:
        try:
            found: Any = importlib.import_module(module)
            for part in attribute.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError) as e:
            problems.append(f"{module}.{attribute} is gone ({type(e).__name__}: {e}); raytrain.compat was "
                            f"checked on {CHECKED}: adapt it to the installed version")
    return problems
