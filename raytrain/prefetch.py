"""Prepare batches in a background thread, at most ``depth`` ahead of the consumer.

Reading and decoding (h5py, numpy) release the GIL for most of their work, so one
thread overlaps them with whatever consumes the batches. Training hands batches to
TensorFlow through :mod:`raytrain.feed` instead; this generator serves consumers in
Python (``raytrain bench``'s loader measurement, :meth:`raytrain.loader.Loader.epochs`).
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator, TypeVar

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterator[T], depth: int) -> Iterator[T]:
    """Yield ``items``, produced by a background thread that stays at most ``depth`` ahead.

    An exception in the producer is re-raised in the consumer. Closing the returned
    generator (or dropping it) stops the producer.
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
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
