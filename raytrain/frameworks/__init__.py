"""Which Keras trains the model, and everything that differs between the two.

raytrain trains two kinds of Keras model through one data path (index, shards, order,
loaders and read-ahead are shared):

- ``tf_keras`` (the Keras 2 API, ``import tf_keras``) under TensorFlow's distribution
  strategies (:mod:`raytrain.frameworks.tf_keras`);
- ``keras``: Keras 3 (``import keras``) on the JAX backend, data-parallel over every
  worker's devices with Keras's distribution API (:mod:`raytrain.frameworks.keras_jax`).
  Keras 3 cannot ``fit`` under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585),
  so its TensorFlow backend is not offered.

:class:`Framework` is the seam: the worker loop (:mod:`raytrain.worker`) asks it to set
up the distribution, build, feed, checkpoint and export, and never tests which one it
has. :func:`resolve` decides a job's framework once, on the driver, and the job carries
the answer to the workers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
from typing import Any, Callable, Optional

from raytrain.config import ModelSection
from raytrain.errors import RaytrainError

TF_KERAS, KERAS = "tf_keras", "keras"
EXTRAS = {TF_KERAS: "tensorflow", KERAS: "jax"}  # pip install 'raytrain[EXTRA]'
PACKAGES = {TF_KERAS: ("tensorflow", "tf_keras"), KERAS: ("jax", "keras")}
LABELS = {TF_KERAS: "tf_keras (TensorFlow)", KERAS: "Keras 3 on JAX"}
BACKEND_ENV = "KERAS_BACKEND"


class Framework:
    """What differs between the frameworks; one instance per training process.

    Call :meth:`setup` first, before anything else touches the framework's devices.
    """

    name = ""

    def setup(self, world: int, threads: int) -> int:
        """Set up the distribution over ``world`` processes (this one sizes its thread
        pools to ``threads``; 0 = the whole machine) and return this process's local
        replicas (devices)."""
        raise NotImplementedError

    def scope(self) -> contextlib.AbstractContextManager:
        """Where the model is built and restored."""
        return contextlib.nullcontext()

    def agree(self, world: int) -> Callable[[list[float]], list[float]]:
        """Sum a few floats over the processes (the identity with one)."""
        raise NotImplementedError

    def callback_base(self) -> type:
        """The Keras ``Callback`` class the epoch reporter derives from."""
        raise NotImplementedError

    def feeds(self, spec: Any, replicas: int, first_step: int, train: Any, validation: Any, unit: bool) -> Any:
        """The training and validation feeds of this worker (see :class:`raytrain.worker.Feeds`)."""
        raise NotImplementedError

    def write_weights(self, model: Any, folder: str) -> None:
        """The model's weights and its optimizer's state into ``folder``."""
        raise NotImplementedError

    def read_weights(self, model: Any, folder: str) -> None:
        """Restore what :meth:`write_weights` wrote into the compiled ``model``."""
        raise NotImplementedError

    def export(self, model: Any, run_dir: str, rank: int) -> None:
        """Write the final model into the run directory (every rank calls it)."""
        raise NotImplementedError

    def ray_backend(self) -> Any:
        """Ray Train's backend config, which starts this framework's collective."""
        raise NotImplementedError

    def trainer(self, **kwargs: Any) -> Any:
        """Ray Train's trainer of this framework's processes."""
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

        return DataParallelTrainer(backend_config=self.ray_backend(), **kwargs)


def get(name: str) -> Framework:
    """The framework ``name`` (``tf_keras`` or ``keras``), imported now."""
    if name == KERAS:
        from raytrain.frameworks.keras_jax import KerasJax

        return KerasJax()
    from raytrain.frameworks.tf_keras import TfKeras

    return TfKeras()


def installed(name: str) -> bool:
    """Whether ``name``'s packages are importable here (checked without importing them)."""
    return all(importlib.util.find_spec(package) is not None for package in PACKAGES[name])


def check(name: str) -> None:
    """Fail in one line when ``name`` cannot train here: a package missing, or Keras 3 set
    to a backend other than JAX."""
    if not installed(name):
        missing = [p for p in PACKAGES[name] if importlib.util.find_spec(p) is None]
        raise RaytrainError(
            f"model.framework {name} ({LABELS[name]}) needs {' and '.join(missing)}, which this Python does not have; "
            f"install it with: pip install 'raytrain[{EXTRAS[name]}]'"
        )
    if name == KERAS:
        backend = os.environ.get(BACKEND_ENV, "jax")
        loaded = sys.modules.get("keras")
        if loaded is not None and hasattr(loaded, "backend"):
            backend = loaded.backend.backend()  # Keras chose at its import; the variable no longer matters
        if backend != "jax":
            raise RaytrainError(
                f"{BACKEND_ENV} is {backend!r}, but raytrain trains Keras 3 models on JAX; "
                f"unset {BACKEND_ENV} or set {BACKEND_ENV}=jax"
            )


def default() -> str:
    """The framework of a built-in model under ``model.framework: auto``: tf_keras where
    TensorFlow is installed (its CPU convolutions are the faster ones, docs/benchmarks.md),
    else Keras 3 on JAX."""
    return TF_KERAS if installed(TF_KERAS) else KERAS


def resolve(model: ModelSection) -> str:
    """The framework that trains ``model`` (``model.framework``, or under ``auto`` the Keras
    the builder's module imports), checked installed; on the driver, before Ray starts.

    ``auto`` reads the names the builder's module holds (``import keras``, ``from keras
    import layers``, ``import tf_keras as keras``, ``from tensorflow import keras``) rather
    than building the model: building a tf_keras model before TensorFlow's distribution
    strategy exists is not allowed in the process that trains. A module that holds both,
    or neither, gets :func:`default`; a model of the other Keras is then one line naming
    ``--framework``. A ``model.framework`` set against what the module imports is refused.
    """
    from raytrain.models import BUILTINS, resolve_builder

    if model.framework == KERAS:
        check(KERAS)  # before the builder's module imports keras with another backend
    from raytrain.run.progress import quiet_stderr

    with quiet_stderr():  # a builder that imports tf_keras loads TensorFlow, whose C++ start-up lines go to stderr
        found = None if model.builder in BUILTINS else imported(resolve_builder(model.builder))
    name = (found or default()) if model.framework == "auto" else model.framework
    check(name)
    if found is not None and found != name:
        raise RaytrainError(
            f"model builder '{model.builder}' builds its model with {found} but model.framework is {name}; "
            f"pass --framework {found} (or auto)"
        )
    return name


def imported(builder: Callable[..., Any]) -> Optional[str]:
    """Which Keras the names around ``builder`` come from, or None when unclear."""
    names = getattr(builder, "__globals__", None)
    if names is None:
        module = sys.modules.get(getattr(builder, "__module__", "") or "")
        names = vars(module) if module is not None else {}
    roots = set()
    for value in list(names.values()):
        if isinstance(value, types.ModuleType):
            roots.add(value.__name__.split(".")[0])
        elif isinstance(value, type) or callable(value):
            roots.add((getattr(value, "__module__", None) or "").split(".")[0])
    if "keras" in roots and "tf_keras" not in roots:
        return KERAS
    if "tf_keras" in roots or ("tensorflow" in roots and "keras" not in roots):
        return TF_KERAS
    return None
