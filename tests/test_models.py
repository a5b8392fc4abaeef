import pytest

from raytrain.errors import RaytrainError
from raytrain.config import ModelSection, TrainingSection
from raytrain.models import build_model, resolve_builder


def test_builtins_build_compiled_models():
    cnn = build_model(ModelSection(), TrainingSection(), (16, 16, 3), 5, one_hot=False)
    assert cnn.output_shape == (None, 5) and cnn.loss == "sparse_categorical_crossentropy"
    video = build_model(ModelSection(builder="video3d"), TrainingSection(), (4, 3, 8, 8), 3, one_hot=True)
    assert video.output_shape == (None, 3) and video.loss == "categorical_crossentropy"


def test_builtin_rejects_wrong_sample_rank():
    with pytest.raises(RaytrainError, match="video3d"):
        build_model(ModelSection(), TrainingSection(), (4, 3, 8, 8), 3, one_hot=False)


def test_user_builder_from_file_is_compiled_unless_it_compiles_itself(tmp_path):
    path = tmp_path / "mymodel.py"
    path.write_text(
        "import tf_keras as keras\n"
        "def build(input_shape, num_classes):\n"
        "    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),\n"
        "                             keras.layers.Dense(num_classes, activation='softmax')])\n"
        "def build_compiled(input_shape, num_classes):\n"
        "    m = build(input_shape, num_classes)\n"
        "    m.compile(optimizer='sgd', loss='categorical_crossentropy')\n"
        "    return m\n"
    )
    m = build_model(ModelSection(builder=f"{path}:build", optimizer="rmsprop", learning_rate=0.5), TrainingSection(),
                    (4, 4, 1), 2, one_hot=False)
    assert type(m.optimizer).__name__ == "RMSprop" and float(m.optimizer.learning_rate) == 0.5
    m2 = build_model(ModelSection(builder=f"{path}:build_compiled"), TrainingSection(), (4, 4, 1), 2, one_hot=False)
    assert type(m2.optimizer).__name__ == "SGD" and m2.loss == "categorical_crossentropy"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("resnet9000", "unknown built-in model 'resnet9000'"),
        ("missing.py:build", "does not exist"),
        ("json:nothing_here", "has no function 'nothing_here'"),
        ("no_such_module_xyz:build", "cannot import module"),
    ],
)
def test_bad_builders_are_named(spec, message):
    with pytest.raises(RaytrainError, match=message):
        resolve_builder(spec)


def test_builder_file_that_fails_to_import(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def build(:\n")
    with pytest.raises(RaytrainError, match="failed to import: SyntaxError"):
        resolve_builder(f"{path}:build")
