"""The soak's verdicts (bench/soak.py) from synthetic intervals: p99 against the first
interval's, and the database size over the second half."""

from __future__ import annotations

from bench import load
from bench.soak import SoakPlan, _Reading, summarise


def _readings(sizes: list[int]) -> list[_Reading]:
    return [
        _Reading(cpu={"history": float(i)}, db={"commits": 10 * i, "bytes": size}, live={}, dead=0)
        for i, size in enumerate(sizes)
    ]


def _samples(latency_s: list[float], per_interval: int, interval_s: float) -> list[load.Sample]:
    samples = []
    for index, latency in enumerate(latency_s):
        for n in range(per_interval):
            due = index * interval_s + n * interval_s / per_interval
            samples.append(load.Sample(f"r{index}-{n}", due, due, due + latency, ok=True))
    return samples


def test_p99_and_size_verdicts() -> None:
    plan = SoakPlan(rate=10, minutes=1, interval_s=10, retention_s=10)  # 6 intervals
    steady = _samples([0.02] * 6, 100, 10)
    flat = _readings([0, 100, 200, 300, 300, 305, 310])
    result = summarise(plan, steady, flat, t0=0.0)
    assert len(result.intervals) == 6
    assert [i.started for i in result.intervals] == [100] * 6
    assert result.intervals[0].p99_ms == result.p99_baseline_ms
    assert result.p99_ok and result.size_ok, result.size_note
    assert result.intervals[1].commits_per_run == 0.1  # 10 commits over 100 runs

    slower = _samples([0.02, 0.02, 0.02, 0.02, 0.02, 0.05], 100, 10)
    assert not summarise(plan, slower, flat, t0=0.0).p99_ok
    growing = _readings([0, 100, 200, 300, 400, 500, 600])
    grew = summarise(plan, steady, growing, t0=0.0)
    assert not grew.size_ok and "+50.0%" in grew.size_note
