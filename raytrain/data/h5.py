"""h5py, with the compression filters of scientific HDF5 files registered.

Files from scientists' tools are often compressed with HDF5 filter plugins (Blosc, Blosc2,
Zstd, LZ4, bitshuffle, BZip2, ...), which HDF5 looks for in a plugin folder that a pip
install does not have. Importing ``hdf5plugin`` registers them with this process's HDF5,
so every module that reads HDF5 imports h5py from here.
"""

from __future__ import annotations

from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers its filters with HDF5 on import)

__all__ = ["filter_names", "filters", "h5py"]


def filters(x: Any) -> list[tuple[int, int, tuple[int, ...], str]]:
    """``(filter id, flags, client values, name)`` of a dataset's pipeline, in write order."""
    plist = x.id.get_create_plist()
    out = []
    for i in range(plist.get_nfilters()):
        fid, flags, values, name = plist.get_filter(i)
        short = name.decode("utf-8", "replace").split(";")[0].strip() if isinstance(name, bytes) else str(name)
        out.append((int(fid), int(flags), tuple(int(v) for v in values), short or f"filter {fid}"))
    return out


def filter_names(x: Any) -> str:
    """The dataset's filters by name ("blosc", "deflate, shuffle"), or "none"."""
    named = [name if fid < 256 or name == f"filter {fid}" else f"{name} (id {fid})" for fid, _, _, name in filters(x)]
    return ", ".join(named) or "none"
