"""The sample index: which file, which row, which label; never the pixels."""

from __future__ import annotations

from typing import TYPE_CHECKING

from raytrain.index.hdf5 import SampleIndex, build_hdf5_index
from raytrain.index.images import build_image_index
from raytrain.index.split import split_index

if TYPE_CHECKING:
    from raytrain.config import DataSection

__all__ = ["SampleIndex", "build_hdf5_index", "build_image_index", "build_index", "split_index"]


def build_index(d: "DataSection") -> SampleIndex:
    """The index of a (validated) ``data`` section, HDF5 or images."""
    from raytrain.config import COLOR_MODES

    if d.kind == "images":
        return build_image_index(d.directory, d.manifest, tuple(d.image_size), COLOR_MODES[d.color_mode],
                                 d.path_column, d.label_column)
    return build_hdf5_index(d.paths, d.x_key, d.y_key)
