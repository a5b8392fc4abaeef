"""Checkpoints hold weights and optimizer state; retention; the newest complete one is found."""

import os

import numpy as np
import pytest

from raytrain.config import ModelSection, TrainingSection
from raytrain.models import build_model
from raytrain.run import checkpoint


def model(optimizer="adam"):
    return build_model(ModelSection(optimizer=optimizer, learning_rate=0.01), TrainingSection(), (8, 8, 3), 3, False)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_restore_brings_back_weights_and_optimizer_state(tmp_path, optimizer):
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8, 8, 3), np.float32), rng.integers(0, 3, 64)
    trained = model(optimizer)
    trained.fit(x, y, batch_size=16, epochs=2, verbose=0)
    checkpoint.write(trained, str(tmp_path / "c"), {"epoch": 2, "seed": 7})
    fresh = model(optimizer)
    state = checkpoint.restore(fresh, str(tmp_path / "c"))
    assert state == {"epoch": 2, "seed": 7}
    for a, b in zip(trained.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert int(fresh.optimizer.iterations) == int(trained.optimizer.iterations) == 8
    for a, b in zip(trained.optimizer.variables(), fresh.optimizer.variables()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Continuing from the restored state trains exactly like the original would.
    trained.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    fresh.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(trained.get_weights(), fresh.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_persist_keeps_the_newest_and_latest_skips_incomplete(tmp_path):
    run = str(tmp_path / "run")
    m = model()
    for epoch in range(1, 5):
        folder = str(tmp_path / f"local{epoch}")
        checkpoint.write(m, folder, {"epoch": epoch})
        checkpoint.persist(folder, run, epoch, keep=2)
    assert [e for e, _ in checkpoint.on_storage(run)] == [3, 4]
    os.makedirs(os.path.join(run, checkpoint.dir_name(5)))  # a copy that never finished
    assert checkpoint.latest(run)[0] == 4
    assert checkpoint.latest(str(tmp_path / "nothing")) is None


def test_a_checkpoint_whose_weights_have_not_all_landed_is_not_complete(tmp_path):
    """Object stores show the files of a copy in no guaranteed order: the state file alone
    does not make a checkpoint complete."""
    run = str(tmp_path / "run")
    folder = str(tmp_path / "local")
    checkpoint.write(model(), folder, {"epoch": 1})
    checkpoint.persist(folder, run, 1, keep=2)
    assert checkpoint.latest(run)[0] == 1
    data = [n for n in os.listdir(os.path.join(run, checkpoint.dir_name(1))) if n.startswith("weights.data")]
    assert data
    os.remove(os.path.join(run, checkpoint.dir_name(1), data[0]))  # the state landed, the weights not yet
    assert checkpoint.latest(run) is None
