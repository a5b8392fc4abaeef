"""Read a model's metrics once per call into TensorFlow, not once per step.

tf_keras's ``train_step`` and ``test_step`` end by reading every metric's result, and
under a distribution strategy that read all-reduces each metric's variables across the
replicas (``variable_sync_on_read_context``): with a loss and one accuracy metric, 6 of
the 7 collectives in each step of the cnn under ``MultiWorkerMirroredStrategy`` (the
7th is the gradients). With ``steps_per_execution`` > 1, ``fit`` runs its steps in a
``tf.range`` loop and keeps only the last step's values, but each step's reads stay in
the graph (collectives are stateful, so nothing prunes them): every step waited for the
other workers seven times instead of once, for values nobody looks at.

:func:`read_metrics_per_execution` gives a model its own ``make_train_function`` and
``make_test_function``: the same loop, whose steps update the metrics without reading
them, then one read after the loop. Callbacks and history see the same values: the
metrics' state after the execution's last step, all-reduced.

Only for models whose ``train_step`` and ``test_step`` are tf_keras's own: a model that
overrides one returns whatever it chooses, so raytrain leaves it as it is.

The loop mirrors tf_keras's ``make_train_function`` and uses its internals through
:mod:`raytrain.compat`; ``tests/test_execution.py`` compares the logs with tf_keras's own
loop, so an upgrade that changes them fails there.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from raytrain import compat


def read_metrics_per_execution(model: Any) -> None:
    """Install the per-execution metric read on ``model`` (see the module docstring);
    a model with its own train or test step is left as it is."""
    import tf_keras as keras

    cls = type(model)
    if cls.train_step is not keras.Model.train_step or cls.test_step is not keras.Model.test_step:
        return
    reading = model.get_metrics_result  # tf_keras's, bound
    skipped = threading.local()  # MirroredStrategy traces each local replica in a thread of its own

    def get_metrics_result() -> dict:
        return {} if getattr(skipped, "on", False) else reading()

    model.get_metrics_result = get_metrics_result
    model.make_train_function = _maker(model, "train_function", "train_step", "train", skipped)
    model.make_test_function = _maker(model, "test_function", "test_step", "test", skipped)


def _maker(model: Any, attribute: str, step: str, counter: str, skipped: threading.local) -> Callable[..., Any]:
    import tensorflow as tf
    reduce_per_replica = compat.reduce_per_replica()

    def make(force: bool = False) -> Any:
        if getattr(model, attribute) is not None and not force:
            return getattr(model, attribute)
        strategy = model.distribute_strategy

        def run_step(data: Any) -> None:
            skipped.on = True  # at trace time: this step's graph holds no metric reads
            try:
                getattr(model, step)(data)
            finally:
                skipped.on = False
            compat.step_counter(model, counter).assign_add(1)

        if model.jit_compile:
            run_step = tf.function(run_step, jit_compile=True, reduce_retracing=True)

        def execution(iterator: Any) -> Any:
            for _ in tf.range(compat.steps_per_execution(model)):
                strategy.run(run_step, args=(next(iterator),))
            outputs = strategy.run(model.get_metrics_result)
            return reduce_per_replica(outputs, strategy, reduction=model.distribute_reduction_method)

        function = execution if model.run_eagerly else tf.function(execution, reduce_retracing=True)
        setattr(model, attribute, function)
        return function

    return make
