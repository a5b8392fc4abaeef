import threading
import time

import pytest

from raytrain.prefetch import prefetch


def test_items_arrive_in_order():
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))


def test_producer_stays_at_most_depth_ahead():
    produced = []

    def items():
        for i in range(50):
            produced.append(i)
            yield i

    it = prefetch(items(), depth=4)
    assert next(it) == 0
    time.sleep(0.3)  # give the producer every chance to run ahead
    # consumed 1, queue holds <= 4, and the producer may hold one more it is waiting to put
    assert len(produced) <= 1 + 4 + 1
    it.close()


def test_errors_reach_the_consumer():
    def items():
        yield 1
        raise OSError("disk gone")

    it = prefetch(items(), depth=2)
    assert next(it) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(it)


def test_closing_stops_the_producer():
    def items():
        i = 0
        while True:
            yield i
            i += 1

    before = threading.active_count()
    it = prefetch(items(), depth=2)
    next(it)
    it.close()
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        list(prefetch(iter([]), depth=0))
