"""Per-namespace token buckets over the public API.

Each namespace has a bucket of `burst` tokens refilled at `rps` tokens a second; a call takes
`cost` tokens. The handler chooses the cost: 0 exempts a call (e.g. long polls, which matching
limits by dispatch rate instead), more than 1 makes an expensive call count for more.

Memory is bounded: a bucket that has been idle long enough to refill completely is dropped (a
fresh bucket behaves the same), and past `max_buckets` the least recently used goes first.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from tideflow.api.v1 import namespace_pb2
from tideflow_server.frontend.limits import DEFAULT_LIMITS
from tideflow_server.rpc.errors import ResourceExhausted

__all__ = ["RATE_LIMITED_REASON", "NamespaceRateLimiter", "RateOverride", "overrides_from_config"]

RATE_LIMITED_REASON = "NAMESPACE_RATE_LIMITED"
# Refill arithmetic on float clock readings drifts by ulps; a token short by less than this is
# a whole token, or a caller that waited exactly retry_after would be refused again.
_EPSILON = 1e-9


class RateOverride(NamedTuple):
    """A namespace's own rate and burst; None takes the limiter's default."""

    rps: float | None = None
    burst: int | None = None


def overrides_from_config(rate_limits: namespace_pb2.RateLimits) -> RateOverride:
    """`NamespaceConfig.rate_limits` as overrides: zero there means the server default, and
    so does a rate that is not a number (registration refuses it; a record may predate that)."""
    rps = rate_limits.requests_per_second
    return RateOverride(
        rps=None if math.isnan(rps) else rps or None,
        burst=rate_limits.burst or None,
    )


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float
    rps: float
    capacity: float


class NamespaceRateLimiter:
    """Token bucket per namespace, deterministic under an injected clock.

    `rps <= 0` (by default or by override) means unlimited, and a positive rate below
    `min_rps` counts as `min_rps`, so a wait is always a number of milliseconds an int holds.
    A burst of 0 or less means one second's worth of tokens (at least 1). A call costing more
    than the burst is let through when the bucket is full and leaves it in debt, so a small
    burst never starves it.
    """

    def __init__(
        self,
        default_rps: float,
        default_burst: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        idle_seconds: float = 300.0,
        max_buckets: int = 100_000,
        min_rps: float = DEFAULT_LIMITS.min_namespace_rps,
    ) -> None:
        if math.isnan(default_rps):
            raise ValueError("default_rps must be a number")
        if idle_seconds < 0 or max_buckets < 1:
            raise ValueError("idle_seconds must be >= 0 and max_buckets >= 1")
        if not 0 < min_rps < math.inf:
            raise ValueError("min_rps must be a positive number")
        self.default_rps = default_rps
        self.min_rps = min_rps
        self.default_burst = default_burst
        self._clock = clock
        self._idle_seconds = idle_seconds
        self._max_buckets = max_buckets
        # Least recently used first, so eviction reads from the front.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Buckets held now (tests and metrics)."""
        return len(self._buckets)

    def try_acquire(
        self,
        namespace: str,
        *,
        rps: float | None = None,
        burst: int | None = None,
        cost: float = 1.0,
    ) -> bool:
        """Takes `cost` tokens from the namespace's bucket; False (and takes nothing) when it
        has too few."""
        return self._acquire(namespace, rps, burst, cost) is None

    def check(
        self,
        namespace: str,
        *,
        rps: float | None = None,
        burst: int | None = None,
        cost: float = 1.0,
    ) -> None:
        """`try_acquire`, raising `ResourceExhausted` (reason NAMESPACE_RATE_LIMITED, with
        `namespace` and `retry_after_ms` in its metadata, and a RetryInfo) when refused."""
        wait = self._acquire(namespace, rps, burst, cost)
        if wait is None:
            return
        retry_after_ms = max(1, math.ceil(wait * 1000))
        rate = self._rate(rps)
        raise ResourceExhausted(
            f"namespace {namespace!r} is over its rate limit of {rate:g} requests per second; "
            f"retry after {retry_after_ms} ms",
            reason=RATE_LIMITED_REASON,
            metadata={"namespace": namespace},
            retry_after_ms=retry_after_ms,
        )

    def _rate(self, rps: float | None) -> float:
        rate = self.default_rps if rps is None else rps
        # A rate of 1e-320 would make a wait of 1e320 seconds: infinity once in milliseconds.
        return max(rate, self.min_rps) if rate > 0 else rate

    def _capacity(self, rate: float, burst: int | None) -> float:
        chosen = self.default_burst if burst is None else burst
        if chosen > 0:
            return float(chosen)
        return float(max(1, math.ceil(rate)))

    def _acquire(
        self, namespace: str, rps: float | None, burst: int | None, cost: float
    ) -> float | None:
        """None when granted, else the seconds until it would be."""
        if cost < 0 or math.isnan(cost):
            raise ValueError(f"cost must be >= 0, got {cost}")
        rate = self._rate(rps)
        if math.isnan(rate):
            raise ValueError("rps must be a number")
        unlimited = rate <= 0 or math.isinf(rate)
        if cost == 0 or (unlimited and namespace not in self._buckets):
            return None
        with self._lock:
            now = self._clock()
            self._evict(now, keep=namespace)
            if unlimited:
                self._buckets.pop(namespace, None)
                return None
            capacity = self._capacity(rate, burst)
            bucket = self._buckets.get(namespace)
            if bucket is None:
                bucket = _Bucket(tokens=capacity, updated=now, rps=rate, capacity=capacity)
                self._buckets[namespace] = bucket
            else:
                self._refill(bucket, now)
                # The namespace's limits may have changed since the last call.
                bucket.rps = rate
                bucket.capacity = capacity
                bucket.tokens = min(bucket.tokens, capacity)
                self._buckets.move_to_end(namespace)
            needed = min(cost, capacity)
            if bucket.tokens + _EPSILON >= needed:
                bucket.tokens -= cost
                return None
            return (needed - bucket.tokens) / rate

    @staticmethod
    def _refill(bucket: _Bucket, now: float) -> None:
        # A clock that steps back refills nothing rather than draining.
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(bucket.capacity, bucket.tokens + elapsed * bucket.rps)
        bucket.updated = max(bucket.updated, now)

    def _evict(self, now: float, *, keep: str) -> None:
        """Drops idle buckets from the least recently used end; at `max_buckets`, also the
        least recently used one, to make room for `keep` when it has no bucket yet."""
        while self._buckets:
            namespace, bucket = next(iter(self._buckets.items()))
            idle = now - bucket.updated
            refilled = idle >= self._idle_seconds and idle * bucket.rps >= (
                bucket.capacity - bucket.tokens
            )
            full = len(self._buckets) >= self._max_buckets and keep not in self._buckets
            if not (refilled or full):
                break
            del self._buckets[namespace]
