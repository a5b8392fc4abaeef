"""Synthetic datasets whose labels can be learned from the features.

Each class is a texture: stripes with a class-specific frequency and orientation at a
random phase, under Gaussian noise. HDF5 files hold images ``(H, W, C)`` or clips
``(frames, C, H, W)`` with the stripes drifting from frame to frame; image trees hold
one folder of image files per class. Used by ``make demo``, the tests and the
benchmarks.
"""

from __future__ import annotations

import os

import cv2
import h5py
import numpy as np

WRITE_ROWS = 1024  # samples generated and written at a time (bounded memory)


def _textures(rng: np.random.Generator, labels: np.ndarray, h: int, w: int, classes: int, frames: int) -> np.ndarray:
    """Float textures in [0, 1] of shape (n, frames, h, w)."""
    n = len(labels)
    angle = np.pi * labels / classes  # orientation spreads over half a turn
    freq = 2 * np.pi * (1.5 + (labels % 3)) / max(h, w) * 2
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    phase = rng.uniform(0, 2 * np.pi, size=n)
    t = np.arange(frames)[None, :, None, None]
    proj = (np.cos(angle)[:, None, None, None] * yy + np.sin(angle)[:, None, None, None] * xx)
    wave = np.sin(freq[:, None, None, None] * proj + phase[:, None, None, None] + 0.5 * t)
    noise = rng.normal(0, 0.6, size=(n, frames, h, w))
    return np.clip(0.5 + 0.3 * (wave + noise), 0, 1)


def make_hdf5(
    path: str,
    samples: int,
    shape: tuple[int, ...] = (32, 32, 3),
    classes: int = 4,
    one_hot: bool = False,
    seed: int = 0,
    chunk_rows: int = 32,
    x_key: str = "X",
    y_key: str = "Y",
) -> None:
    """Write a learnable dataset of ``samples`` uint8 samples to ``path``.

    Args:
        path: Output file (overwritten).
        samples: Number of samples.
        shape: ``(H, W, C)`` for images or ``(frames, C, H, W)`` for clips.
        classes: Number of classes.
        one_hot: Store labels as one-hot rows instead of class indices.
        seed: Fixes the data.
        chunk_rows: HDF5 chunk length along the sample axis.
        x_key: Name of the features dataset.
        y_key: Name of the labels dataset.
    """
    if len(shape) not in (3, 4):
        raise ValueError(f"shape must be (H, W, C) or (frames, C, H, W). Received: shape={shape}")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=samples)
    with h5py.File(path, "w") as f:
        x = f.create_dataset(
            x_key, shape=(samples, *shape), dtype=np.uint8, chunks=(min(chunk_rows, max(samples, 1)), *shape)
        )
        if one_hot:
            f.create_dataset(y_key, data=np.eye(classes, dtype=np.float32)[labels])
        else:
            f.create_dataset(y_key, data=labels.astype(np.int64))
        f.attrs["sample_count"] = samples
        for start in range(0, samples, WRITE_ROWS):
            part = labels[start : start + WRITE_ROWS]
            if len(shape) == 3:
                h, w, c = shape
                tex = _textures(rng, part, h, w, classes, 1)[:, 0]  # (n, h, w)
                tint = rng.uniform(0.7, 1.0, size=(len(part), 1, 1, c))
                block = tex[..., None] * tint
            else:
                frames, c, h, w = shape
                tex = _textures(rng, part, h, w, classes, frames)  # (n, frames, h, w)
                block = np.repeat(tex[:, :, None], c, axis=2)
            x[start : start + len(part)] = np.round(block * 255).astype(np.uint8)


IMAGE_FORMATS = ("jpg", "png", "bmp", "gif")


def make_image_tree(
    directory: str,
    samples: int,
    size: tuple[int, int] = (64, 64),
    classes: int = 4,
    seed: int = 0,
    formats: tuple[str, ...] = ("jpg",),
) -> list[str]:
    """Write a class-per-folder tree of ``samples`` RGB images (``class0/00000.jpg`` ...).

    Args:
        directory: Root of the tree (created).
        samples: Number of images.
        size: ``(height, width)`` of every image.
        classes: Number of classes (folders ``class0`` ...).
        seed: Fixes the images.
        formats: File formats, used in turn (``jpg``, ``png``, ``bmp``, ``gif``).

    Returns:
        The paths written, in sample order.
    """
    bad = sorted(set(formats) - set(IMAGE_FORMATS))
    if bad or not formats:
        raise ValueError(f"formats must be some of {IMAGE_FORMATS}. Received: formats={formats}")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=samples)
    h, w = size
    for c in range(classes):
        os.makedirs(os.path.join(directory, f"class{c}"), exist_ok=True)
    paths = []
    for start in range(0, samples, 256):
        part = labels[start : start + 256]
        tex = _textures(rng, part, h, w, classes, 1)[:, 0]
        tint = rng.uniform(0.7, 1.0, size=(len(part), 1, 1, 3))
        block = np.round(tex[..., None] * tint * 255).astype(np.uint8)
        for i, (image, label) in enumerate(zip(block, part)):
            k = start + i
            path = os.path.join(directory, f"class{label}", f"{k:05d}.{formats[k % len(formats)]}")
            if not cv2.imwrite(path, np.ascontiguousarray(image[..., ::-1])):  # OpenCV writes BGR
                raise OSError(f"could not write {path}")
            paths.append(path)
    return paths
