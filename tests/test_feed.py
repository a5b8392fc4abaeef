import time

import numpy as np
import pytest

from raytrain.data.feed import QueueFeed


def batches(n: int, produced: list, fail_at: int = -1):
    for i in range(n):
        if i == fail_at:
            raise OSError("disk gone")
        produced.append(i)
        yield np.full((4, 2), i, np.uint8), np.full(4, i, np.int64)


def test_batches_arrive_in_order_split_per_replica():
    import tensorflow as tf

    feed = QueueFeed((2, 2), "uint8", capacity=4, replicas=2)
    feed.start(batches(5, []))
    got = list(feed.dataset(10, lambda x, y: (tf.cast(x, tf.float32), y)).as_numpy_iterator())
    feed.stop()
    assert [int(y[0]) for _, y in got] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # two replica halves per batch
    assert all(x.dtype == np.float32 and x.shape == (2, 2) for x, _ in got)
    assert feed.error is None


def test_an_endless_dataset_says_infinite_and_fails_past_its_entries_instead_of_waiting():
    import tensorflow as tf

    feed = QueueFeed((4, 2), "uint8", capacity=4, replicas=1)
    feed.start(batches(3, []))
    dataset = feed.dataset(2, lambda x, y: (x, y), endless=True)
    # infinite: MultiWorkerMirroredStrategy then skips its per-step all-reduce of "has data"
    assert dataset.cardinality() == tf.data.INFINITE_CARDINALITY
    it = iter(dataset)
    assert [int(next(it)[1][0]) for _ in range(2)] == [0, 1]
    with pytest.raises(tf.errors.FailedPreconditionError, match="infinite number of elements"):
        next(it)  # a third batch is queued, but a step past the planned ones is an error
    feed.stop()


def test_producer_stays_within_the_queue_capacity():
    feed = QueueFeed((4, 2), "uint8", capacity=3, replicas=1)
    produced: list = []
    feed.start(batches(50, produced))
    it = iter(feed.dataset(50, lambda x, y: (x, y)))
    next(it)
    time.sleep(0.5)  # give the producer every chance to run ahead
    # 1 taken, <= 3 queued, and one more the producer is blocked trying to enqueue
    assert len(produced) <= 1 + 3 + 1
    feed.stop()
    assert feed.error is None  # stopping is not a failure


def test_a_reader_error_reaches_the_trainer_and_the_wait_is_measured():
    feed = QueueFeed((4, 2), "uint8", capacity=2, replicas=1)
    feed.start(batches(10, [], fail_at=3))
    it = iter(feed.dataset(10, lambda x, y: (x, y)))
    for _ in range(3):
        next(it)
    with pytest.raises(Exception):
        next(it)  # the queue was closed: the step fails instead of waiting forever
    assert isinstance(feed.error, OSError) and "disk gone" in str(feed.error)
    assert feed.take_waited() >= 0 and feed.take_waited() == 0.0
    feed.stop()
