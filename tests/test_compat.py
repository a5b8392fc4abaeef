"""Other libraries' private APIs: all in raytrain.compat, and all still where it expects them."""

import os
import re

from tests.common import ROOT

PRIVATE = re.compile(r"ray\._private|ray\.train\._internal|tf_keras\.src|keras\.src|_experiment_analysis|"
                     r"_is_compiled|_create_all_weights|_steps_per_execution|_train_counter|_test_counter|_global_node")


def test_private_apis_live_in_compat_only():
    found = []
    for folder, _, files in os.walk(os.path.join(ROOT, "raytrain")):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".py") and not path.endswith(os.path.join("raytrain", "compat.py")):
                text = open(path, encoding="utf-8").read()
                found += [f"{os.path.relpath(path, ROOT)}: {m.group(0)}" for m in PRIVATE.finditer(text)]
    assert found == []


def test_every_internal_is_where_compat_expects_it():
    from raytrain import compat

    assert compat.check() == []


def test_tf_keras_model_internals_exist():
    import tf_keras as keras

    from raytrain import compat

    model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
    model.compile(optimizer="adam", loss="mse", steps_per_execution=4)
    assert int(compat.steps_per_execution(model).numpy()) == 4
    for which in ("train", "test"):
        assert int(compat.step_counter(model, which).numpy()) == 0
    optimizer = keras.optimizers.get({"class_name": "adam", "config": {"learning_rate": 0.1}})
    compat.create_optimizer_slots(optimizer, model.trainable_variables)
    assert len(optimizer.variables()) > 1  # the moments exist before any step


def test_cpu_count_is_the_affinity_mask_at_most():
    from raytrain.trainer import cpu_count

    assert 1 <= cpu_count() <= len(os.sched_getaffinity(0))
