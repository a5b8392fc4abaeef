"""Built-in models and user model builders.

A builder is a function ``build(input_shape, num_classes) -> Model`` whose model ends
in a softmax over ``num_classes`` (probabilities, not logits). If the model it returns is
not compiled, raytrain compiles it from the job's optimizer, learning rate, loss and
metrics. The model is a ``tf_keras`` model (trained under TensorFlow's distribution
strategies) or a Keras 3 model (``import keras``, trained on the JAX backend); which one
is ``model.framework`` (:mod:`raytrain.frameworks`), and every function here takes it.
The built-ins exist for both.

``model.builder`` is one of:
- a built-in name: ``cnn`` (images ``(H, W, C)``), ``video3d`` (clips ``(frames, C, H, W)``);
- ``path/to/file.py:function``;
- ``package.module:function`` (importable on every worker).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import functools
from typing import Any, Callable

from raytrain.config import ModelSection, TrainingSection
from raytrain.errors import RaytrainError


def keras_module(framework: str) -> Any:
    """The Keras package of ``framework``: ``tf_keras``, or Keras 3 (``keras``, on the
    backend ``KERAS_BACKEND`` names, JAX for raytrain's runs)."""
    if framework == "keras":
        os.environ.setdefault("KERAS_BACKEND", "jax")  # Keras 3 defaults to TensorFlow's; raytrain's is JAX
        import keras

        return keras
    import tf_keras

    return tf_keras


def cnn(input_shape: tuple[int, ...], num_classes: int, framework: str = "tf_keras") -> Any:
    """A small conv net for images ``(H, W, C)``."""
    keras = keras_module(framework)
    layers = keras.layers

    if len(input_shape) != 3:
        raise RaytrainError(
            f"model 'cnn' takes images of shape (H, W, C); the data has samples of shape {tuple(input_shape)}. "
            "Use --model video3d for clips (frames, C, H, W) or your own builder"
        )
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(64, activation="relu"),
            layers.Dense(num_classes, activation="softmax", dtype="float32"),  # float32 even under mixed precision
        ],
        name="cnn",
    )


def video3d(input_shape: tuple[int, ...], num_classes: int, framework: str = "tf_keras") -> Any:
    """A small 3D conv net for video clips ``(frames, channels, rows, cols)``.

    The clips are channels-first as in the HDF5 tutorial; they are permuted to
    channels-last because TensorFlow's CPU Conv3D supports only that layout.
    """
    keras = keras_module(framework)
    layers = keras.layers

    if len(input_shape) != 4:
        raise RaytrainError(
            f"model 'video3d' takes clips of shape (frames, C, H, W); the data has samples of shape "
            f"{tuple(input_shape)}. Use --model cnn for images (H, W, C) or your own builder"
        )
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Permute((1, 3, 4, 2)),  # (frames, C, H, W) -> (frames, H, W, C)
            layers.Conv3D(16, 3, padding="same", activation="relu"),
            layers.MaxPooling3D(pool_size=(1, 2, 2)),
            layers.Conv3D(32, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling3D(),
            layers.Dense(32, activation="relu"),
            layers.Dense(num_classes, activation="softmax", dtype="float32"),  # float32 even under mixed precision
        ],
        name="video3d",
    )


BUILTINS: dict[str, Callable[..., Any]] = {"cnn": cnn, "video3d": video3d}


def _load_file(path: str, spec: str) -> Any:
    if not os.path.isfile(path):
        raise RaytrainError(f"model builder file {path} (from --model {spec}) does not exist; check the path")
    name = "raytrain_user_model_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: any error is theirs to fix
        raise RaytrainError(f"model builder file {path} failed to import: {type(e).__name__}: {e}{_extra(e)}") from None
    sys.modules[name] = module
    return module


def _extra(error: BaseException) -> str:
    """Where a builder's import failed on a framework that is not installed: the extra to install."""
    missing = (getattr(error, "name", None) or "").split(".")[0] if isinstance(error, ModuleNotFoundError) else ""
    extra = {"tensorflow": "tensorflow", "tf_keras": "tensorflow", "keras": "jax", "jax": "jax"}.get(missing)
    return f"; install it with: pip install 'raytrain[{extra}]'" if extra else ""


def resolve_builder(spec: str, framework: str = "tf_keras") -> Callable[..., Any]:
    """Turn ``model.builder`` into a callable (a built-in for ``framework``'s Keras).

    Raises:
        RaytrainError: Unknown built-in, missing file or module, missing or
            non-callable function.
    """
    if spec in BUILTINS:
        return functools.partial(BUILTINS[spec], framework=framework)
    if ":" not in spec:
        raise RaytrainError(
            f"unknown built-in model '{spec}'; built-ins are {sorted(BUILTINS)}, "
            "or give path/to/file.py:function or package.module:function"
        )
    target, _, func = spec.rpartition(":")
    if not func or not target:
        raise RaytrainError(f"model builder '{spec}' must look like path/to/file.py:function or package.module:function")
    if target.endswith(".py") or os.sep in target:
        module = _load_file(os.path.abspath(target), spec)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise RaytrainError(f"cannot import module '{target}' for model builder '{spec}': {e}{_extra(e)}") from None
    builder = getattr(module, func, None)
    if builder is None:
        names = sorted(n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_"))
        raise RaytrainError(f"'{target}' has no function '{func}' (model builder '{spec}'); functions there: {names}")
    if not callable(builder):
        raise RaytrainError(f"'{func}' in '{target}' is not a function (model builder '{spec}')")
    return builder


def _check_input(model: Any, spec: str, sample_shape: tuple[int, ...]) -> None:
    """The model takes samples of the data's shape (checked here, on the driver, rather
    than failing inside every worker's first step)."""
    taken = getattr(model, "input_shape", None)
    if not isinstance(taken, tuple) or not all(d is None or isinstance(d, int) for d in taken):
        return  # several inputs: the builder knows what it does
    takes = taken[1:]
    if len(takes) != len(sample_shape) or any(t is not None and t != s for t, s in zip(takes, sample_shape)):
        raise RaytrainError(
            f"model '{spec}' takes inputs of shape {tuple(takes)} but the samples have shape {sample_shape}; "
            "build the model from the input_shape argument the builder receives"
        )


COMPILE_METRIC_NAMES = ("accuracy", "acc", "crossentropy", "ce")  # resolved by compile() from the loss


def _check_metrics(metrics: tuple[str, ...], keras: Any) -> None:
    for name in metrics:
        if name in COMPILE_METRIC_NAMES:
            continue
        try:
            known = not isinstance(keras.metrics.get(name), str)  # an unknown name comes back as itself
        except ValueError:
            known = False
        if not known:
            raise RaytrainError(
                f"unknown metric '{name}' (model.metrics); use a {keras.__name__} metric function or class name such as "
                "accuracy, mse, top_k_categorical_accuracy, AUC, Precision, Recall"
            )


def starts_with_rescaling(model: Any) -> bool:
    """Whether the model's first layer (after its inputs) is a ``Rescaling`` layer, as
    Keras's image examples begin (``Rescaling(1/255)``): such a model scales its own inputs."""
    keras = keras_module("keras" if is_keras3(model) else "tf_keras")
    first = next((layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)), None)
    return isinstance(first, keras.layers.Rescaling)


def scales_uint8(scale: str, model: Any) -> bool:
    """Whether raytrain divides uint8 features by 255 before the model (``data.scale``)."""
    if scale == "auto":
        return not starts_with_rescaling(model)
    return scale == "unit"


def default_loss(one_hot: bool) -> str:
    """``loss: auto``: categorical crossentropy for one-hot labels, sparse for class indices."""
    return "categorical_crossentropy" if one_hot else "sparse_categorical_crossentropy"


STEPS_PER_EXECUTION_MAX = 16


def steps_per_execution(setting: int, log_every_steps: int) -> int:
    """``training.steps_per_execution``, with 0 (auto) resolved: the largest divisor of
    ``run.log_every_steps`` up to 16 (16 when it is 0), so batch scalars still land on
    its multiples.

    Each call into TensorFlow runs that many steps: the per-step Python work of ``fit``
    and the read of the (all-reduced) metrics happen once per call, which matters most
    with several workers (docs/benchmarks.md).
    """
    if setting:
        return setting
    if not log_every_steps:
        return STEPS_PER_EXECUTION_MAX
    return max(d for d in range(1, STEPS_PER_EXECUTION_MAX + 1) if log_every_steps % d == 0)


def dividing(steps: int, *counts: int) -> int:
    """The largest step count up to ``steps`` that divides each of ``counts`` (0s ignored).

    Keras 3's ``fit`` and ``evaluate`` run every call into XLA for ``steps_per_execution``
    steps even past the end of an epoch (they would train on the next epoch's batches), so
    a Keras 3 run's calls must divide its epochs' steps (tf_keras stops a call at the
    epoch's end)."""
    return max(d for d in range(1, steps + 1) if all(n % d == 0 for n in counts if n))


def build_model(
    model: ModelSection,
    training: TrainingSection,
    input_shape: tuple[int, ...],
    num_classes: int,
    one_hot: bool,
    steps_per_execution: int = 1,
    read_metrics_once: bool = True,
    framework: str = "tf_keras",
) -> Any:
    """Build (and compile, unless the builder did) the job's model. Call inside the strategy's scope.

    ``training.mixed_precision`` sets tf_keras's global policy before the builder runs (see
    :func:`precision_policy`); ``training.jit_compile`` compiles the train step with XLA;
    ``steps_per_execution`` (see :func:`steps_per_execution`) applies to models compiled
    here (a builder that compiles its model keeps its own setting). With
    ``read_metrics_once`` the metrics are read once per execution, not once per step
    (:mod:`raytrain.execution`, tf_keras only); the bench's plain tf_keras rows turn it
    off. Keras 3 on JAX always compiles its steps with XLA, so ``jit_compile`` changes
    nothing there.
    """
    keras = keras_module(framework)
    keras.mixed_precision.set_global_policy(precision_policy(training.mixed_precision, framework))
    built = _built(model.builder, tuple(input_shape), num_classes, framework)
    jax = framework == "keras"
    if getattr(built, "optimizer", None) is None:  # not compiled by the builder (Keras 3 has no attribute then)
        _check_probabilities(built, model.builder)
        _compile(built, model, one_hot, "auto" if jax else training.jit_compile, steps_per_execution, keras)
    elif training.jit_compile and not jax:
        built.jit_compile = True
    if read_metrics_once and not jax:
        from raytrain.execution import read_metrics_per_execution

        read_metrics_per_execution(built)
    return built


def is_keras3(model: Any) -> bool:
    """Whether ``model`` is a Keras 3 model (``import keras``) rather than a tf_keras one."""
    return any(c.__module__.split(".")[0] == "keras" for c in type(model).__mro__)


def _built(spec: str, input_shape: tuple[int, ...], num_classes: int, framework: str) -> Any:
    """The builder's model, checked against the data's sample shape and classes."""
    keras = keras_module(framework)
    builder = resolve_builder(spec, framework)
    try:
        model = builder(input_shape, num_classes)
    except RaytrainError:
        raise
    except Exception as e:
        raise RaytrainError(
            f"model builder '{spec}' failed for input_shape={input_shape}, num_classes={num_classes}: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if not isinstance(model, keras.Model):
        raise RaytrainError(_wrong_model(spec, model, framework))
    _check_input(model, spec, input_shape)
    out = _output_shape(model, spec, input_shape) if framework == "keras" else model.output_shape
    if isinstance(out, tuple) and out[-1] != num_classes:
        raise RaytrainError(
            f"model '{spec}' outputs {out[-1]} values per sample but the labels have {num_classes} classes; "
            "end the model with Dense(num_classes, activation='softmax')"
        )
    return model


def _output_shape(model: Any, spec: str, input_shape: tuple[int, ...]) -> Any:
    """A Keras 3 model's output shape from one symbolic call on the data's shape: a model
    whose layers cannot run on JAX (TensorFlow ops in a ``Lambda``, a TensorFlow-only layer)
    fails here, on the driver, rather than at the first step."""
    import keras

    try:
        return tuple(model(keras.KerasTensor((None, *input_shape))).shape)
    except Exception as e:  # the user's model: any error is theirs to fix
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        raise RaytrainError(
            f"model '{spec}' cannot run on samples of shape {input_shape} with Keras 3 on JAX: {type(e).__name__}: "
            f"{first[:200]}; use Keras layers and keras.ops only (TensorFlow ops and TensorFlow-only layers run on "
            "the TensorFlow backend, which cannot train across workers), or train a tf_keras model"
        ) from None


def _check_probabilities(model: Any, spec: str) -> None:
    """raytrain's losses take probabilities: a model whose last layer has no activation
    ends in logits, and would train to a loss no probabilities give and export a model whose
    outputs are not probabilities, without a word. Refused rather than trained with
    ``from_logits=True``, so that ``model.keras`` outputs what the docs promise; a builder
    that compiles its model itself (with its own loss) is not checked."""
    last = model.layers[-1] if getattr(model, "layers", None) else None
    if getattr(getattr(last, "activation", None), "__name__", "") == "linear":
        raise RaytrainError(
            f"model '{spec}' ends in {type(last).__name__} '{last.name}' without an activation (logits), but the loss "
            "takes probabilities; end the model with activation='softmax' (or compile it in the builder with a "
            "from_logits loss)"
        )


def _wrong_model(spec: str, model: Any, framework: str) -> str:
    """What to say when the builder's model is not of ``framework``'s Keras."""
    root = type(model).__module__.split(".")[0]
    if framework == "tf_keras" and root == "keras":
        return (f"model builder '{spec}' returned a Keras 3 model but model.framework is tf_keras; "
                "train it with --framework keras (Keras 3 on JAX), or build it with `import tf_keras as keras`")
    if framework == "keras" and root in ("tf_keras", "tensorflow"):
        return (f"model builder '{spec}' returned a tf_keras model but model.framework is keras; "
                "train it with --framework tf_keras, or build it with `import keras` (Keras 3)")
    want = "keras.Model (Keras 3)" if framework == "keras" else "tf_keras.Model"
    return f"model builder '{spec}' returned {type(model).__name__}, not a {want}"


def _compile(model: Any, section: ModelSection, one_hot: bool, jit_compile: Any, steps_per_execution: int,
             keras: Any) -> None:
    """Compile with the job's optimizer, learning rate, loss and metrics, each checked by name."""
    try:
        opt = keras.optimizers.get({"class_name": section.optimizer, "config": {"learning_rate": section.learning_rate}})
    except ValueError:
        raise RaytrainError(
            f"unknown optimizer '{section.optimizer}' (model.optimizer); use a Keras optimizer name such as adam, "
            "sgd, rmsprop"
        ) from None
    metrics = tuple(section.metrics)
    _check_metrics(metrics, keras)
    loss_name = default_loss(one_hot) if section.loss == "auto" else section.loss
    try:
        keras.losses.get(loss_name)
    except ValueError:
        raise RaytrainError(f"unknown loss '{loss_name}' (model.loss); use auto or a Keras loss name") from None
    model.compile(optimizer=opt, loss=loss_name, metrics=list(metrics), jit_compile=jit_compile,
                  steps_per_execution=steps_per_execution)


def precision_policy(mixed: bool, framework: str = "tf_keras") -> str:
    """Keras's policy for ``training.mixed_precision``: ``mixed_float16`` where a GPU is
    visible (Keras then wraps the optimizer in a LossScaleOptimizer), ``mixed_bfloat16``
    on CPUs (bfloat16 has float32's range, so no loss scaling; it is faster only on CPUs
    with bfloat16 instructions), ``float32`` when off."""
    if not mixed:
        return "float32"
    if framework == "keras":
        import jax

        return "mixed_float16" if jax.default_backend() == "gpu" else "mixed_bfloat16"
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
