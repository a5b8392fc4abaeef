"""Build the sample index of an image dataset: a class-per-folder tree or a manifest.

The index holds paths and labels only; no image is opened here. A worker reads and
decodes its own files (:mod:`raytrain.data.image_loader`), so a bad file is found when
it is read, under ``data.on_bad_sample``.

- **Directory**: the rules of ``tf_keras.utils.image_dataset_from_directory``. Each
  sub-folder not starting with ``.`` is a class; class indices follow the sorted folder
  names; each class folder is walked recursively and its files with the extensions in
  :data:`IMAGE_EXTENSIONS` (any case) are listed sorted by folder, then name. Folders
  are listed by a thread pool, one task per folder, so deep and wide trees (and
  network filesystems, where each listing waits on the server) are scanned in
  parallel.
- **Manifest**: a CSV or Parquet file with a path column and a label column, each image
  listed once (a repeated path is refused: it would train twice an epoch). Relative
  paths resolve against the manifest's folder. String labels are mapped to the
  indices of their sorted names; integer labels are class indices.
- **Index file**: ``raytrain index SOURCE --out index.parquet`` writes the scanned
  index as a Parquet manifest (absolute paths, integer labels, class names in the
  file's metadata). Train on it with ``data.manifest: index.parquet``: a million-file
  tree is then scanned once, not on every run.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from typing import Any, Callable, Mapping, Optional

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.fs
import pyarrow.parquet as pq

from raytrain.config import COLOR_MODES, DataSection
from raytrain.data import store
from raytrain.data.image_reader import BadImage, ImageDecoder, read_file
from raytrain.data.schema import INDEX_SCHEMA, SampleIndex
from raytrain.errors import RaytrainError

MANIFEST_EXTENSIONS = (".csv", ".tsv", ".parquet", ".pq")
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # as tf_keras' image_dataset_from_directory
SCAN_THREADS = 16  # folder listings in flight: they wait on the filesystem, not the CPU
CLASS_NAMES_KEY = b"raytrain.class_names"  # Parquet metadata of an index file: JSON list of class names
CHECK_FIRST = 8  # a manifest's first paths are checked on the driver (a wrong base folder fails early)


def _list_folder(path: str) -> tuple[list[str], list[str]]:
    """(image file names, sub-folder paths) of one folder, as ``os.walk`` would see them."""
    files, folders = [], []
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):  # a linked folder could loop back
                folders.append(entry.path)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(entry.name)
    return files, folders


_STOP = object()


class _DaemonPool:
    """Threads that run ``work`` on submitted items, results taken in the calling thread.

    Not a ``ThreadPoolExecutor``: leaving its ``with`` block on Ctrl-C first runs every
    queued task, and its worker threads are joined when the interpreter exits, so a
    worker started while Ctrl-C arrived (and never told to stop) kept the process from
    exiting. These threads are daemons, and :meth:`close` drops the queued tasks.
    """

    def __init__(self, work: Callable[[Any], Any], threads: int):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self.pending = 0

        def run() -> None:
            while (item := self._tasks.get()) is not _STOP:
                try:
                    self._results.put((item, work(item), None))
                except BaseException as e:  # noqa: BLE001 - handed to the calling thread
                    self._results.put((item, None, e))

        self._threads = [threading.Thread(target=run, name="raytrain-scan", daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, item: Any) -> None:
        self.pending += 1
        self._tasks.put(item)

    def result(self) -> tuple[Any, Any]:
        """The next finished ``(item, result)``; re-raises the work's error."""
        item, result, error = self._results.get()
        self.pending -= 1
        if error is not None:
            raise error
        return item, result

    def close(self) -> None:
        """Drop the queued tasks; the threads finish the ones they hold, then end."""
        while True:
            try:
                self._tasks.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._tasks.put(_STOP)


def _walk(roots: list[str], threads: int) -> dict[str, list[str]]:
    """Every folder under ``roots`` (recursively) -> its image file names, listed in parallel."""
    found: dict[str, list[str]] = {}
    pool = _DaemonPool(_list_folder, threads)
    try:
        for root in roots:
            pool.submit(root)
        while pool.pending:
            folder, (files, subfolders) = pool.result()
            found[folder] = files
            for sub in subfolders:
                pool.submit(sub)
    finally:
        pool.close()  # on Ctrl-C (or an error) the listings still queued are dropped
    return found


def scan_directory(directory: str, threads: int = SCAN_THREADS,
                   options: Optional[Mapping[str, Any]] = None) -> tuple[list[str], np.ndarray, list[str]]:
    """Paths, class indices and class names of a class-per-folder tree (see the module docstring).

    Raises:
        RaytrainError: The directory is missing, has no class folders, or no images.
    """
    if store.is_uri(directory):
        return _scan_uri(directory, options)
    if not os.path.isdir(directory):
        raise RaytrainError(f"image directory {directory} does not exist; check data.directory / --directory")
    classes = sorted(
        name for name in os.listdir(directory) if not name.startswith(".") and os.path.isdir(os.path.join(directory, name))
    )
    if not classes:
        raise RaytrainError(
            f"image directory {directory} has no class folders; put each class's images in a sub-folder "
            "named for the class (e.g. cats/, dogs/)"
        )
    roots = [os.path.join(directory, c) for c in classes]
    found = _walk(roots, threads)
    paths: list[str] = []
    labels: list[int] = []
    for label, root in enumerate(roots):
        folders = sorted(f for f in found if f == root or f.startswith(root + os.sep))
        for folder in folders:
            names = sorted(found[folder])
            paths.extend(os.path.join(folder, n) for n in names)
            labels.extend([label] * len(names))
    if not paths:
        raise RaytrainError(
            f"image directory {directory} has class folders {classes[:5]} but no images with extensions "
            f"{list(IMAGE_EXTENSIONS)}"
        )
    return paths, np.asarray(labels, dtype=np.int64), classes


def _scan_uri(directory: str, options: Optional[Mapping[str, Any]]) -> tuple[list[str], np.ndarray, list[str]]:
    """:func:`scan_directory` for a folder in object storage: one recursive listing (the
    store pages it), the same rules (hidden class folders skipped, files sorted by folder
    then name)."""
    base = directory.rstrip("/") + "/"
    store.check_bucket(directory, options)
    by_class: dict[str, list[tuple[str, str]]] = {}
    for uri, _ in store.list_files(directory, options):
        rel = uri[len(base):]
        if "/" not in rel or rel.startswith("."):
            continue
        cls = rel.split("/", 1)[0]
        if uri.lower().endswith(IMAGE_EXTENSIONS):
            by_class.setdefault(cls, []).append((uri.rsplit("/", 1)[0], uri))
        else:
            by_class.setdefault(cls, [])
    classes = sorted(by_class)
    if not classes:
        raise RaytrainError(
            f"image folder {directory} holds no class folders (or does not exist); put each class's images under "
            "a prefix named for the class (e.g. cats/, dogs/)"
        )
    paths = [uri for c in classes for _, uri in sorted(by_class[c])]
    labels = [i for i, c in enumerate(classes) for _ in by_class[c]]
    if not paths:
        raise RaytrainError(
            f"image folder {directory} has class folders {classes[:5]} but no images with extensions "
            f"{list(IMAGE_EXTENSIONS)}"
        )
    return paths, np.asarray(labels, dtype=np.int64), classes


def _read_table(path: str, options: Optional[Mapping[str, Any]] = None) -> pa.Table:
    remote = store.is_uri(path)
    if remote:
        store.check_bucket(path, options)
    if not (store.info(path, options).type == pyarrow.fs.FileType.File if remote else os.path.isfile(path)):
        raise RaytrainError(f"manifest {path} does not exist; check data.manifest / --manifest")
    ext = os.path.splitext(path)[1].lower()
    source: Any = store.open_file(path, options) if remote else path
    try:
        if ext in (".parquet", ".pq"):
            return pq.read_table(source)
        if ext in (".csv", ".tsv"):
            options = pyarrow.csv.ParseOptions(delimiter="\t" if ext == ".tsv" else ",")
            return pyarrow.csv.read_csv(source, parse_options=options)
    except (pa.ArrowInvalid, OSError) as e:
        raise RaytrainError(f"manifest {path} cannot be read: {str(e).splitlines()[0]}; fix the file") from None
    raise RaytrainError(f"manifest {path} must be a .csv, .tsv or .parquet file. Received: {ext or 'no extension'}")


def read_manifest(
    path: str, path_column: str = "path", label_column: str = "label", options: Optional[Mapping[str, Any]] = None
) -> tuple[list[str], np.ndarray, list[str]]:
    """Paths (absolute), class indices and class names of a manifest (see the module docstring).

    Raises:
        RaytrainError: The file is missing or unreadable, a column is missing, a value
            is empty, or labels are neither class names nor non-negative integers.
    """
    table = _read_table(path, options)
    for column, key in ((path_column, "path_column"), (label_column, "label_column")):
        if column not in table.column_names:
            raise RaytrainError(
                f"manifest {path} has no column '{column}' (data.{key}); its columns: {table.column_names}; "
                f"set --{key.replace('_', '-')} to one of them"
            )
    for column in (path_column, label_column):
        nulls = table.column(column).null_count
        if nulls:
            first = int(np.flatnonzero(table.column(column).is_null().to_numpy(zero_copy_only=False))[0])
            raise RaytrainError(f"manifest {path}: column '{column}' is empty in {nulls} rows (first: row {first + 1})")
    if table.num_rows == 0:
        raise RaytrainError(f"manifest {path} lists no images")
    base = store.parent(path) if store.is_uri(path) else os.path.dirname(os.path.abspath(path))
    paths = [_resolve(base, p) for p in table.column(path_column).cast(pa.string()).to_pylist()]
    _reject_duplicates(path, paths)
    raw = table.column(label_column)
    stored = (table.schema.metadata or {}).get(CLASS_NAMES_KEY)
    if pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type):
        names = np.asarray(raw.to_pylist(), dtype=object)
        classes = sorted(set(names.tolist()))
        labels = np.searchsorted(np.asarray(classes, dtype=object), names).astype(np.int64)
    elif pa.types.is_integer(raw.type):
        labels = raw.to_numpy().astype(np.int64)
        if labels.min() < 0:
            raise RaytrainError(
                f"manifest {path}: label column '{label_column}' has negative values (e.g. {labels[labels < 0][0]}); "
                "labels must be class names or class indices 0..C-1"
            )
        classes = json.loads(stored) if stored else [str(i) for i in range(int(labels.max()) + 1)]
        if labels.max() >= len(classes):
            raise RaytrainError(f"manifest {path}: label {labels.max()} is beyond its {len(classes)} class names")
    else:
        raise RaytrainError(
            f"manifest {path}: label column '{label_column}' holds {raw.type} values; "
            "use class names (strings) or class indices (integers)"
        )
    missing = [p for p in paths[:CHECK_FIRST] if not _exists(p, options)]
    if missing:
        raise RaytrainError(
            f"manifest {path}: image {missing[0]} does not exist; relative paths are resolved against "
            f"the manifest's folder {base}"
        )
    return paths, labels, list(classes)


def _resolve(base: str, p: str) -> str:
    """A manifest's path: a URI or absolute path as it is, a relative one against ``base``."""
    if store.is_uri(p) or os.path.isabs(p):
        return p
    return store.join(base, p) if store.is_uri(base) else os.path.normpath(os.path.join(base, p))


def _exists(p: str, options: Optional[Mapping[str, Any]] = None) -> bool:
    return store.info(p, options).type == pyarrow.fs.FileType.File if store.is_uri(p) else os.path.exists(p)


def _reject_duplicates(manifest: str, paths: list[str]) -> None:
    """A file listed twice would be trained on twice an epoch, and could land in both the
    training and the validation split: refuse it, naming the first repeats."""
    first_row: dict[str, int] = {}
    repeats: list[str] = []
    for row, p in enumerate(paths):
        if p in first_row:
            repeats.append(f"{p} (rows {first_row[p] + 1} and {row + 1})")
            if len(repeats) == 3:
                break
        else:
            first_row[p] = row
    if repeats:
        raise RaytrainError(
            f"manifest {manifest} lists the same image more than once: {'; '.join(repeats)}; "
            "list each image once (rows are numbered from 1, after the header)"
        )


def to_table(paths: list[str], labels: np.ndarray) -> pa.Table:
    """The index table (:data:`raytrain.data.schema.INDEX_SCHEMA`): an image is a ``file``, ``row`` 0."""
    n = len(paths)
    return pa.table(
        {
            "sample_id": pa.array(np.arange(n, dtype=np.int64)),
            "file": pa.array(paths, pa.string()),
            "row": pa.array(np.zeros(n, dtype=np.int64)),
            "label": pa.array(labels),
        },
        schema=INDEX_SCHEMA,
    )


def build_image_index(
    directory: Optional[str],
    manifest: Optional[str],
    image_size: tuple[int, int],
    channels: int,
    path_column: str = "path",
    label_column: str = "label",
    options: Optional[Mapping[str, Any]] = None,
) -> SampleIndex:
    """Index an image dataset from a directory or a manifest (exactly one).

    Args:
        directory: A class-per-folder tree, or None.
        manifest: A CSV/Parquet manifest or a ``raytrain index`` file, or None.
        image_size: ``(height, width)`` every image is resized to.
        channels: 3 (rgb) or 1 (grayscale).
        path_column: The manifest's path column.
        label_column: The manifest's label column.
        options: ``data.storage_options`` for URIs.
    """
    if directory:
        paths, labels, classes = scan_directory(directory, options=options)
    else:
        assert manifest, "config validation requires a directory or a manifest"
        paths, labels, classes = read_manifest(manifest, path_column, label_column, options)
    if len(classes) < 2:
        raise RaytrainError(f"{directory or manifest} holds {len(classes)} class; a classifier needs at least 2")
    shape = (int(image_size[0]), int(image_size[1]), channels)
    return SampleIndex(to_table(paths, labels), shape, len(classes), False, "uint8", {}, tuple(classes))


def index_section(d: DataSection) -> SampleIndex:
    """The index of the image folder or manifest a (validated) ``data`` section names."""
    return build_image_index(d.directory, d.manifest, tuple(d.image_size), COLOR_MODES[d.color_mode],
                             d.path_column, d.label_column, d.storage_options)


def verify_images(paths: list[str], threads: int = 0) -> list[tuple[str, str]]:
    """Decode every image once (at its smallest JPEG scale, without resizing) in a thread
    pool; return ``(path, reason)`` of each one that cannot be read or decoded."""
    decoder = ImageDecoder((1, 1), 3)

    def check(path: str) -> Optional[tuple[str, str]]:
        try:
            decoder.decode(read_file(path))
        except OSError as e:
            return path, f"cannot be read ({e.strerror or e})"
        except BadImage as e:
            return path, str(e)
        return None

    pool = _DaemonPool(check, threads or os.cpu_count() or 1)
    bad: list[tuple[str, str]] = []
    try:
        for path in paths:
            pool.submit(path)
        while pool.pending:
            _, found = pool.result()
            if found is not None:
                bad.append(found)
    finally:
        pool.close()  # Ctrl-C: drop what is queued
    return sorted(bad)


def write_index(paths: list[str], labels: np.ndarray, classes: list[str], out: str) -> None:
    """Write an index file: a Parquet manifest with columns ``path`` and ``label`` and the
    class names in its metadata (read back by :func:`read_manifest`)."""
    table = pa.table({"path": pa.array(paths, pa.string()), "label": pa.array(labels, pa.int64())})
    table = table.replace_schema_metadata({CLASS_NAMES_KEY: json.dumps(classes).encode()})
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, out)  # never a half-written index under the final name
