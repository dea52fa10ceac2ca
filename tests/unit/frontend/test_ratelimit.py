"""Per-namespace token buckets, driven by a fake clock (no sleeps)."""

from __future__ import annotations

import pytest

from tideflow.api.v1 import namespace_pb2
from tideflow_server.frontend.ratelimit import (
    NamespaceRateLimiter,
    RateOverride,
    overrides_from_config,
)
from tideflow_server.rpc.errors import ResourceExhausted


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def limiter(clock: FakeClock, rps: float = 10, burst: int = 5) -> NamespaceRateLimiter:
    return NamespaceRateLimiter(default_rps=rps, default_burst=burst, clock=clock)


def take(rl: NamespaceRateLimiter, namespace: str, n: int, **kwargs: float | int | None) -> int:
    """How many of n calls were granted."""
    return sum(rl.try_acquire(namespace, **kwargs) for _ in range(n))  # type: ignore[arg-type]


def test_burst_then_refusal(clock: FakeClock) -> None:
    rl = limiter(clock)
    assert take(rl, "docs", 5) == 5
    assert not rl.try_acquire("docs")


def test_refills_at_the_rate_over_time(clock: FakeClock) -> None:
    rl = limiter(clock, rps=10, burst=5)
    assert take(rl, "docs", 5) == 5
    clock.advance(0.05)  # half a token
    assert not rl.try_acquire("docs")
    clock.advance(0.05)
    assert rl.try_acquire("docs")
    assert not rl.try_acquire("docs")
    clock.advance(0.3)
    assert take(rl, "docs", 10) == 3


def test_refill_stops_at_the_burst(clock: FakeClock) -> None:
    rl = limiter(clock, rps=10, burst=5)
    take(rl, "docs", 5)
    clock.advance(3600)
    assert take(rl, "docs", 10) == 5


def test_a_refusal_takes_nothing(clock: FakeClock) -> None:
    rl = limiter(clock, rps=1, burst=1)
    assert rl.try_acquire("docs")
    clock.advance(0.5)
    assert not rl.try_acquire("docs")
    clock.advance(0.5)
    assert rl.try_acquire("docs")


def test_namespaces_are_isolated(clock: FakeClock) -> None:
    rl = limiter(clock)
    assert take(rl, "docs", 10) == 5
    assert take(rl, "billing", 10) == 5
    assert not rl.try_acquire("docs")


def test_overrides_set_rate_and_burst_per_namespace(clock: FakeClock) -> None:
    rl = limiter(clock, rps=10, burst=5)
    assert take(rl, "big", 100, rps=100, burst=50) == 50
    clock.advance(0.1)
    assert take(rl, "big", 100, rps=100, burst=50) == 10
    assert take(rl, "small", 100) == 5


def test_an_override_change_applies_to_the_existing_bucket(clock: FakeClock) -> None:
    rl = limiter(clock, rps=10, burst=5)
    assert rl.try_acquire("docs")  # 4 left
    # The namespace's burst shrank to 2: the bucket is clamped to it.
    assert take(rl, "docs", 10, burst=2) == 2


def test_zero_burst_means_one_second_of_tokens(clock: FakeClock) -> None:
    rl = limiter(clock, rps=3, burst=0)
    assert take(rl, "docs", 10) == 3
    assert take(rl, "slow", 10, rps=0.2) == 1


@pytest.mark.parametrize("rps", [0.0, -1.0, float("inf")])
def test_non_positive_or_infinite_rate_is_unlimited(clock: FakeClock, rps: float) -> None:
    rl = limiter(clock, rps=rps)
    assert take(rl, "docs", 10_000) == 10_000
    assert len(rl) == 0


def test_an_unlimited_override_on_a_limited_server(clock: FakeClock) -> None:
    rl = limiter(clock, rps=1, burst=1)
    assert take(rl, "docs", 3) == 1
    assert take(rl, "docs", 100, rps=0) == 100
    assert len(rl) == 0  # the namespace's bucket went with its limit


def test_cost_zero_is_exempt_and_cost_counts(clock: FakeClock) -> None:
    rl = limiter(clock, rps=10, burst=5)
    assert take(rl, "docs", 1000, cost=0) == 1000
    assert rl.try_acquire("docs", cost=4)
    assert not rl.try_acquire("docs", cost=2)
    assert rl.try_acquire("docs", cost=1)
    with pytest.raises(ValueError, match="cost"):
        rl.try_acquire("docs", cost=-1)


def test_a_cost_above_the_burst_runs_on_a_full_bucket_and_leaves_debt(clock: FakeClock) -> None:
    rl = limiter(clock, rps=1, burst=2)
    assert rl.try_acquire("docs", cost=5)  # would never fit; allowed once the bucket is full
    clock.advance(4.5)  # -3 + 4.5 = 1.5 tokens, still short of the burst of 2
    assert not rl.try_acquire("docs", cost=5)
    clock.advance(0.5)
    assert rl.try_acquire("docs", cost=5)


def test_check_raises_resource_exhausted_with_retry_after(clock: FakeClock) -> None:
    rl = limiter(clock, rps=4, burst=2)
    rl.check("docs")
    rl.check("docs")
    clock.advance(0.1)  # 0.4 tokens: 0.6 more at 4/s is 150 ms
    with pytest.raises(ResourceExhausted) as raised:
        rl.check("docs")
    error = raised.value
    assert error.reason == "NAMESPACE_RATE_LIMITED"
    assert error.metadata == {"namespace": "docs", "retry_after_ms": "150"}
    assert "docs" in error.message
    clock.advance(0.15)
    rl.check("docs")


def test_retry_after_uses_the_override_rate(clock: FakeClock) -> None:
    rl = limiter(clock, rps=100, burst=1)
    rl.check("docs", rps=0.5)
    with pytest.raises(ResourceExhausted) as raised:
        rl.check("docs", rps=0.5)
    assert raised.value.metadata["retry_after_ms"] == "2000"


def test_retry_after_is_at_least_one_millisecond(clock: FakeClock) -> None:
    rl = limiter(clock, rps=1_000_000, burst=1)
    rl.check("docs")
    with pytest.raises(ResourceExhausted) as raised:
        rl.check("docs")
    assert raised.value.metadata["retry_after_ms"] == "1"


def test_idle_full_buckets_are_dropped(clock: FakeClock) -> None:
    rl = NamespaceRateLimiter(10, 5, clock, idle_seconds=60)
    for i in range(100):
        rl.try_acquire(f"ns-{i}")
    assert len(rl) == 100
    clock.advance(59)
    rl.try_acquire("other")
    assert len(rl) == 101
    clock.advance(2)
    rl.try_acquire("other")
    assert len(rl) == 1


def test_an_idle_bucket_still_in_debt_is_kept(clock: FakeClock) -> None:
    rl = NamespaceRateLimiter(0.01, 1, clock, idle_seconds=10)
    assert rl.try_acquire("docs", cost=3)  # 2 tokens of debt: 300 s to refill
    clock.advance(100)
    rl.try_acquire("other")
    assert not rl.try_acquire("docs")


def test_bucket_count_is_capped(clock: FakeClock) -> None:
    rl = NamespaceRateLimiter(10, 5, clock, max_buckets=3)
    for ns in ("a", "b", "c", "d", "e"):
        assert rl.try_acquire(ns)
    assert len(rl) == 3
    # The most recently used survive: "e" still has 4 tokens.
    assert take(rl, "e", 10) == 4


def test_a_clock_stepping_back_refills_nothing(clock: FakeClock) -> None:
    rl = limiter(clock, rps=10, burst=1)
    assert rl.try_acquire("docs")
    clock.advance(-5)
    assert not rl.try_acquire("docs")
    clock.advance(5.1)
    assert rl.try_acquire("docs")


def test_overrides_from_config_read_zero_as_the_default() -> None:
    assert overrides_from_config(namespace_pb2.RateLimits()) == RateOverride(None, None)
    configured = namespace_pb2.RateLimits(requests_per_second=50, burst=80)
    assert overrides_from_config(configured) == RateOverride(50.0, 80)


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="default_rps"):
        NamespaceRateLimiter(float("nan"), 1)
    with pytest.raises(ValueError, match="max_buckets"):
        NamespaceRateLimiter(1, 1, max_buckets=0)
    with pytest.raises(ValueError, match="min_rps"):
        NamespaceRateLimiter(1, 1, min_rps=0)


@pytest.mark.parametrize("rps", [1e-320, 1e-300, 5e-324])
def test_a_stored_rate_too_small_to_wait_for_waits_at_the_minimum(
    clock: FakeClock, rps: float
) -> None:
    # Registration refuses such rates now; records stored before must not break every call.
    rl = limiter(clock, rps=10, burst=5)
    rl.check("docs", rps=rps, burst=1)
    with pytest.raises(ResourceExhausted) as raised:
        rl.check("docs", rps=rps, burst=1)
    # One token at the minimum rate of 0.01/s.
    assert raised.value.metadata["retry_after_ms"] == "100000"
    assert "0.01 requests per second" in raised.value.message


def test_a_default_rate_below_the_minimum_counts_as_the_minimum(clock: FakeClock) -> None:
    rl = NamespaceRateLimiter(1e-320, 1, clock, min_rps=0.5)
    assert rl.try_acquire("docs")
    clock.advance(1.9)
    assert not rl.try_acquire("docs")
    clock.advance(0.1)
    assert rl.try_acquire("docs")


def test_a_stored_rate_that_is_not_a_number_means_the_default() -> None:
    stored = namespace_pb2.RateLimits(requests_per_second=float("nan"), burst=3)
    assert overrides_from_config(stored) == RateOverride(None, 3)
