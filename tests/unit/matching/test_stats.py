"""The operator view's counters: rates over the last minute, the sync-match share."""

from __future__ import annotations

import pytest

from tideflow_server.matching.stats import WINDOW_S, PartitionStats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rates_average_over_whole_seconds_since_load() -> None:
    clock = Clock()
    stats = PartitionStats(clock)
    for second in range(10):
        clock.now = 1000.0 + second + 0.5
        for _ in range(5):
            stats.added()
        for _ in range(3):
            stats.dispatched_task(sync=second % 2 == 0)
    clock.now = 1010.2
    assert stats.add_rate() == pytest.approx(5.0)
    assert stats.dispatch_rate() == pytest.approx(3.0)
    assert stats.sync_match_ratio() == pytest.approx(0.5)


def test_old_seconds_leave_the_window() -> None:
    clock = Clock()
    stats = PartitionStats(clock)
    stats.added()  # the partition's first second
    for _ in range(120):
        stats.added()
    clock.now += 1
    stats.added()
    clock.now += WINDOW_S + 5
    # Every add is now more than a minute old.
    assert stats.add_rate() == 0.0
    clock.now += 1
    stats.added()
    clock.now += 1
    assert stats.add_rate() == pytest.approx(1 / WINDOW_S)


def test_nothing_counted_reads_zero() -> None:
    stats = PartitionStats(Clock())
    assert (stats.add_rate(), stats.dispatch_rate(), stats.sync_match_ratio()) == (0.0, 0.0, 0.0)
