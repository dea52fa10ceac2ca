"""The bench's own logic without a cluster: load shapes on a fake run, the shared report model
(percentiles, per-run figures, peer ratios), the chart, the scenarios and the CPU probe."""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from google.protobuf import json_format
from hdrh.histogram import HdrHistogram

from bench import load
from bench import tideflow as bench_tideflow
from bench.chart import latency_chart
from bench.harness import PeersUnavailable, load_peers
from bench.probes import CpuProbe, Tracked
from bench.report import (
    Report,
    SystemRun,
    Window,
    distribution,
    summarise,
    summarise_system,
)
from bench.scenarios import PAYLOAD_BYTES, SCENARIOS
from tideflow.api.v1 import blueprint_pb2, flow_service_pb2, namespace_pb2
from tideflow.blueprint import validate
from tideflow_server.frontend.limits import DEFAULT_LIMITS
from tideflow_server.frontend.validation import validate_register_namespace


def test_distribution_percentiles_come_from_hdrhistogram() -> None:
    values = [float(v) for v in range(1, 1001)]  # 1..1000 ms
    found = distribution(values)
    assert found is not None
    assert found.count == 1000
    assert found.p50 == pytest.approx(500, rel=0.002)
    assert found.p95 == pytest.approx(950, rel=0.002)
    assert found.p99 == pytest.approx(990, rel=0.002)
    assert found.max == pytest.approx(1000, rel=0.002)
    decoded = HdrHistogram.decode(found.histogram)
    assert decoded.get_total_count() == 1000
    assert distribution([]) is None


def _window(**overrides: object) -> Window:
    fields: dict[str, object] = {
        "mode": "closed",
        "inflight": 10,
        "target_rate": None,
        "completed": 100,
        "seconds": 10.0,
        "latencies_ms": [10.0] * 90 + [50.0] * 10,
        "schedule_to_start_ms": [1.0, 2.0],
        "cpu_s": {"history": 0.5, "worker": 0.1},
    }
    fields.update(overrides)
    return Window(**fields)  # type: ignore[arg-type]


def test_per_run_figures_divide_window_deltas_by_completions() -> None:
    summary = summarise(_window(db={"commits": 1_000, "write_xacts": 800}))
    assert summary.runs_per_s == 10.0
    assert summary.runs_per_day == 864_000
    assert summary.cpu_ms_per_run == {"history": 5.0, "worker": 1.0, "total": 6.0}
    assert summary.db_commits_per_run == 10.0
    assert summary.db_write_xacts_per_run == 8.0
    assert summary.latency_ms is not None and summary.latency_ms.p50 == pytest.approx(10, rel=0.01)
    assert summary.latency_ms.p95 == pytest.approx(50, rel=0.01)
    assert summarise(_window()).db_commits_per_run is None


def test_a_cluster_that_fell_behind_shows_what_it_sustained() -> None:
    behind = summarise_system(
        SystemRun("tideflow", "0", "seq3", [], [_window(closed_in_window=50)])
    )
    assert behind.windows[0].closed_in_window_per_s == 5.0
    assert behind.windows[0].runs_per_s == 10.0
    # The CPU read at the window's edges paid for the 50 runs that completed inside it.
    assert behind.windows[0].cpu_ms_per_run["history"] == 10.0
    report = Report("now", "seq3", "split", "postgres", {}, {}, [behind])
    assert "| 10.0 (5.0 closed in window) |" in report.markdown()


def _peer_result() -> SimpleNamespace:
    window = SimpleNamespace(
        mode="closed",
        inflight=10,
        target_rate=None,
        completed=50,
        seconds=10.0,
        latencies_ms=[20.0] * 50,
        schedule_to_start_ms=[],
        cpu_s={"server": 1.0},
    )
    return SimpleNamespace(
        peer="other",
        version="1.2.3",
        scenario="seq3",
        sequential_ms=[30.0] * 10,
        windows=[window],
        notes="a note",
    )


def test_peers_are_summarised_by_the_same_code_and_compared() -> None:
    ours = SystemRun("tideflow", "0.1.0", "seq3", [15.0] * 10, [_window()])
    theirs = SystemRun.from_peer(_peer_result())
    assert theirs.windows[0].cpu_s == {"server": 1.0}
    report = Report(
        created="now",
        scenario="seq3",
        topology="split",
        backend="postgres",
        plan={"closed_inflight": [10], "open_rates": []},
        environment={},
        systems=[summarise_system(ours), summarise_system(theirs)],
    )
    text = report.markdown()
    assert "| other | closed 10 | 10.0 / 5.0 (2.00x) | 10.0 / 20.0 | 0.50x |" in text
    assert "| other | sequential | - | 15.0 / 30.0 | 0.50x |" in text
    assert "Notes (other): a note" in text
    assert report.to_json()["systems"][1]["windows"][0]["cpu_ms_per_run"]["server"] == 20.0


def test_chart_needs_open_loop_windows(tmp_path: Path) -> None:
    closed = summarise_system(SystemRun("tideflow", "0", "seq3", [], [_window()]))
    assert not latency_chart([closed], tmp_path / "none.png", title="t")
    assert not (tmp_path / "none.png").exists()
    sweep = [_window(mode="open", inflight=None, target_rate=r, completed=r * 10) for r in (5, 9)]
    opened = summarise_system(SystemRun("tideflow", "0", "seq3", [], sweep))
    assert latency_chart([opened], tmp_path / "sweep.png", title="t")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


async def _noop_edge() -> None:
    return None


async def test_closed_loop_keeps_inflight_runs_and_counts_the_window() -> None:
    running = 0
    most = 0
    edges: list[str] = []

    async def run_once(key: str) -> bool:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        return True

    async def start() -> None:
        edges.append("start")

    async def end() -> None:
        edges.append("end")

    measured = await load.closed_loop(
        run_once,
        inflight=4,
        warmup_s=0.1,
        window_s=0.4,
        drain_s=5,
        quiesce_s=5,
        on_window_start=start,
        on_window_end=end,
        prefix="t",
    )
    assert edges == ["start", "end"]
    assert most == 4 and running == 0
    assert 40 <= measured.completions <= 170  # 4 lanes of ~10 ms runs for 0.4 s
    assert measured.failed == 0 and measured.unfinished == 0
    assert all(9 <= ms < 200 for ms in measured.latencies_ms)
    assert len({s.key for s in measured.counted}) == len(measured.counted)


async def test_open_loop_starts_on_the_clock_and_counts_failures() -> None:
    async def run_once(key: str) -> bool:
        await asyncio.sleep(0.005)
        if key.endswith("7"):
            raise RuntimeError("boom")
        return not key.endswith("3")

    measured = await load.open_loop(
        run_once,
        rate=200,
        warmup_s=0.1,
        window_s=0.5,
        drain_s=5,
        quiesce_s=5,
        on_window_start=_noop_edge,
        on_window_end=_noop_edge,
        prefix="o",
    )
    assert len(measured.counted) in (99, 100, 101)  # starts due at 200/s for 0.5 s
    assert measured.failed == pytest.approx(len(measured.counted) * 0.2, abs=3)
    assert measured.unfinished == 0
    assert len(measured.latencies_ms) + measured.failed == len(measured.counted)
    assert max(measured.start_lag_ms) < 100


def test_scenarios_are_valid_blueprints() -> None:
    for scenario in SCENARIOS.values():
        parsed = json_format.ParseDict(scenario.blueprint("f", "q"), blueprint_pb2.Blueprint())
        assert validate(parsed) == [], scenario.name
        externals = sum(1 for b in parsed.blocks if b.HasField("external"))
        for block in parsed.blocks:
            if block.HasField("map_block"):  # its blocks run once per item of the run input
                inner = sum(1 for b in block.map_block.blocks if b.HasField("external"))
                externals += inner * len(scenario.run_input()["items"])
        assert externals == scenario.external_blocks, scenario.name
    assert len(SCENARIOS["payload"].run_input()["data"]) == PAYLOAD_BYTES


def test_cpu_probe_reads_this_process() -> None:
    probe = CpuProbe([Tracked("me", [os.getpid()])])
    before = probe.read()
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    delta = CpuProbe.delta(before, probe.read())
    assert delta["me"] > 0


def test_missing_peers_package_is_a_clear_error() -> None:
    try:
        importlib.import_module("bench.peers")
    except ModuleNotFoundError:
        with pytest.raises(PeersUnavailable, match="bench/peers/"):
            load_peers(["temporal"])
    else:
        with pytest.raises(PeersUnavailable, match="unknown peers"):
            load_peers(["no-such-engine"])


def test_latency_by_second_shows_where_a_stall_was() -> None:
    """Runs are grouped by the second their start fell in; the summary names the slowest."""
    start = 100.0
    samples = [
        load.Sample(f"r{i}", due=start + i * 0.1, issued=start + i * 0.1, ok=True)
        for i in range(30)  # three seconds, ten runs each
    ]
    for i, s in enumerate(samples):
        s.closed = s.due + (0.5 if 10 <= i < 20 else 0.02)  # the second second stalled
    samples[29].ok = False  # a failed run gives no latency
    measured = load.Measured("open", None, 10.0, 3.0, counted=samples, window_start=start)
    by_second = measured.latency_by_second()
    assert [(second, len(values)) for second, values in by_second] == [(0, 10), (1, 10), (2, 9)]
    summary = summarise(_window(latency_by_second=[values for _, values in by_second]))
    assert [s.runs for s in summary.by_second] == [10, 10, 9]
    worst = max(summary.by_second, key=lambda s: s.p99 or 0)
    assert worst.second == 1 and worst.p50 == pytest.approx(500, rel=0.01)
    report = Report(
        "now",
        "seq3",
        "split",
        "postgres",
        {},
        {},
        [
            summarise_system(
                SystemRun(
                    "tideflow",
                    "0",
                    "seq3",
                    [],
                    [_window(latency_by_second=[values for _, values in by_second])],
                )
            )
        ],
    )
    assert "second 1 of the window, 10 runs, p50 500" in report.markdown()


def test_the_bench_namespace_config_is_one_the_frontend_accepts() -> None:
    """The harness lifts its namespace's rate limit; the lifted values stay within what the
    frontend lets a namespace set (a burst over the bound once stopped every bench run)."""
    config = namespace_pb2.NamespaceConfig(rate_limits=bench_tideflow._RATE_LIMITS)
    request = flow_service_pb2.RegisterNamespaceRequest(namespace="bench", config=config)
    validate_register_namespace(request, DEFAULT_LIMITS)  # raises InvalidArgument if not
    assert config.rate_limits.requests_per_second == DEFAULT_LIMITS.max_namespace_rps
