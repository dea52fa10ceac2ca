"""The bench's soak (bench/soak.py), short: a split cluster on PostgreSQL, an open loop of seq3
runs for a minute with a 5 s namespace retention, a row every 10 s. Retention deletes while
the load goes on, so the runs the database holds stay at about rate x (retention + the
deletion's lag) instead of growing with every run started."""

from __future__ import annotations

from pathlib import Path

from bench.harness import Setup
from bench.soak import SoakPlan, bench_soak, markdown

RATE = 30.0
INTERVALS = 6
RETENTION_S = 5.0
INTERVAL_S = 10.0


async def test_a_short_soak_reports_each_interval_and_retention_keeps_up(tmp_path: Path) -> None:
    plan = SoakPlan(
        rate=RATE,
        minutes=INTERVALS * INTERVAL_S / 60,
        interval_s=INTERVAL_S,
        retention_s=RETENTION_S,
    )
    setup = Setup(topology="split", backend="postgres", shards=4)
    result, where = await bench_soak("seq3", plan, setup, tmp_path)

    text = markdown(result, title=f"soak: {where}")
    print("\n" + text)
    assert len(result.intervals) == INTERVALS
    assert result.unfinished == 0
    for interval in result.intervals:
        assert abs(interval.started - RATE * INTERVAL_S) <= 2
        assert interval.failed == 0
        assert interval.p99_ms is not None and interval.cpu_ms_per_run is not None
    assert sum(i.completed for i in result.intervals) >= RATE * INTERVAL_S * (INTERVALS - 1)
    # Without retention the table would hold every run so far (up to 1,800 here).
    held = [i.live_rows["executions"] for i in result.intervals]
    assert max(held[2:]) <= RATE * (RETENTION_S + INTERVAL_S), held
    assert "| interval | started | completed |" in text
