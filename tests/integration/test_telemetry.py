"""Traces and metrics end to end, on real server processes.

A run of a three-block flow yields one trace: the frontend's start, every history decision,
every dispatch and every block attempt in the worker, in processes of their own, each span's
parent in the same trace. After a known workload the Prometheus endpoint shows exactly the
runs started and closed, the block attempts dispatched and the RPCs served by method."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from deploy.local.cluster import TEST_SETTINGS
from deploy.local.otlp import Collector, Span, running_collector
from deploy.ports import free_port
from tests.support.cluster import Cluster, running_sqlite_cluster
from tests.support.example_workers import ROOT
from tideflow import Worker, block
from tideflow.client import Client

BLOCKS = ("a", "b", "c")


def _chain(flow: str, queue: str, block_type: str) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = []
    for i, block_id in enumerate(BLOCKS):
        spec: dict[str, Any] = {
            "id": block_id,
            "external": {"block": block_type},
            "input": "${input}" if i == 0 else f"${{blocks.{BLOCKS[i - 1]}.output}}",
        }
        if i:
            spec["needs"] = [BLOCKS[i - 1]]
        blocks.append(spec)
    return {
        "name": flow,
        "task_queue": queue,
        "timeouts": {"start_to_close": "10s"},
        "blocks": blocks,
        "output": f"${{blocks.{BLOCKS[-1]}.output}}",
    }


def _python_worker(address: str, queue: str, collector: str, log: Path) -> subprocess.Popen[bytes]:
    """The Python example worker, exporting its spans to `collector` over OTLP."""
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{collector}"}
    env["OTEL_BSP_SCHEDULE_DELAY"] = "200"
    argv = [sys.executable, "-m", "workers.python_example", "--address", address]
    argv += ["--task-queue", queue, "--blocks", "conformance", "--drain-timeout-s", "5"]
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def render(trace: list[Span]) -> str:
    """The trace as an indented tree of span names, with where each ran."""
    children: dict[str, list[Span]] = {}
    for span in trace:
        children.setdefault(span.parent_id, []).append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            where = (
                span.instance.split("@")[0] if span.service == "tideflow-server" else span.service
            )
            detail = span.attributes.get("tideflow.block_id") or span.attributes.get(
                "tideflow.decision", ""
            )
            lines.append(f"{'  ' * depth}{span.name} {f'({detail}) ' if detail else ''}[{where}]")
            walk(span.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)


def _of_trace(spans: list[Span], trace_id: str) -> list[Span]:
    return [s for s in spans if s.trace_id == trace_id]


def _complete(spans: list[Span]) -> bool:
    """The run's trace is all there. Each process exports its spans in batches of its own, in
    its own time, so wait for every kind the test looks at: an attempt, a dispatch and an
    answer per block, and every parent."""
    starts = [s for s in spans if s.name == "tideflow.api.v1.FlowService/StartRun"]
    if not starts:
        return False
    trace = _of_trace(spans, starts[0].trace_id)
    ids = {s.span_id for s in trace}
    names = Counter(s.name for s in trace)
    workers = [s for s in trace if s.service == "tideflow-python-worker"]
    return (
        len(workers) == len(BLOCKS)
        and names["block.dispatch"] >= len(BLOCKS)
        and names["tideflow.api.v1.FlowService/RespondBlockCompleted"] >= len(BLOCKS)
        and names["history.decision"] >= 1 + len(BLOCKS)
        and all(s.parent_id in ids for s in trace if s.parent_id)
    )


async def _whole_trace(collector: Collector) -> None:
    try:
        await collector.wait_for(_complete)
    except TimeoutError:
        starts = [s for s in collector.spans if s.name.endswith("/StartRun")]
        trace = _of_trace(collector.spans, starts[0].trace_id) if starts else []
        raise AssertionError(f"incomplete trace:\n{render(trace)}") from None


async def test_one_run_is_one_trace_across_every_process(tmp_path: Path) -> None:
    async with running_collector() as (collector, address):
        settings = {
            **TEST_SETTINGS,
            "telemetry": {
                "tracing": {"otlp_endpoint": address, "sample_ratio": 1.0, "export_delay_ms": 200}
            },
        }
        cluster = Cluster(
            tmp_path,
            {"backend": "sqlite", "sqlite": {"path": str(tmp_path / "t.db")}},
            split=True,
            settings=settings,
        )
        cluster.schema_setup()
        await cluster.start()
        queue = f"traced-{uuid.uuid4().hex[:6]}"
        worker = _python_worker(cluster.frontend, queue, address, tmp_path / "worker.log")
        try:
            async with await Client.connect(cluster.frontend) as client:
                await client.register_namespace("default")
                flow = f"traced_{uuid.uuid4().hex[:6]}"
                await client.register_flow(_chain(flow, queue, "conf.echo@1"))
                assert await client.execute_run(flow, {"n": 1}) == {"n": 1}
            await _whole_trace(collector)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            cluster.kill()

    start = next(s for s in collector.spans if s.name == "tideflow.api.v1.FlowService/StartRun")
    trace = _of_trace(collector.spans, start.trace_id)
    by_id = {s.span_id: s for s in trace}
    names = Counter(s.name for s in trace)
    print(render(trace))  # the span tree, for a reader of `pytest -s`
    # The start is the root: the client sent no traceparent.
    assert start.parent_id == "" and start.service == "tideflow-server"
    # Every decision: the start, then one per completion (a, b, c), each named by its cause.
    decisions = [s for s in trace if s.name == "history.decision"]
    kinds = Counter(s.attributes["tideflow.decision"] for s in decisions)
    assert kinds["StartRun"] >= 1  # the start (and what runs in its task: a direct start)
    # Each completion arrives on history's completion stream; a first attempt matching
    # dispatched from its backlog adds a RecordBlockStarted decision.
    assert kinds["RespondBlockCompletedStream"] == len(BLOCKS), kinds
    assert all(s.attributes["tideflow.run_id"] for s in decisions)
    assert all("tideflow.events" in s.attributes for s in decisions)
    # Each attempt: dispatched once (by matching or by history), run once in the worker, as
    # children of the decision that scheduled it.
    dispatches = [s for s in trace if s.name == "block.dispatch"]
    attempts = [s for s in trace if s.service == "tideflow-python-worker"]
    assert sorted(s.attributes["tideflow.block_id"] for s in dispatches) == list(BLOCKS)
    assert sorted(s.attributes["tideflow.block_id"] for s in attempts) == list(BLOCKS)
    for span in (*dispatches, *attempts):
        assert by_id[span.parent_id].name == "history.decision", span
    # Each persistence call inside a decision: its own span (the start's create, each
    # completion's update).
    writes = [s for s in trace if s.name.startswith("persistence.executions.")]
    assert {s.name for s in writes} >= {
        "persistence.executions.create_execution",
        "persistence.executions.update_execution",
    }
    assert all(by_id[s.parent_id].name == "history.decision" for s in writes)
    # The worker's answer continues the trace: the frontend's RespondBlockCompleted is a child
    # of the attempt, and the decision it causes a child of that (through history's stream).
    answers = [s for s in trace if s.name == "tideflow.api.v1.FlowService/RespondBlockCompleted"]
    assert len(answers) == len(BLOCKS)
    assert {by_id[s.parent_id].service for s in answers} == {"tideflow-python-worker"}
    updates = [
        s for s in decisions if s.attributes["tideflow.decision"] == "RespondBlockCompletedStream"
    ]
    assert all(by_id[s.parent_id].name.endswith("RespondBlockCompleted") for s in updates)
    # Across processes: the frontend, history, matching (its own span for the first dispatch,
    # or history's direct one) and the worker, each from its own process.
    instances = {s.instance.split("@")[0] for s in trace if s.service == "tideflow-server"}
    assert {"frontend", "history"} <= instances, names
    # No span of the run lost its parent.
    assert all(s.parent_id in by_id for s in trace if s.parent_id)


@block("metered.step")
async def step(value: int) -> int:
    return value + 1


def _samples(address: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def _sum(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def test_the_prometheus_endpoint_counts_a_known_workload_exactly(tmp_path: Path) -> None:
    port = free_port()
    settings = {**TEST_SETTINGS, "telemetry": {"metrics": {"prometheus_port": port}}}
    runs = 5
    async with running_sqlite_cluster(tmp_path, settings=settings) as cluster:
        async with await Client.connect(cluster.frontend, namespace="metered") as client:
            await client.register_namespace("metered")
            flow = f"metered_{uuid.uuid4().hex[:6]}"
            await client.register_flow(_chain(flow, "metered", "metered.step@1"))
            async with Worker(
                cluster.frontend, namespace="metered", task_queue="metered", blocks=[step]
            ):
                results = await asyncio.gather(*(client.execute_run(flow, n) for n in range(runs)))
            assert results == [n + 3 for n in range(runs)]
        samples = _samples(f"127.0.0.1:{port}")
    namespace = {"tideflow_namespace": "metered"}
    assert _sum(samples, "tideflow_runs_started_total", **namespace) == runs
    assert (
        _sum(samples, "tideflow_runs_closed_total", tideflow_status="completed", **namespace)
        == runs
    )
    assert _sum(samples, "tideflow_blocks_dispatched_total") == runs * len(BLOCKS)
    completed = _sum(
        samples,
        "rpc_server_call_duration_seconds_count",
        rpc_service="tideflow.api.v1.FlowService",
        rpc_method="RegisterFlow",
        rpc_grpc_status_code="0",
    )
    assert completed == 1
    refused = _sum(
        samples,
        "rpc_server_call_duration_seconds_count",
        rpc_method="RegisterNamespace",
        rpc_grpc_status_code="0",
    )
    assert refused == 1
    creates = _sum(
        samples,
        "tideflow_persistence_operation_duration_seconds_count",
        tideflow_operation="executions.create_execution",
    )
    assert creates == runs
    # The gauges: every shard owned by the one history host (acquired once each), nothing left
    # in the queue, the worker seen polling, no outbox task or timer overdue.
    shards = cluster.shard_count
    assert _sum(samples, "tideflow_history_shards_owned") == shards
    assert (
        _sum(samples, "tideflow_history_shard_movements_total", tideflow_movement="acquired")
        == shards
    )
    assert _sum(samples, "tideflow_matching_backlog_count", tideflow_task_queue="metered") == 0
    assert _sum(samples, "tideflow_matching_pollers", tideflow_task_queue="metered") >= 1
    assert _sum(samples, "tideflow_history_queue_lag_seconds", tideflow_queue="outbox") < 5
    decisions = _sum(samples, "tideflow_history_decision_duration_seconds_count")
    assert decisions >= runs * (1 + len(BLOCKS))
