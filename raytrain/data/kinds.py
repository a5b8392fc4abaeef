"""The registry of data kinds: ``data.kind`` -> how its index is built and its shard read.

A new kind of data is one module that builds its index (:mod:`raytrain.data.schema`)
and implements :class:`raytrain.data.loader.BatchLoader`, plus one line in
:data:`KINDS` (and its name in :data:`raytrain.config.KINDS`, where the job is checked).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Optional

from raytrain import config
from raytrain.config import DataSection
from raytrain.data import hdf5_index, image_index
from raytrain.data.hdf5_loader import HDF5Loader
from raytrain.data.image_loader import ImageLoader
from raytrain.data.loader import BatchLoader, LoaderFactory, ReadSpec
from raytrain.data.schema import SampleIndex
from raytrain.data.shard import Shard


@dataclass(frozen=True)
class Kind:
    build_index: Callable[[DataSection], SampleIndex]  # on the driver: metadata and labels only
    open_loader: LoaderFactory  # on each worker


KINDS: dict[str, Kind] = {
    "hdf5": Kind(hdf5_index.index_section, HDF5Loader.open),
    "images": Kind(image_index.index_section, ImageLoader.open),
}
assert tuple(KINDS) == config.KINDS, "raytrain.config.KINDS names the kinds the job may ask for"


def build_index(d: DataSection) -> SampleIndex:
    """The index of a (validated) ``data`` section."""
    return KINDS[d.kind].build_index(d)


def make_loader(spec: ReadSpec, shard: Shard, rank: int, stream: int,
                notify: Optional[Callable[[str], None]] = None) -> BatchLoader:
    """The loader of ``shard`` for the data kind of ``spec``; ``notify`` shows a line
    (a skipped file) to the user, stderr by default."""
    return KINDS[spec.data.kind].open_loader(spec, shard, rank, stream,
                                              notify or (lambda text: sys.stderr.write(text + "\n")))
