"""The node-local cache of data read from object storage (``data.cache_dir``).

A worker keeps the bytes it fetched (an HDF5 block's stored chunks, an image file) in a
folder on its node's local disk, so from epoch 2 on it reads local disk where its shard
fits. Entries are files named by a hash of (URI, the object's size and modification
time, what part of it): an object replaced in the store is a different entry, never a
stale one.

Several workers (processes) on one node share the folder safely: an entry is written
under a temporary name and renamed into place, so a reader sees a whole entry or none;
an entry deleted by another process between listing and reading is a miss. The size
cap (``data.cache_max_gib``) is kept by evicting the least recently used entries (file
modification time, refreshed on every hit) under an exclusive ``flock``, so two
processes never evict at once. A process lists the folder once to learn its size, then
counts what it writes; it evicts when its count passes the cap, and lists the folder
again after every :data:`CHECK_EVERY_BYTES` it writes (what the node's other workers
wrote meanwhile). So the folder may exceed the cap by up to that much per writing process,
and a cache of a million entries is not listed on every write.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from typing import Optional

import numpy as np

CHECK_EVERY_BYTES = 1 << 30
EVICT_TO = 0.9  # evict down to this fraction of the cap, so a full cache does not evict on every write
LOCK_NAME = ".lock"


class NodeCache:
    """A size-capped, LRU, multi-process-safe folder of byte strings.

    Args:
        folder: A folder on the node's local disk (created if missing).
        max_bytes: The cap.
    """

    def __init__(self, folder: str, max_bytes: int):
        self.folder = os.path.abspath(os.path.expanduser(folder))
        self.max_bytes = int(max_bytes)
        os.makedirs(self.folder, exist_ok=True)
        self._written = 0  # since the folder was last listed
        self._known: Optional[int] = None  # the folder's size then, plus what this process wrote since
        self._lock = threading.Lock()

    @staticmethod
    def key(*parts: object) -> str:
        return hashlib.sha1("\0".join(str(p) for p in parts).encode()).hexdigest()

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, key[:2], key)

    def get(self, key: str) -> Optional[bytes]:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                data = f.read()
            os.utime(path)  # most recently used
        except FileNotFoundError:
            return None
        return data

    def contains(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def read_into(self, key: str, out: np.ndarray) -> bool:
        """Fill the (C-contiguous) array ``out`` from the start of an entry, with no
        intermediate copy; False on a miss or an entry shorter than ``out``."""
        path = self._path(key)
        try:
            with open(path, "rb", buffering=0) as f:
                done = f.readinto(memoryview(out).cast("B"))
            os.utime(path)
        except FileNotFoundError:
            return False
        return done == out.nbytes

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError:  # a full disk: the cache is an optimisation, the data was read anyway
            try:
                os.remove(tmp)
            except OSError:
                pass
            return
        with self._lock:
            self._written += len(data)
            if self._known is not None:
                self._known += len(data)
            check = self._known is None or self._written >= CHECK_EVERY_BYTES or self._known > self.max_bytes
            if check:
                self._written = 0
        if check:
            self.evict()

    def size(self) -> int:
        return sum(size for _, _, size in self._entries())

    def _entries(self) -> list[tuple[float, str, int]]:
        out = []
        for sub in os.scandir(self.folder):
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub.path):
                if ".tmp-" in entry.name:
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                out.append((st.st_mtime, entry.path, st.st_size))
        return out

    def evict(self) -> int:
        """Delete least recently used entries until the folder is under ``EVICT_TO`` of the
        cap (nothing if it is under the cap); returns the bytes deleted."""
        with open(os.path.join(self.folder, LOCK_NAME), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = sorted(self._entries())
            total = sum(size for _, _, size in entries)
            if total <= self.max_bytes:
                self._known = total
                return 0
            freed = 0
            for _, path, size in entries:
                if total - freed <= self.max_bytes * EVICT_TO:
                    break
                try:
                    os.remove(path)
                    freed += size
                except FileNotFoundError:
                    pass
            self._known = total - freed
            return freed
