"""raytrain: train Keras (tf_keras) models on data larger than memory, across Ray Train workers."""

from raytrain.config import JobConfig, load_job, validate
from raytrain.errors import RaytrainError

__all__ = ["JobConfig", "RaytrainError", "load_job", "run", "validate"]


def run(job: JobConfig):  # noqa: ANN201 - re-exported lazily: the trainer imports Ray
    """Train as ``job`` says; see :func:`raytrain.trainer.run`."""
    from raytrain.trainer import run as _run

    return _run(job)
