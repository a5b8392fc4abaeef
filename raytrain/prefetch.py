"""Prepare batches in a background thread, at most ``depth`` ahead of the consumer.

Reading and decoding (h5py, numpy) release the GIL for most of their work, so one
thread overlaps them with whatever consumes the batches. Training hands batches to
TensorFlow through :mod:`raytrain.feed` instead; this generator serves consumers in
Python (``raytrain bench``'s loader measurement, :meth:`raytrain.loader.Loader.epochs`).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Optional, TypeVar

T = TypeVar("T")

_DONE = object()


@dataclass
class PrefetchStats:
    """What the consumer of a prefetched stream waited for (read and reset per epoch)."""

    waited_s: float = 0.0  # seconds the consumer waited on an empty queue
    items: int = 0  # items handed to the consumer

    def take(self) -> tuple[float, int]:
        """Return ``(waited_s, items)`` and reset both to zero."""
        out = (self.waited_s, self.items)
        self.waited_s, self.items = 0.0, 0
        return out


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterator[T], depth: int, stats: Optional[PrefetchStats] = None) -> Iterator[T]:
    """Yield ``items``, produced by a background thread that stays at most ``depth`` ahead.

    An exception in the producer is re-raised in the consumer. Closing the returned
    generator (or dropping it) stops the producer. If ``stats`` is given, the time the
    consumer waits for an item that is not ready yet is added to it.
    """
    if depth < 1:
        raise ValueError(f"`depth` must be a positive integer. Received: depth={depth}")
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(_Failure(e))

    thread = threading.Thread(target=produce, name="raytrain-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = buffer.get_nowait()
            except queue.Empty:
                waited = time.perf_counter()
                item = buffer.get()
                if stats is not None:
                    stats.waited_s += time.perf_counter() - waited
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            if stats is not None:
                stats.items += 1
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
