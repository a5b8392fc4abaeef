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

import numpy as np
import pyarrow as pa

from raytrain.errors import RaytrainError

LABEL_READ_ROWS = 1 << 16  # labels are read in slices this long, so memory stays bounded

INDEX_SCHEMA = pa.schema(
    [
        ("sample_id", pa.int64()),  # position in the concatenation of all files
        ("file", pa.string()),
        ("row", pa.int64()),
        ("label", pa.int64()),  # class index, also for one-hot files
    ]
)


@dataclass(frozen=True)
class SampleIndex:
    """All samples of a dataset and what a model needs to know about them."""

    table: pa.Table  # INDEX_SCHEMA, in file order
    sample_shape: tuple[int, ...]
    num_classes: int
    one_hot: bool  # labels were one-hot rows: train with categorical crossentropy
    dtype: str  # the features' dtype on disk
    rows_per_block: dict[str, int]  # per file: rows read together (see raytrain.order)
    class_names: tuple[str, ...] = ()  # image datasets: the name of each class index

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample as stored."""
        return int(np.prod(self.sample_shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def __len__(self) -> int:
        return self.table.num_rows


def expand_paths(patterns: list[str]) -> list[str]:
    """Expand globs into a sorted, de-duplicated list of existing files."""
    files: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
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


def _labels(y, path: str, y_key: str) -> tuple[np.ndarray, bool, int]:
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


def build_hdf5_index(paths: list[str], x_key: str = "X", y_key: str = "Y") -> SampleIndex:
    """Validate HDF5 files and index every sample.

    Args:
        paths: Files or glob patterns; all files form one dataset, in sorted order.
        x_key: Name of the features dataset in each file.
        y_key: Name of the labels dataset in each file.

    Returns:
        The index of all samples, in file order.

    Raises:
        RaytrainError: A file is missing or not HDF5, a key is missing, X and Y differ
            in length, ``sample_count`` disagrees, shapes differ between files, the
            labels are not classes, or there are no samples.
    """
    import h5py

    from raytrain.readers.hdf5 import block_rows

    files = expand_paths(paths)
    rows_per_block: dict[str, int] = {}
    parts, shape, dtype, one_hot, classes = [], None, None, None, 0
    offset = 0
    for path in files:
        try:
            handle = h5py.File(path, "r")
        except OSError as e:
            raise RaytrainError(f"{path} is not a readable HDF5 file ({e}); check the file or remove it from data.paths") from None
        with handle as f:
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
            if x.shape[0] != y.shape[0]:
                raise RaytrainError(
                    f"{path}: '{x_key}' has {x.shape[0]} samples but '{y_key}' has {y.shape[0]}; "
                    "both must have one row per sample"
                )
            if "sample_count" in f.attrs and int(f.attrs["sample_count"]) != x.shape[0]:
                raise RaytrainError(
                    f"{path}: attribute sample_count={int(f.attrs['sample_count'])} but '{x_key}' has "
                    f"{x.shape[0]} samples; fix the attribute or the datasets"
                )
            if shape is not None and tuple(x.shape[1:]) != shape:
                raise RaytrainError(
                    f"{path}: samples have shape {tuple(x.shape[1:])} but {files[0]} has {shape}; "
                    "all files of one dataset need the same sample shape"
                )
            labels, file_one_hot, file_classes = _labels(y, path, y_key)
            if one_hot is not None and file_one_hot != one_hot:
                raise RaytrainError(
                    f"{path}: labels are {'one-hot' if file_one_hot else 'class indices'} but {files[0]} has "
                    f"{'one-hot' if one_hot else 'class indices'}; use one label format for all files"
                )
            if one_hot and file_classes != classes:
                raise RaytrainError(f"{path}: {file_classes} one-hot classes but {files[0]} has {classes}")
            shape, dtype, one_hot = tuple(x.shape[1:]), str(x.dtype), file_one_hot
            classes = max(classes, file_classes)
            n = x.shape[0]
            rows_per_block[path] = block_rows(x)
        parts.append(
            pa.table(
                {
                    "sample_id": pa.array(np.arange(offset, offset + n, dtype=np.int64)),
                    "file": pa.array([path] * n, pa.string()),
                    "row": pa.array(np.arange(n, dtype=np.int64)),
                    "label": pa.array(labels),
                },
                schema=INDEX_SCHEMA,
            )
        )
        offset += n
    if offset == 0:
        raise RaytrainError(f"no samples in {', '.join(files)}; the dataset is empty")
    if classes < 2:
        raise RaytrainError(f"the labels of {', '.join(files)} hold {classes} class; a classifier needs at least 2")
    return SampleIndex(pa.concat_tables(parts), shape, classes, bool(one_hot), dtype, rows_per_block)
