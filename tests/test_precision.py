"""training.mixed_precision and training.jit_compile on CPU: the model trains and its loss falls."""

import numpy as np
import pytest

from raytrain import config as cfg
from raytrain.cli import build_parser
from raytrain.cli.jobflags import job_from_args
from raytrain.errors import RaytrainError
from raytrain.config import ModelSection, TrainingSection
from raytrain.models import build_model, precision_policy


def learnable(n=256, shape=(8, 8, 3), classes=2, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0, 0.3, (n, *shape)).astype(np.float32) + y[:, None, None, None].astype(np.float32)
    return x, y


@pytest.fixture(autouse=True)
def float32_after():
    yield
    import tf_keras

    tf_keras.mixed_precision.set_global_policy("float32")  # the policy is global to the process


@pytest.mark.parametrize("mixed, jit", [(True, False), (False, True), (True, True)])
@pytest.mark.slow
def test_the_model_trains_and_its_loss_falls(mixed, jit):
    x, y = learnable()
    model = build_model(ModelSection(learning_rate=0.01), TrainingSection(mixed_precision=mixed, jit_compile=jit),
                        x.shape[1:], 2, False)
    if mixed:  # computed in bfloat16 on a CPU, variables and the softmax in float32
        assert model.layers[0].compute_dtype == "bfloat16" and model.layers[0].variable_dtype == "float32"
        assert model.layers[-1].compute_dtype == "float32"
    assert bool(model.jit_compile) == jit
    history = model.fit(x, y, batch_size=32, epochs=4, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < 0.7 * history[0]


def test_precision_policy_on_this_machine():
    assert precision_policy(False) == "float32"
    assert precision_policy(True) == "mixed_bfloat16"  # no GPU here: bfloat16, no loss scaling


def test_boolean_keys_from_file_and_flags(tmp_path):
    (tmp_path / "job.yaml").write_text("data: {paths: [x.h5]}\ntraining: {mixed_precision: true}\n")
    args = build_parser().parse_args(["train", str(tmp_path / "job.yaml"), "--jit-compile", "yes"])
    job = job_from_args(args)
    assert job.training.mixed_precision is True and job.training.jit_compile is True
    args = build_parser().parse_args(["train", str(tmp_path / "job.yaml"), "--mixed-precision", "false"])
    assert job_from_args(args).training.mixed_precision is False
    with pytest.raises(RaytrainError, match="training.jit_compile must be true or false"):
        cfg.from_dict({"training": {"jit_compile": "sometimes"}})
