"""A worker's image files, decoded by a thread pool, batch by batch, in the epoch's order.

Batches are uint8 ``(batch, height, width, channels)``; TensorFlow scales them to
float32 in [0, 1] inside the training step (as for uint8 HDF5 data). Decoding is
:class:`raytrain.data.image_reader.ImageDecoder`.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np

from raytrain.config import COLOR_MODES
from raytrain.data import store
from raytrain.data.cache import NodeCache
from raytrain.data.image_reader import BadImage, ImageDecoder, read_file
from raytrain.data.loader import Batch, ReadSpec, node_cache
from raytrain.data.shard import Shard
from raytrain.errors import RaytrainError

BATCHES_AHEAD_PER_THREAD = 2  # batches being decoded, per thread, ahead of the one being consumed
FETCH_THREADS_PER_DECODE = 4  # object storage: requests in flight per decoding thread ...
MIN_FETCH_THREADS = 16  # ... and at least this many: a request waits on the network, not the CPU


class ImageLoader:
    """Batches of one worker's images in each epoch's order, decoded by a thread pool.

    The epoch's order is :func:`raytrain.data.order.epoch_order` with every image its own
    block and each partition shuffled whole: a pure function of ``(seed, epoch, stream)``
    and the data, the same for any number of workers, so the rules of
    :mod:`raytrain.data.plan` hold as for HDF5 (no sample twice, equal steps).
    Each batch is one task; ``threads * 2`` batches are decoded ahead of the consumer.

    A bad image (unreadable, corrupt, truncated) stops the run with a
    :class:`RaytrainError` naming the file when ``on_bad_sample`` is ``error``. With
    ``skip`` it is replaced by another image of the same shard, drawn at random (seeded
    by the epoch and the bad sample's position), so batches and step counts do not
    change; the file is remembered in :attr:`skipped` and not read again.

    Args:
        shard: The worker's rows of the index (``file`` holds the image paths).
        decoder: Decodes one file.
        threads: Decoding threads.
        seed: ``data.seed``.
        rank: The worker's rank (part of the order's seed).
        stream: Training or validation.
        on_bad_sample: ``error`` or ``skip``.
        notify: Shows a line (a skipped file) to the user; default: stderr.
    """

    def __init__(self, shard: Shard, decoder: ImageDecoder, threads: int, seed: int, rank: int, stream: int,
                 on_bad_sample: str = "error", notify: Optional[Callable[[str], None]] = None,
                 options: Optional[Mapping[str, Any]] = None, cache: Optional[NodeCache] = None):
        self.shard = shard
        self.decoder = decoder
        self.threads = max(1, int(threads))
        self.seed = seed
        self.rank = rank
        self.stream = stream
        self.on_bad_sample = on_bad_sample
        self._notify = notify or (lambda text: sys.stderr.write(text + "\n"))
        self.skipped: dict[str, str] = {}  # path -> why it was skipped
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="raytrain-decode")
        self._paths = shard.files  # one entry per distinct file; shard.file_codes points into it
        self._options = dict(options or {})
        self._cache = cache
        remote = any(store.is_uri(p) for p in self._paths)
        # Object storage: files are fetched on I/O threads, more of them than decoding threads,
        # as soon as their batch is queued, so the store's latency overlaps decoding.
        self._fetch_pool = ThreadPoolExecutor(max(MIN_FETCH_THREADS, FETCH_THREADS_PER_DECODE * self.threads),
                                              thread_name_prefix="raytrain-fetch") if remote else None

    @classmethod
    def open(cls, spec: ReadSpec, shard: Shard, rank: int, stream: int, notify: Callable[[str], None]) -> "ImageLoader":
        """The loader of ``shard`` as ``spec`` says (the :data:`raytrain.data.loader.LoaderFactory` of images)."""
        d = spec.data
        decoder = ImageDecoder(tuple(d.image_size), COLOR_MODES[d.color_mode], d.interpolation)
        return cls(shard, decoder, spec.threads, d.seed, rank, stream, d.on_bad_sample, notify, d.storage_options,
                   node_cache(d))

    def _fetch(self, path: str) -> Any:
        """A file's bytes (uint8), or the :class:`BadImage` saying why it cannot be read.
        With a node cache, an object is fetched once per node (keyed by its URI: objects
        are expected not to change in place; clear data.cache_dir after replacing one)."""
        key = NodeCache.key(path) if self._cache and store.is_uri(path) else ""
        cached = self._cache.get(key) if key else None
        if cached is not None:
            return np.frombuffer(cached, dtype=np.uint8)
        try:
            data = read_file(path, self._options)
        except OSError as e:
            return BadImage(f"cannot be read ({e.strerror or e})")
        if key:
            self._cache.put(key, data.tobytes())
        return data

    def _replacement(self, epoch: int, position: int, attempt: int) -> int:
        rng = np.random.default_rng([self.seed, epoch, self.rank, self.stream, position, attempt])
        return int(rng.integers(len(self.shard)))

    def _skip(self, path: str, reason: str) -> None:
        with self._lock:
            if path in self.skipped:
                return
            self.skipped[path] = reason
        self._notify(f"raytrain: skipped bad image {path}: {reason}")

    def _decode_batch(self, epoch: int, positions: np.ndarray, fetched: Optional[list[Future]] = None) -> Batch:
        s = self.shard
        h, w = self.decoder.size
        x = np.empty((len(positions), h, w, self.decoder.channels), dtype=np.uint8)
        y = s.labels[positions].copy()
        for i, start in enumerate(positions):
            position = int(start)
            for attempt in range(len(s) + 1):
                path = self._paths[s.file_codes[position]]
                if path not in self.skipped:
                    try:
                        data = fetched[i].result() if fetched is not None and attempt == 0 else \
                            self._fetch(path) if self._fetch_pool is not None else None
                        if isinstance(data, BadImage):
                            raise data
                        self.decoder.decode_into(path, x[i], data)
                        break
                    except BadImage as e:
                        if self.on_bad_sample == "error":
                            raise RaytrainError(
                                f"image {path} {e}; fix or remove the file, or set data.on_bad_sample: skip "
                                "(--on-bad-sample skip) to train without it"
                            ) from None
                        self._skip(path, str(e))
                position = self._replacement(epoch, int(start), attempt)
                y[i] = s.labels[position]
            else:
                raise RaytrainError(
                    f"worker {self.rank}: every image it was given is bad ({len(self.skipped)} skipped); check the data"
                )
        return x, y

    def epoch(self, epoch: int, steps: int, batch: int, tail: bool = False, start: int = 0,
              offset: int = 0) -> Iterator[Batch]:
        """Yield batches ``start .. steps - 1`` ``(x uint8, labels)`` of ``batch`` images for
        ``epoch`` (with ``tail``, every image once, the last batch shorter: see the HDF5 loader)."""
        n = len(self.shard)
        positions, _ = self.shard.epoch_order(None, self.seed, epoch, self.stream, offset)
        need = min(steps * batch, n) if tail else steps * batch
        assert need <= n, "plan_steps keeps every rank's steps within its shard"
        starts = iter(range(start * batch, need, batch))
        pending: deque[Any] = deque()
        try:
            for start in starts:
                part = positions[start : start + batch]
                fetched = None
                if self._fetch_pool is not None:
                    files = [self._paths[self.shard.file_codes[p]] for p in part]
                    fetched = [self._fetch_pool.submit(self._fetch, path) for path in files]
                pending.append(self._pool.submit(self._decode_batch, epoch, part, fetched))
                if len(pending) > self.threads * BATCHES_AHEAD_PER_THREAD:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # the consumer stopped early: drop the work queued for it
                future.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._fetch_pool is not None:
            self._fetch_pool.shutdown(wait=True, cancel_futures=True)
