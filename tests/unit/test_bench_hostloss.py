"""The host-loss figures of the bench (bench/hostloss.py): the dip, the recovery, the report's
section and the chart, from a synthetic window."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import load
from bench.chart import dip_chart
from bench.hostloss import Fault, FaultResult, completions_by_second, recovery
from bench.report import Report, SystemRun, Window, summarise_system


def test_a_fault_is_a_role_and_a_time() -> None:
    assert Fault.parse("history@20") == Fault("history", 20.0)
    assert Fault.parse("matching@2.5") == Fault("matching", 2.5)
    for bad in ("frontend@3", "history", "history@0", "history@-1"):
        with pytest.raises(ValueError, match="--kill"):
            Fault.parse(bad)


def _window_with_a_dip() -> load.Measured:
    """10 runs/s offered for 10 s; nothing completes in seconds 4 and 5, half in second 6."""
    start = 50.0
    closes = {second: 10 for second in range(10)} | {4: 0, 5: 0, 6: 5}
    samples = []
    for second, n in closes.items():
        for i in range(n):
            at = start + second + i / 10
            samples.append(load.Sample(f"r{second}-{i}", at - 0.1, at - 0.1, at, ok=True))
    samples.append(load.Sample("failed", start + 1, start + 1, start + 1.5, ok=False))
    samples.append(load.Sample("late", start + 9, start + 9, start + 10.5, ok=True))
    return load.Measured("open", None, 10.0, 10.0, window_start=start, all_samples=samples)


def test_the_dip_and_the_recovery_come_from_completions_per_second() -> None:
    per_second = completions_by_second(_window_with_a_dip())
    # A failed run does not count, nor one that completed after the window.
    assert per_second == [10, 10, 10, 10, 0, 0, 5, 10, 10, 10]
    recovered, lowest = recovery(per_second, at=3.5, rate=10.0)
    assert (recovered, lowest) == (3.5, 0)  # from 3.5 s to second 7, back for 3 s in a row
    assert recovery([10, 10, 0, 0, 9, 9, 10], at=1.5, rate=10.0) == (2.5, 0)
    assert recovery([10, 10, 0, 0, 9, 5, 10], at=1.5, rate=10.0) == (None, 0)  # not 3 s back


def test_the_report_shows_the_host_loss_and_charts_the_dip(tmp_path: Path) -> None:
    per_second = completions_by_second(_window_with_a_dip())
    fault = FaultResult(
        role="history",
        process="history-1",
        at_s=3.5,
        reowned_s=11.2,
        shards_moved=8,
        completions_by_second=per_second,
        recovered_s=3.5,
        lowest_per_s=0,
        runs_checked=100,
        histories_checked=40,
    )
    window = Window(
        mode="open",
        inflight=None,
        target_rate=10.0,
        completed=95,
        seconds=10.0,
        latencies_ms=[20.0] * 95,
        schedule_to_start_ms=[],
        cpu_s={},
        fault=fault.to_json(),
    )
    system = summarise_system(SystemRun("tideflow", "0", "seq3", [], [window]))
    report = Report("now", "seq3", "cluster", "postgres", {}, {}, [system])
    text = report.markdown()
    assert "## Host loss (tideflow, open 10/s)" in text
    assert "its 8 shards owned again after **11.2 s**" in text
    assert "Runs lost: **0** of 100" in text
    assert "   4 s     0  <- kill" not in text and "   3 s    10 " in text
    assert "<- kill" in text.splitlines()[text.splitlines().index("```") + 4]
    chart = tmp_path / "dip.png"
    assert dip_chart(report.systems, chart, title="t")
    assert chart.read_bytes().startswith(b"\x89PNG")
    system.windows[0].fault = None
    assert not dip_chart(report.systems, tmp_path / "none.png", title="t")
