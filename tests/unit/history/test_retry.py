"""Whether a failed attempt is retried, and after how long: `retry_decision` over the policy
recorded in the pending block (the effective one, defaults filled in at registration)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import json_format

from tideflow.api.v1 import common_pb2, failure_pb2
from tideflow.blueprint.language.policy import effective_retry
from tideflow_server.history.blocks import retry_decision
from tideflow_server.internal.v1 import records_pb2

NOW = datetime(2030, 1, 1, tzinfo=UTC)
IN_PROGRESS = common_pb2.RETRY_STATE_IN_PROGRESS
EXHAUSTED = common_pb2.RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED


def pending(attempt: int, **policy: object) -> records_pb2.PendingBlock:
    """A pending block at `attempt`, with the effective policy of a block that sets `policy`,
    jitter off so that delays are exact."""
    given = json_format.ParseDict(policy, common_pb2.RetryPolicy())
    block = records_pb2.PendingBlock(attempt=attempt, block_id="a")
    block.retry_policy.CopyFrom(effective_retry(given))
    block.retry_policy.jitter = 0.0
    block.scheduled_time.FromDatetime(NOW)
    return block


def failure() -> failure_pb2.Failure:
    failed = failure_pb2.Failure(message="boom")
    failed.application_failure_info.type = "Boom"
    return failed


def test_the_default_policy_stops_after_ten_attempts_with_growing_delays() -> None:
    delays = []
    for attempt in range(1, 10):
        state, delay = retry_decision(pending(attempt), failure(), NOW)
        assert state == IN_PROGRESS
        delays.append(delay)
    assert delays == [timedelta(seconds=s) for s in (1, 2, 4, 8, 16, 32, 64, 100, 100)]
    assert retry_decision(pending(10), failure(), NOW) == (EXHAUSTED, None)


def test_minus_one_retries_without_limit_and_the_delay_stays_capped() -> None:
    state, delay = retry_decision(pending(5_000, maximumAttempts=-1), failure(), NOW)
    assert (state, delay) == (IN_PROGRESS, timedelta(seconds=100))


def test_a_recorded_zero_still_reads_as_unlimited() -> None:
    """Blocks scheduled by a server from before the bounded default recorded 0 for
    unlimited; they keep the policy they were scheduled with."""
    block = pending(50)
    block.retry_policy.maximum_attempts = 0
    assert retry_decision(block, failure(), NOW)[0] == IN_PROGRESS


@pytest.mark.parametrize(
    ("policy", "attempt", "delay"),
    [
        ({"initialInterval": "0s"}, 1, timedelta(0)),  # present and zero: retry at once
        ({"initialInterval": "0.5s", "backoffCoefficient": 3.0}, 3, timedelta(seconds=4.5)),
        ({"initialInterval": "1s", "maximumInterval": "3s"}, 4, timedelta(seconds=3)),
    ],
)
def test_delays_follow_the_recorded_policy(
    policy: dict[str, object], attempt: int, delay: timedelta
) -> None:
    assert retry_decision(pending(attempt, **policy), failure(), NOW) == (IN_PROGRESS, delay)


def test_an_older_record_without_intervals_takes_the_engine_defaults() -> None:
    block = pending(2)
    block.retry_policy.ClearField("initial_interval")
    block.retry_policy.ClearField("maximum_interval")
    block.retry_policy.ClearField("backoff_coefficient")
    assert retry_decision(block, failure(), NOW) == (IN_PROGRESS, timedelta(seconds=2))
