"""Where runs are written: a local path, a shared filesystem, or a URI (``s3://``, ``gs://``).

``run.storage_path`` is what Ray Train's own ``RunConfig(storage_path=...)`` accepts; a
run lives in ``<storage_path>/<name>/``. Every file raytrain writes there goes through
these few functions, which use pyarrow's filesystems for URIs and plain file calls
for local paths. Files are small (metrics, records) or written whole (models,
checkpoints: built in a local temporary folder, then copied), so object stores that
cannot append or rename work too: :func:`append_line` rewrites the file there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any, Iterator, Optional



def is_uri(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for local paths and URIs alike."""
    if not is_uri(base):
        return os.path.join(base, *parts)
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def _pafs() -> Any:
    """pyarrow's filesystems, imported on first use: commands that only parse flags do not load pyarrow."""
    import pyarrow.fs

    return pyarrow.fs


def _fs(path: str) -> tuple[Any, str]:
    if is_uri(path):
        return _pafs().FileSystem.from_uri(path)
    return _pafs().LocalFileSystem(), os.path.abspath(path)


def exists(path: str) -> bool:
    if not is_uri(path):
        return os.path.exists(path)
    fs, p = _fs(path)
    return fs.get_file_info(p).type != _pafs().FileType.NotFound


def listdir(path: str) -> list[str]:
    """Names of the entries directly in ``path`` (empty if it does not exist)."""
    if not is_uri(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    fs, p = _fs(path)
    infos = fs.get_file_info(_pafs().FileSelector(p, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def sizes(path: str) -> dict[str, int]:
    """Name -> size in bytes of the files directly in the folder ``path``."""
    if not is_uri(path):
        if not os.path.isdir(path):
            return {}
        return {e.name: e.stat().st_size for e in os.scandir(path) if e.is_file()}
    fs, p = _fs(path)
    infos = fs.get_file_info(_pafs().FileSelector(p, allow_not_found=True))
    return {i.base_name: i.size for i in infos if i.type == _pafs().FileType.File}


def makedirs(path: str) -> None:
    if not is_uri(path):
        os.makedirs(path, exist_ok=True)
        return
    fs, p = _fs(path)
    fs.create_dir(p, recursive=True)


def read_text(path: str) -> Optional[str]:
    """The file's text, or None if it does not exist."""
    if not is_uri(path):
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return f.read()
    if not exists(path):
        return None
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def write_text(path: str, text: str) -> None:
    """Write the whole file (locally via a temporary name, so readers never see half of it)."""
    if not is_uri(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with _removed_on_failure(tmp):
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        return
    fs, p = _fs(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)  # a no-op on object stores
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole binary file (a picture) to a path or URI."""
    if not is_uri(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return
    fs, p = _fs(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def append_line(path: str, line: str) -> None:
    """Append one line. Locally an append; behind a URI the object is rewritten whole
    (object stores cannot append), so a reader sees the old or the new file, never half a
    line. Each run file has one writer (rank 0 or the driver), so no update is lost."""
    if not is_uri(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write(line + "\n")
        return
    write_text(path, (read_text(path) or "") + line + "\n")


def upload_file(local_file: str, dest: str) -> None:
    """Copy a local file to ``dest``, which appears whole. Locally the copy is written next
    to ``dest`` and renamed there: a rename across filesystems (``/tmp`` to NFS or another
    mount) fails with EXDEV."""
    if not is_uri(dest):
        tmp = f"{dest}.tmp-{os.getpid()}"
        with _removed_on_failure(tmp):
            shutil.copyfile(local_file, tmp)
            os.replace(tmp, dest)
        return
    fs, p = _fs(dest)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    _pafs().copy_files(local_file, p, source_filesystem=_pafs().LocalFileSystem(), destination_filesystem=fs)


@contextlib.contextmanager
def _removed_on_failure(tmp: str) -> Iterator[None]:
    """A half-written temporary copy is removed when its write fails (a full disk: removing
    it also frees the room to record the failure)."""
    try:
        yield
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)
        raise


def writable(path: str) -> Optional[str]:
    """Why raytrain cannot write runs under the local folder ``path`` (None: it can).
    URIs are not checked here; Ray Train checks them when it starts."""
    if is_uri(path):
        return None
    if os.path.exists(path) and not os.path.isdir(path):
        return "is a file, not a folder"
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".raytrain-probe-"):
            pass
    except OSError as e:
        return f"is not writable ({e.strerror or e})"
    return None


def upload_dir(local_dir: str, dest: str) -> None:
    """Copy a local folder to ``dest`` (replacing nothing that is not in ``local_dir``).

    Locally the copy is made under a temporary name and renamed, so ``dest`` appears whole.
    """
    if not is_uri(dest):
        tmp = f"{dest}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        with _removed_on_failure(tmp):
            shutil.copytree(local_dir, tmp)
            if os.path.isdir(dest):
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        return
    fs, p = _fs(dest)
    fs.create_dir(p, recursive=True)
    _pafs().copy_files(local_dir, p, source_filesystem=_pafs().LocalFileSystem(), destination_filesystem=fs)


def download_file(path: str, local: str) -> None:
    """Copy the file or folder at a URI to the local path ``local``."""
    fs, p = _fs(path)
    _pafs().copy_files(p, local, source_filesystem=fs)


def delete_file(path: str) -> None:
    """Remove a file if it is there."""
    if not is_uri(path):
        if os.path.exists(path):
            os.remove(path)
        return
    fs, p = _fs(path)
    if fs.get_file_info(p).type != _pafs().FileType.NotFound:
        fs.delete_file(p)


def delete_dir(path: str) -> None:
    if not is_uri(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, p = _fs(path)
    fs.delete_dir(p)


def local_path(path: str) -> Optional[str]:
    """The local path of ``path`` if it is on this machine's filesystem (also ``file://``), else None."""
    if not is_uri(path):
        return path
    return path[len("file://"):] if path.startswith("file://") else None
