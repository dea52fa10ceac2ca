"""What a partition counts for the operator view (DescribeTaskQueue): add and dispatch rates
over the last minute, and the share of sync matches (sticky hits and fallbacks are the
engine's, sticky.py). Counting is a few
integer additions per task; rates are computed only when described."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW_S = 60
"""Rates are averaged over this many whole seconds, the current one excluded."""


@dataclass(slots=True)
class _Rate:
    """Events per second over the last WINDOW_S seconds, in one-second buckets."""

    _buckets: list[int] = field(default_factory=lambda: [0] * (WINDOW_S + 1))
    _second: int = 0

    def _advance(self, second: int) -> None:
        if second - self._second > WINDOW_S:
            self._buckets = [0] * (WINDOW_S + 1)
        else:
            for s in range(self._second + 1, second + 1):
                self._buckets[s % (WINDOW_S + 1)] = 0
        self._second = max(self._second, second)

    def add(self, second: int, n: int = 1) -> None:
        self._advance(second)
        self._buckets[second % (WINDOW_S + 1)] += n

    def per_second(self, second: int, *, since: int) -> float:
        """Average over the whole seconds before `second`, not before `since` (a partition
        loaded a moment ago is not averaged over time it did not exist)."""
        self._advance(second)
        span = min(WINDOW_S, second - since)
        if span <= 0:
            return 0.0
        total = sum(self._buckets[s % (WINDOW_S + 1)] for s in range(second - span, second))
        return total / span


@dataclass(slots=True)
class PartitionStats:
    clock: Callable[[], float]
    """Seconds (monotonic or wall, as long as it does not go back)."""
    _since: int = -1
    _added: _Rate = field(default_factory=_Rate)
    _dispatched: _Rate = field(default_factory=_Rate)
    sync_matched: int = 0
    """Dispatched without being persisted, since the partition loaded."""
    dispatched: int = 0

    def _now(self) -> int:
        second = int(self.clock())
        if self._since < 0:
            self._since = second
        return second

    def added(self) -> None:
        self._added.add(self._now())

    def dispatched_task(self, *, sync: bool) -> None:
        self._dispatched.add(self._now())
        self.dispatched += 1
        if sync:
            self.sync_matched += 1

    def add_rate(self) -> float:
        now = self._now()
        return self._added.per_second(now, since=self._since)

    def dispatch_rate(self) -> float:
        now = self._now()
        return self._dispatched.per_second(now, since=self._since)

    def sync_match_ratio(self) -> float:
        return self.sync_matched / self.dispatched if self.dispatched else 0.0
