"""Direct dispatch: history starts a block in the commit that schedules it, and matching hands
the task to a poll that is already waiting, without RecordBlockStarted. Such a start records a
request id of the form `direct-...` in BLOCK_STARTED. When no poll waits, matching persists
the task and history undoes the start: the attempt starts when a poll takes it from the
backlog (recording that poll's id), and its start-to-close timeout counts from then."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.support.cluster import Cluster
from tests.support.flows import Client, value
from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2
from tideflow.worker import Worker, block


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _one_block(flow: str, queue: str, block_type: str, start_to_close: str) -> dict[str, Any]:
    return {
        "name": flow,
        "version": 1,
        "task_queue": queue,
        "blocks": [
            {
                "id": "b0",
                "external": {
                    "block": block_type,
                    "timeouts": {"start_to_close": start_to_close},
                    "retry": {"maximum_attempts": 1},
                },
                "input": "${input}",
            }
        ],
        "output": "${blocks.b0.output}",
    }


def _add_one(name: str) -> Any:
    @block(name)
    async def add_one(n: int) -> int:
        return n + 1

    return add_one


def _started(events: list[history_pb2.HistoryEvent]) -> history_pb2.BlockStartedEventAttributes:
    (started,) = [e for e in events if e.event_type == history_pb2.EVENT_TYPE_BLOCK_STARTED]
    return started.block_started_event_attributes


async def _polling(client: Client, queue: str, identity: str) -> None:
    """Until matching holds a poll of `identity` on `queue`."""
    request = flow_service_pb2.DescribeTaskQueueRequest(namespace=client.namespace)
    request.task_queue.name = queue
    async with asyncio.timeout(20):
        while True:
            described = await client.stub.DescribeTaskQueue(request, timeout=10)
            if identity in {p.identity for p in described.pollers}:
                return
            await asyncio.sleep(0.05)


async def _pending_state(client: Client, run_id: str) -> common_pb2.PendingBlockState.ValueType:
    (pending,) = (await client.describe(run_id)).pending_blocks
    return pending.state


async def test_a_waiting_poll_takes_the_first_block_without_record_block_started(
    cluster: Cluster, client: Client
) -> None:
    name, queue, flow = _name("add"), _name("q"), _name("flow")
    await client.register(_one_block(flow, queue, f"{name}@1", "10s"))
    worker = Worker(cluster.frontend, task_queue=queue, blocks=[_add_one(name)], namespace="tests")
    async with worker:
        await _polling(client, queue, worker.identity)
        run_id, _ = await client.start(flow, 1)
        closed = await client.close_event(run_id, timeout_s=30)
    assert value(closed.run_completed_event_attributes.result) == 2
    started = _started(await client.history(run_id))
    assert started.request_id.startswith("direct-")
    assert (started.identity, started.attempt) == (worker.identity, 1)


async def test_without_a_waiting_poll_the_block_starts_when_polled(
    cluster: Cluster, client: Client
) -> None:
    """The start-to-close timeout counts from the poll's start, not from the undone one: with
    3 s allowed and a single attempt, a block that a worker starts 1.5 s after the undone
    start and that runs for 2 s outlives the undone start's timer and completes."""
    name, queue, flow = _name("slow"), _name("q"), _name("flow")
    await client.register(_one_block(flow, queue, f"{name}@1", "3s"))

    @block(name)
    async def slow(n: int) -> int:
        await asyncio.sleep(2.0)  # the work, outliving the undone start's timer
        return n + 1

    run_id, _ = await client.start(flow, 1)
    async with asyncio.timeout(20):
        # The start is undone once matching has persisted the task; only DescribeRun shows it.
        while await _pending_state(client, run_id) != common_pb2.PENDING_BLOCK_STATE_SCHEDULED:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    # No worker yet: the block waits in the backlog, where no timeout may count.
    await asyncio.sleep(1.5)
    (pending,) = (await client.describe(run_id)).pending_blocks
    assert (pending.state, pending.attempt) == (common_pb2.PENDING_BLOCK_STATE_SCHEDULED, 1)

    worker = Worker(cluster.frontend, task_queue=queue, blocks=[slow], namespace="tests")
    async with worker:
        closed = await client.close_event(run_id, timeout_s=30)
    assert value(closed.run_completed_event_attributes.result) == 2
    started = _started(await client.history(run_id))
    assert not started.request_id.startswith("direct-")
    assert (started.identity, started.attempt) == (worker.identity, 1)


async def test_a_run_canceled_while_its_block_waits_for_a_poll_closes(
    cluster: Cluster, client: Client
) -> None:
    """Canceled before or after history undid the direct start, the block never reached a
    worker, so the run closes as canceled without one."""
    name, queue, flow = _name("add"), _name("q"), _name("flow")
    await client.register(_one_block(flow, queue, f"{name}@1", "30s"))
    run_id, _ = await client.start(flow, 1)
    request = flow_service_pb2.CancelRunRequest(namespace=client.namespace, reason="test")
    request.run.run_id = run_id
    await client.stub.CancelRun(request, timeout=10)
    closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_CANCELED
