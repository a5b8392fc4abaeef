"""Reading samples on a worker: whole batches from index rows."""

from raytrain.readers.hdf5 import HDF5Reader

__all__ = ["HDF5Reader"]
