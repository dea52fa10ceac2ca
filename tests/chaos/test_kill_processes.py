"""Faults lose nothing: with 200 runs in flight, the history process and then the matching
process are killed with SIGKILL and restarted. Every run completes with the right output, and
every block's completion is recorded exactly once in its history."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import CLUSTER_BACKENDS, make_cluster
from tests.support.cluster import Cluster
from tests.support.flows import BlockWorker, Client, Task, three_increments_blueprint, value
from tideflow.api.v1 import history_pb2

RUNS = 200


@pytest.fixture(params=CLUSTER_BACKENDS)
async def split_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    cluster = make_cluster(request.param, tmp_path, request, split=True)
    try:
        await cluster.start()
        yield cluster
    finally:
        for process in cluster.processes.values():
            process.kill()


async def _start(client: Client, flow: str, run_id: str, n: int) -> None:
    for _ in range(100):
        try:
            await client.start(flow, {"n": n}, run_id=run_id, request_id=f"start-{run_id}")
            return
        except grpc.aio.AioRpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            await asyncio.sleep(0.2)
    raise AssertionError(f"could not start {run_id}")


async def test_kill_history_then_matching_loses_nothing(split_cluster: Cluster) -> None:
    cluster = split_cluster
    client = Client(cluster.frontend)
    await client.ensure_namespace()
    queue, flow = f"q-{uuid.uuid4().hex[:6]}", f"chaos_{uuid.uuid4().hex[:6]}"
    await client.register(three_increments_blueprint(flow, queue))
    rng = random.Random(7)

    async def inc(task: Task) -> Any:
        await asyncio.sleep(rng.uniform(0.01, 0.1))
        return {"n": task.input["n"] + 1}

    run_ids = [f"chaos-{i}-{uuid.uuid4().hex[:6]}" for i in range(RUNS)]
    # Two workers: one takes every task through matching, the other asks for eager dispatch
    # (its next blocks come back with its completions), so kills hit both paths.
    async with (
        BlockWorker(cluster.frontend, queue, {"inc@1": inc}, concurrency=20),
        BlockWorker(cluster.frontend, queue, {"inc@1": inc}, concurrency=20, eager=True),
    ):
        await asyncio.gather(*(_start(client, flow, r, i) for i, r in enumerate(run_ids)))
        closing = [asyncio.create_task(client.close_event(r, timeout_s=180)) for r in run_ids]

        # Kill history while runs are mid-flight, then matching, restarting each.
        await asyncio.wait(closing, return_when=asyncio.FIRST_COMPLETED)
        cluster.process_of("history").kill()
        await asyncio.sleep(1.0)
        await cluster.restart("history")
        cluster.process_of("matching").kill()
        await asyncio.sleep(1.0)
        await cluster.restart("matching")

        _, pending = await asyncio.wait(closing, timeout=90)
        if pending:
            stuck = [r for r, t in zip(run_ids, closing, strict=True) if not t.done()]
            described = [await client.describe(r) for r in stuck[:5]]
            raise AssertionError(
                f"{len(stuck)} runs did not close; first: {described}\n{cluster.logs()}"
            )
        closed = [t.result() for t in closing]

    unfinished = [
        r
        for r, e in zip(run_ids, closed, strict=True)
        if not e.HasField("run_completed_event_attributes")
    ]
    assert not unfinished, cluster.logs()
    for i, event in enumerate(closed):
        assert value(event.run_completed_event_attributes.result) == i + 3
    for run_id in run_ids:
        events = await client.history(run_id)
        scheduled = {
            e.event_id: e.block_scheduled_event_attributes.block_id
            for e in events
            if e.event_type == history_pb2.EVENT_TYPE_BLOCK_SCHEDULED
        }
        completed = Counter(
            scheduled[e.block_completed_event_attributes.scheduled_event_id]
            for e in events
            if e.event_type == history_pb2.EVENT_TYPE_BLOCK_COMPLETED
        )
        assert completed == {"a": 1, "b": 1, "c": 1}, (run_id, completed)
        assert sorted(scheduled.values()) == ["a", "b", "c"]
    await client.close()
