"""The sample index: which file, which row, which label; never the pixels."""

from raytrain.index.hdf5 import SampleIndex, build_hdf5_index
from raytrain.index.split import split_index

__all__ = ["SampleIndex", "build_hdf5_index", "split_index"]
