"""Token buckets and the partition's share of a queue's and a poller's dispatch rate."""

from __future__ import annotations

import pytest

from tideflow.api.v1 import task_queue_pb2
from tideflow_server.matching.ratelimit import (
    DispatchLimits,
    Share,
    TokenBucket,
    poller_share,
    queue_share,
)


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(10.0, 3, now=0.0)
    for _ in range(3):
        assert bucket.ready(0.0)
        bucket.take(0.0)
    assert not bucket.ready(0.0)
    assert bucket.next_token_at(0.0) == pytest.approx(0.1)
    assert not bucket.ready(0.09)
    assert bucket.ready(0.1)
    # Idle for a long time: never more than the burst.
    assert bucket.next_token_at(100.0) == 100.0
    taken = 0
    while bucket.ready(100.0):
        bucket.take(100.0)
        taken += 1
    assert taken == 3


def test_a_bucket_dispatches_its_rate_over_time() -> None:
    bucket = TokenBucket(50.0, 1, now=0.0)
    now, dispatched = 0.0, 0
    while now < 20.0:
        if bucket.ready(now):
            bucket.take(now)
            dispatched += 1
        else:
            now = bucket.next_token_at(now)
    assert dispatched == pytest.approx(1 + 50 * 20, abs=1)


def test_reconfigure_keeps_saved_tokens_up_to_the_new_size() -> None:
    bucket = TokenBucket(1.0, 10, now=0.0)
    bucket.reconfigure(100.0, 2, now=0.0)
    assert (bucket.rate, bucket.burst) == (100.0, 2)
    bucket.take(0.0)
    bucket.take(0.0)
    assert not bucket.ready(0.0)
    assert bucket.next_token_at(0.0) == pytest.approx(0.01)


def test_a_bucket_refuses_a_rate_it_cannot_enforce() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0.0, 1, now=0.0)


def test_the_queue_limit_is_split_over_its_partitions() -> None:
    config = task_queue_pb2.TaskQueueConfig(rate_per_second=50.0, burst=10)
    assert queue_share(config, 4) == Share(12.5, 2.5)
    # Unset burst: a second's worth of the rate.
    assert queue_share(task_queue_pb2.TaskQueueConfig(rate_per_second=50.0), 1) == Share(50, 50)
    # A share of the burst below one token would never dispatch: one at least.
    assert queue_share(task_queue_pb2.TaskQueueConfig(rate_per_second=2.0, burst=1), 4) == Share(
        0.5, 1.0
    )
    assert queue_share(task_queue_pb2.TaskQueueConfig(), 4) is None
    assert poller_share(8.0, 4) == Share(2.0, 2.0)
    assert poller_share(0.0, 4) is None


def test_limits_need_both_the_queue_and_the_pollers_token() -> None:
    limits = DispatchLimits()
    assert limits.empty
    limits.configure(
        task_queue_pb2.TaskQueueConfig(rate_per_second=10.0, burst=2, partitions=1), now=0.0
    )
    limits.poller("slow", 1.0, now=0.0)
    assert not limits.empty
    assert limits.ready("slow", 0.0)
    limits.take("slow", 0.0)
    # The slow poller's one token is spent; another poller takes the queue's second token.
    assert not limits.ready("slow", 0.0)
    assert limits.ready("fast", 0.0)
    limits.take("fast", 0.0)
    assert not limits.ready("fast", 0.0)
    # The queue refills first (0.1 s), the slow poller only after a second.
    assert limits.next_ready_at(["fast"], 0.0) == pytest.approx(0.1)
    assert limits.next_ready_at(["slow"], 0.0) == pytest.approx(1.0)
    assert limits.next_ready_at(["slow", "fast"], 0.0) == pytest.approx(0.1)


def test_limits_drop_their_buckets_when_nothing_is_limited() -> None:
    limits = DispatchLimits()
    limits.configure(task_queue_pb2.TaskQueueConfig(rate_per_second=10.0), now=0.0)
    limits.poller("w", 5.0, now=0.0)
    limits.configure(task_queue_pb2.TaskQueueConfig(), now=1.0)
    assert limits.queue is None and limits.queue_rate == 0.0
    limits.poller("w", 0.0, now=1.0)
    assert limits.empty
