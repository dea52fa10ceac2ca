"""Finish what is in flight first (the queue's `in_flight_first`): under a burst of new runs
twice what the workers can do, runs admitted before it keep their unloaded start-to-close
(real processes, SQLite and PostgreSQL).

Only matching's order is measured here: the worker offers no eager slots and the cluster runs
with `history.direct_dispatch: false`, since both hand a run's next block to a worker without
matching's backlog.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import make_cluster
from tests.support.cluster import Cluster
from tests.support.flows import BlockWorker, Client, Task
from tideflow.api.v1 import flow_service_pb2, task_queue_pb2

WORKERS = 4
"""Poll loops of the one worker: tasks it runs at once."""
WORK_S = 0.2
"""Each block's work: the workers do WORKERS / WORK_S = 20 blocks a second."""
CHAIN = 3
EARLY = 8
"""Runs admitted before the burst, whose start-to-close is measured."""
WINDOW_S = 3.0
BURST = math.ceil(2 * WORKERS / WORK_S / CHAIN * WINDOW_S)
"""New runs: twice the runs the workers can finish in WINDOW_S (40)."""


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    root = tmp_path_factory.mktemp(f"in-flight-{request.param}")
    started = make_cluster(request.param, root, request)
    for process in started.processes.values():
        process.env["TIDEFLOW_HISTORY__DIRECT_DISPATCH"] = "false"
    async with started.running():
        yield started


def chain_blueprint(flow: str, queue: str) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = [{"id": "b0", "external": {"block": "step@1"}, "input": 0}]
    for n in range(1, CHAIN):
        blocks.append(
            {"id": f"b{n}", "needs": [f"b{n - 1}"], "external": {"block": "step@1"}, "input": n}
        )
    return {
        "name": flow,
        "version": 1,
        "task_queue": queue,
        "timeouts": {"start_to_close": "60s"},
        "blocks": blocks,
    }


async def work(task: Task) -> Any:
    await asyncio.sleep(WORK_S)  # the block's work
    return task.input


async def start_to_close(client: Client, run_id: str) -> float:
    closed = await client.close_event(run_id, timeout_s=120)
    started = (await client.history(run_id))[0]
    return (closed.event_time.ToNanoseconds() - started.event_time.ToNanoseconds()) / 1e9


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


async def admitted_runs_p99(client: Client, cluster: Cluster, queue: str, *, burst: int) -> float:
    """p99 start-to-close of EARLY runs started together, then `burst` new runs at once."""
    flow = f"{queue}-flow"
    await client.register(chain_blueprint(flow, queue))
    async with BlockWorker(cluster.frontend, queue, {"step@1": work}, concurrency=WORKERS):
        early = await asyncio.gather(*(client.start(flow) for _ in range(EARLY)))
        late = await asyncio.gather(*(client.start(flow) for _ in range(burst)))
        durations = await asyncio.gather(*(start_to_close(client, r) for r, _ in early))
        for run_id, _ in late:  # the burst drains before the worker stops
            await client.close_event(run_id, timeout_s=120)
    return p99(durations)


async def set_in_flight_first(client: Client, queue: str) -> None:
    request = flow_service_pb2.UpdateTaskQueueConfigRequest(
        namespace=client.namespace,
        config=task_queue_pb2.TaskQueueConfig(in_flight_first=True),
        identity="test",
    )
    request.task_queue.name = queue
    request.update_mask.paths.append("in_flight_first")
    await client.stub.UpdateTaskQueueConfig(request, timeout=10)


@pytest.fixture(scope="module")
async def unloaded_p99(cluster: Cluster) -> float:
    client = Client(cluster.frontend)
    await client.ensure_namespace()
    try:
        return await admitted_runs_p99(client, cluster, "in-flight-unloaded", burst=0)
    finally:
        await client.close()


async def test_admitted_runs_keep_their_pace_under_a_burst_with_in_flight_first(
    cluster: Cluster, client: Client, unloaded_p99: float
) -> None:
    queue = "in-flight-on"
    await set_in_flight_first(client, queue)
    loaded = await admitted_runs_p99(client, cluster, queue, burst=BURST)
    print(f"\nin_flight_first on: p99 {loaded:.2f}s under a burst, {unloaded_p99:.2f}s unloaded")
    assert loaded <= 2 * unloaded_p99


async def test_admitted_runs_slow_down_under_a_burst_without_it(
    cluster: Cluster, client: Client, unloaded_p99: float
) -> None:
    loaded = await admitted_runs_p99(client, cluster, "in-flight-off", burst=BURST)
    print(f"\nin_flight_first off: p99 {loaded:.2f}s under a burst, {unloaded_p99:.2f}s unloaded")
    assert loaded > 2 * unloaded_p99
