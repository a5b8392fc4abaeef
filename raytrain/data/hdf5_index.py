"""Build the sample index of one or more HDF5 files.

Every file holds a features dataset (``x_key``, shape ``(N, *sample_shape)``) and a
labels dataset (``y_key``): integer classes of shape ``(N,)`` or ``(N, 1)``, or one-hot
rows of shape ``(N, C)``. An optional ``sample_count`` attribute on the file must agree
with ``N``. Only labels are read here (in bounded slices); features stay on disk.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import pyarrow as pa
import pyarrow.fs

from raytrain.config import DataSection
from raytrain.data import hdf5_remote, store
from raytrain.data.h5 import filter_names, h5py
from raytrain.data.hdf5_reader import block_rows
from raytrain.data.schema import INDEX_SCHEMA, SampleIndex
from raytrain.errors import RaytrainError

LABEL_READ_ROWS = 1 << 16  # labels are read in slices this long, so memory stays bounded
NUMERIC_KINDS = "biuf"  # numpy dtype kinds a model can train on: bool, signed, unsigned, float


def _expand_uri(pattern: str, options: Optional[Mapping[str, Any]]) -> list[str]:
    """The objects a URI or a glob over keys names (see :func:`raytrain.data.store.glob_uri`)."""
    if glob.has_magic(pattern):
        matches = store.glob_uri(pattern, options)
        if not matches:
            store.check_bucket(pattern, options)
            raise RaytrainError(f"data path {pattern} matches no object; check the pattern in data.paths / --data")
        return matches
    found = store.info(pattern, options)
    if found.type == pyarrow.fs.FileType.NotFound:
        store.check_bucket(pattern, options)
        raise RaytrainError(f"data file {pattern} does not exist; check data.paths / --data")
    if found.type == pyarrow.fs.FileType.Directory:
        raise RaytrainError(f"data path {pattern} is a folder; name the .h5 objects, e.g. {pattern.rstrip('/')}/*.h5")
    return [pattern]


def expand_paths(patterns: list[str], options: Optional[Mapping[str, Any]] = None) -> list[str]:
    """Expand globs (over local files or object keys) into a sorted, de-duplicated list of existing files."""
    files: list[str] = []
    for pattern in patterns:
        if store.is_uri(pattern):
            files.extend(_expand_uri(pattern, options))
        elif glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise RaytrainError(f"data path {pattern} matches no file; check the pattern in data.paths / --data")
            files.extend(matches)
        elif not os.path.exists(pattern):
            raise RaytrainError(f"data file {pattern} does not exist; check data.paths / --data")
        elif os.path.isdir(pattern):
            raise RaytrainError(f"data path {pattern} is a directory; name the .h5 files, e.g. {pattern}/*.h5")
        else:
            files.append(pattern)
    return list(dict.fromkeys(files))


def _labels(y: Any, path: str, y_key: str) -> tuple[np.ndarray, bool, int]:
    """Class indices of a labels dataset, whether it is one-hot, and its class count."""
    if y.ndim == 2 and y.shape[1] == 1:
        one_hot, width = False, 0
    elif y.ndim == 1:
        one_hot, width = False, 0
    elif y.ndim == 2:
        one_hot, width = True, y.shape[1]
    else:
        raise RaytrainError(
            f"{path}: labels '{y_key}' have shape {y.shape}; expected (N,) class indices or (N, C) one-hot rows"
        )
    out = np.empty(y.shape[0], dtype=np.int64)
    for start in range(0, y.shape[0], LABEL_READ_ROWS):
        part = np.asarray(y[start : start + LABEL_READ_ROWS])
        if one_hot:
            hot = part == 1
            if not (np.all(hot.sum(axis=1) == 1) and np.all((part == 0) | hot)):
                bad = start + int(np.argmax((hot.sum(axis=1) != 1) | ~np.all((part == 0) | hot, axis=1)))
                raise RaytrainError(
                    f"{path}: label row {bad} of '{y_key}' is not one-hot ({part[bad - start].tolist()[:8]}); "
                    "store exactly one 1 per row, or integer class indices"
                )
            out[start : start + len(part)] = np.argmax(part, axis=1)
        else:
            flat = part.reshape(-1)
            if not np.all(np.equal(np.mod(flat, 1), 0)) or (flat.size and flat.min() < 0):
                raise RaytrainError(
                    f"{path}: labels '{y_key}' must be non-negative whole numbers (class indices); "
                    f"found values such as {flat[(np.mod(flat, 1) != 0) | (flat < 0)][:3].tolist()}"
                )
            out[start : start + len(part)] = flat.astype(np.int64)
    classes = width if one_hot else (int(out.max()) + 1 if out.size else 0)
    return out, one_hot, classes


@dataclass(frozen=True)
class _FileEntry:
    """What the index needs from one file."""

    path: str
    sample_shape: tuple[int, ...]
    dtype: str
    labels: np.ndarray
    one_hot: bool
    classes: int
    rows_per_block: int


def _datasets(f: Any, path: str, x_key: str, y_key: str) -> tuple[Any, Any]:
    """The features and labels datasets of an open file, checked against each other."""
    for key, what in ((x_key, "x_key"), (y_key, "y_key")):
        if key not in f or not isinstance(f[key], h5py.Dataset):
            have = sorted(k for k in f if isinstance(f[k], h5py.Dataset))
            raise RaytrainError(
                f"{path} has no dataset '{key}' (data.{what}); datasets in the file: {have}; "
                f"set --{what.replace('_', '-')} to one of them"
            )
    x, y = f[x_key], f[y_key]
    if x.ndim < 2:
        raise RaytrainError(f"{path}: features '{x_key}' have shape {x.shape}; expected (N, *sample_shape)")
    if x.dtype.kind not in NUMERIC_KINDS:
        raise RaytrainError(
            f"{path}: features '{x_key}' are {x.dtype} values; a model trains on numbers: store them as "
            "uint8, integers or floats"
        )
    if x.dtype.byteorder == ">":
        raise RaytrainError(
            f"{path}: features '{x_key}' are big-endian ({x.dtype.str}); TensorFlow reads little-endian only: "
            f"rewrite the dataset, e.g. f.create_dataset(name, data=x[...].astype('{x.dtype.newbyteorder('<').str}'))"
        )
    if y.dtype.kind not in NUMERIC_KINDS:
        raise RaytrainError(
            f"{path}: labels '{y_key}' are {y.dtype} values; store class indices 0..C-1 (integers) or one-hot rows "
            "(raytrain index maps class names to indices for image manifests, not HDF5)"
        )
    if x.shape[0] != y.shape[0]:
        raise RaytrainError(
            f"{path}: '{x_key}' has {x.shape[0]} samples but '{y_key}' has {y.shape[0]}; "
            "both must have one row per sample"
        )
    if "sample_count" in f.attrs:
        count = f.attrs["sample_count"]
        if np.ndim(count) != 0 or np.asarray(count).dtype.kind not in "iu":
            raise RaytrainError(
                f"{path}: attribute sample_count={count!r} is not a whole number; set it to the number of "
                f"samples ({x.shape[0]}) or delete it"
            )
        if int(count) != x.shape[0]:
            raise RaytrainError(
                f"{path}: attribute sample_count={int(count)} but '{x_key}' has "
                f"{x.shape[0]} samples; fix the attribute or the datasets"
            )
    return x, y


def _read_file(path: str, x_key: str, y_key: str, options: Optional[Mapping[str, Any]] = None) -> _FileEntry:
    """Check one file and read its labels (never its features). A URI is read through
    :class:`raytrain.data.hdf5_remote.BlockFile`: metadata and labels in 1 MiB requests."""
    raw = None
    try:
        if store.is_uri(path):
            handle, raw = hdf5_remote.open_h5(path, options)
        else:
            handle = h5py.File(path, "r")
    except OSError as e:
        raise RaytrainError(f"{path} is not a readable HDF5 file ({e}); check the file or remove it from data.paths") from None
    try:
        with handle as f:
            x, y = _datasets(f, path, x_key, y_key)
            _check_first_block(x, path, x_key)
            labels, one_hot, classes = _labels(y, path, y_key)
            return _FileEntry(path, tuple(x.shape[1:]), str(x.dtype), labels, one_hot, classes, block_rows(x))
    finally:
        if raw is not None:
            raw.close()


def _check_first_block(x: Any, path: str, x_key: str) -> None:
    """Decode the file's first block of features on the driver, so a filter this machine's
    HDF5 cannot undo, or a damaged chunk, is one line here rather than a failure inside
    training (one block per file: its first chunks)."""
    rows = min(block_rows(x), x.shape[0])
    try:
        x[0:rows]
    except (OSError, RuntimeError, ValueError) as e:
        reason = " ".join(str(e).split())[:200]
        raise RaytrainError(
            f"{path}: the first {rows} samples of '{x_key}' (filters: {filter_names(x)}) cannot be decoded "
            f"({reason}): a filter no installed HDF5 plugin provides, or a damaged file; rewrite it with "
            "compression='gzip', or check the file"
        ) from None


def _check_same(entry: _FileEntry, first: _FileEntry) -> None:
    """Every file of one dataset has the first file's sample shape and label format."""
    if entry.sample_shape != first.sample_shape:
        raise RaytrainError(
            f"{entry.path}: samples have shape {entry.sample_shape} but {first.path} has {first.sample_shape}; "
            "all files of one dataset need the same sample shape"
        )
    if entry.one_hot != first.one_hot:
        kind = {True: "one-hot", False: "class indices"}
        raise RaytrainError(
            f"{entry.path}: labels are {kind[entry.one_hot]} but {first.path} has {kind[first.one_hot]}; "
            "use one label format for all files"
        )
    if entry.one_hot and entry.classes != first.classes:
        raise RaytrainError(f"{entry.path}: {entry.classes} one-hot classes but {first.path} has {first.classes}")


def _table(entry: _FileEntry, offset: int) -> pa.Table:
    n = len(entry.labels)
    return pa.table(
        {
            "sample_id": pa.array(np.arange(offset, offset + n, dtype=np.int64)),
            "file": pa.array([entry.path] * n, pa.string()),
            "row": pa.array(np.arange(n, dtype=np.int64)),
            "label": pa.array(entry.labels),
        },
        schema=INDEX_SCHEMA,
    )


def build_hdf5_index(paths: list[str], x_key: str = "X", y_key: str = "Y",
                     options: Optional[Mapping[str, Any]] = None) -> SampleIndex:
    """Validate HDF5 files and index every sample.

    Args:
        paths: Files or glob patterns; all files form one dataset, in sorted order.
        x_key: Name of the features dataset in each file.
        y_key: Name of the labels dataset in each file.
        options: ``data.storage_options`` for URIs.

    Returns:
        The index of all samples, in file order.

    Raises:
        RaytrainError: A file is missing or not HDF5, a key is missing, X and Y differ
            in length, ``sample_count`` disagrees, shapes differ between files, the
            labels are not classes, or there are no samples.
    """
    files = expand_paths(paths, options)
    entries: list[_FileEntry] = []
    for path in files:
        entries.append(_read_file(path, x_key, y_key, options))
        _check_same(entries[-1], entries[0])
    offsets = np.cumsum([0] + [len(e.labels) for e in entries])
    if offsets[-1] == 0:
        raise RaytrainError(f"no samples in {', '.join(files)}; the dataset is empty")
    classes = max(e.classes for e in entries)
    if classes < 2:
        raise RaytrainError(f"the labels of {', '.join(files)} hold {classes} class; a classifier needs at least 2")
    first = entries[0]
    return SampleIndex(
        pa.concat_tables([_table(e, int(o)) for e, o in zip(entries, offsets)]), first.sample_shape, classes,
        first.one_hot, first.dtype, {e.path: e.rows_per_block for e in entries},
    )


def index_section(d: DataSection) -> SampleIndex:
    """The index of the files a (validated) ``data`` section names."""
    return build_hdf5_index(d.paths, d.x_key, d.y_key, d.storage_options)
