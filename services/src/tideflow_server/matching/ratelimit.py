"""Dispatch rate limits of one task queue partition: token buckets, pure, with time passed in.

A queue's operator limit (`TaskQueueConfig.rate_per_second`, `burst`) is split evenly over
the partitions its tasks spread over, so the queue dispatches at most its rate cluster-wide
with no coordination between hosts. A poller's declared rate (`max_tasks_per_second`) caps it
further, split the same way, per poller identity. A partition hands a task to a poll only
when both buckets hold a token, and takes one from each when it does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from tideflow.api.v1 import task_queue_pb2
from tideflow_server import queue_config

# Float sums of refills may fall a hair short of a whole token: count that as one, and never
# ask to be woken sooner than this (a timer that fires at once would spin).
_EPSILON = 1e-6
_MIN_WAIT_S = 1e-4


def spread_over(config: task_queue_pb2.TaskQueueConfig) -> int:
    """Partitions the queue's adds spread over, which share its rate evenly."""
    return queue_config.write_partitions(config)


class TokenBucket:
    """`rate` tokens a second, at most `burst` at once; starts full."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate, self.burst = rate, burst
        self._tokens, self._at = burst, now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def ready(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= 1 - _EPSILON

    def take(self, now: float) -> None:
        """Spend one token (the caller saw `ready`)."""
        self._refill(now)
        self._tokens -= 1

    def next_token_at(self, now: float) -> float:
        """When a token is there: `now` if one is."""
        if self.ready(now):
            return now
        return now + max(_MIN_WAIT_S, (1 - self._tokens) / self.rate)

    def reconfigure(self, rate: float, burst: float, now: float) -> None:
        """New rate and size from `now`; the tokens saved so far stay, up to the new size."""
        self._refill(now)
        self.rate, self.burst = rate, burst
        self._tokens = min(self._tokens, burst)


@dataclass(frozen=True, slots=True)
class Share:
    """One partition's share of a limit."""

    rate: float
    burst: float


def queue_share(config: task_queue_pb2.TaskQueueConfig, partitions: int) -> Share | None:
    """This partition's share of the queue's limit; None when the queue has none."""
    if config.rate_per_second <= 0:
        return None
    return Share(
        config.rate_per_second / partitions,
        max(1.0, queue_config.burst(config) / partitions),
    )


def poller_share(declared_rate: float, partitions: int) -> Share | None:
    """A poller's declared rate, shared like the queue's; it may take a second's worth at once."""
    if declared_rate <= 0:
        return None
    rate = declared_rate / partitions
    return Share(rate, max(1.0, math.ceil(rate)))


class DispatchLimits:
    """The buckets one partition enforces: the queue's share, and each limited poller's."""

    def __init__(self) -> None:
        self.partitions = 1
        self.queue: TokenBucket | None = None
        self._pollers: dict[str, tuple[float, TokenBucket]] = {}

    @property
    def empty(self) -> bool:
        """No bucket: the partition may drop this object and skip every check."""
        return self.queue is None and not self._pollers

    @property
    def queue_rate(self) -> float:
        return self.queue.rate if self.queue is not None else 0.0

    def configure(self, config: task_queue_pb2.TaskQueueConfig, now: float) -> None:
        partitions = spread_over(config)
        if partitions != self.partitions:
            self.partitions = partitions
            declared = {identity: rate for identity, (rate, _) in self._pollers.items()}
            self._pollers.clear()
            for identity, rate in declared.items():
                self.poller(identity, rate, now)
        share = queue_share(config, partitions)
        if share is None:
            self.queue = None
        elif self.queue is None:
            self.queue = TokenBucket(share.rate, share.burst, now)
        else:
            self.queue.reconfigure(share.rate, share.burst, now)

    def poller(self, identity: str, declared_rate: float, now: float) -> None:
        """Track `identity`'s declared rate (0 drops its bucket)."""
        known = self._pollers.get(identity)
        if known is not None and known[0] == declared_rate:
            return
        share = poller_share(declared_rate, self.partitions)
        if share is None:
            self._pollers.pop(identity, None)
        elif known is None:
            self._pollers[identity] = (declared_rate, TokenBucket(share.rate, share.burst, now))
        else:
            known[1].reconfigure(share.rate, share.burst, now)
            self._pollers[identity] = (declared_rate, known[1])

    def forget_pollers(self, identities: Iterable[str]) -> None:
        for identity in identities:
            self._pollers.pop(identity, None)

    def ready(self, identity: str, now: float) -> bool:
        if self.queue is not None and not self.queue.ready(now):
            return False
        poller = self._pollers.get(identity)
        return poller is None or poller[1].ready(now)

    def take(self, identity: str, now: float) -> None:
        if self.queue is not None:
            self.queue.take(now)
        poller = self._pollers.get(identity)
        if poller is not None:
            poller[1].take(now)

    def next_ready_at(self, identities: Iterable[str], now: float) -> float:
        """When the first of `identities` (the waiting polls) may take a task."""
        queue_at = self.queue.next_token_at(now) if self.queue is not None else now
        poller_at = math.inf
        for identity in identities:
            poller = self._pollers.get(identity)
            poller_at = min(poller_at, poller[1].next_token_at(now) if poller else now)
        return max(queue_at, poller_at if poller_at != math.inf else now)
