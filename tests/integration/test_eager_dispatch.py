"""Eager dispatch: a completion hands the worker the run's next block on the same task queue,
started in the same commit, instead of sending it through matching. A block started that way
records a request id of the form `eager-...` in its BLOCK_STARTED event; one started through a
poll records the poll's id."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc

from tests.support.cluster import Cluster
from tests.support.flows import Client, payloads, value
from tideflow.api.v1 import flow_service_pb2, flow_service_pb2_grpc, history_pb2
from tideflow.client import Client as TideflowClient
from tideflow.worker import Worker, block


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _chain(flow: str, queue: str, block_type: str, queues: list[str | None]) -> dict[str, Any]:
    """One block per entry of `queues` (None = the flow's queue), each fed the previous one's
    output plus one."""
    blocks: list[dict[str, Any]] = []
    for i, own_queue in enumerate(queues):
        external: dict[str, Any] = {"block": block_type, "timeouts": {"start_to_close": "10s"}}
        if own_queue:
            external["task_queue"] = own_queue
        spec: dict[str, Any] = {"id": f"b{i}", "external": external}
        spec["input"] = "${input}" if i == 0 else f"${{blocks.b{i - 1}.output}}"
        if i:
            spec["needs"] = [f"b{i - 1}"]
        blocks.append(spec)
    return {
        "name": flow,
        "version": 1,
        "task_queue": queue,
        "blocks": blocks,
        "output": f"${{blocks.b{len(queues) - 1}.output}}",
    }


def _starts(events: list[history_pb2.HistoryEvent]) -> dict[str, history_pb2.HistoryEvent]:
    """BLOCK_STARTED events by block id."""
    block_of = {
        e.event_id: e.block_scheduled_event_attributes.block_id
        for e in events
        if e.event_type == history_pb2.EVENT_TYPE_BLOCK_SCHEDULED
    }
    return {
        block_of[e.block_started_event_attributes.scheduled_event_id]: e
        for e in events
        if e.event_type == history_pb2.EVENT_TYPE_BLOCK_STARTED
    }


def _eager(event: history_pb2.HistoryEvent) -> bool:
    return event.block_started_event_attributes.request_id.startswith("eager-")


def _add_one(name: str) -> Any:
    @block(name)
    async def add_one(n: int) -> int:
        return n + 1

    return add_one


async def test_a_chain_on_one_queue_after_the_first_block_skips_matching(
    cluster: Cluster, client: Client
) -> None:
    name = _name("add")
    queue, flow = _name("q"), _name("flow")
    await client.register(_chain(flow, queue, f"{name}@1", [None, None, None]))
    worker = Worker(cluster.frontend, task_queue=queue, blocks=[_add_one(name)], namespace="tests")
    async with worker:
        run_id, _ = await client.start(flow, 1)
        closed = await client.close_event(run_id, timeout_s=30)
    assert value(closed.run_completed_event_attributes.result) == 4
    starts = _starts(await client.history(run_id))
    assert [_eager(starts[b]) for b in ("b0", "b1", "b2")] == [False, True, True]
    assert {e.block_started_event_attributes.identity for e in starts.values()} == {worker.identity}


async def test_a_worker_without_eager_dispatch_polls_every_block(
    cluster: Cluster, client: Client
) -> None:
    name = _name("add")
    queue, flow = _name("q"), _name("flow")
    await client.register(_chain(flow, queue, f"{name}@1", [None, None, None]))
    worker = Worker(
        cluster.frontend,
        task_queue=queue,
        blocks=[_add_one(name)],
        namespace="tests",
        eager=False,
    )
    async with worker:
        run_id, _ = await client.start(flow, 1)
        closed = await client.close_event(run_id, timeout_s=30)
    assert value(closed.run_completed_event_attributes.result) == 4
    assert not any(_eager(e) for e in _starts(await client.history(run_id)).values())


async def test_a_block_on_another_queue_goes_through_matching(
    cluster: Cluster, client: Client
) -> None:
    name = _name("add")
    queue, other, flow = _name("q"), _name("other"), _name("flow")
    await client.register(_chain(flow, queue, f"{name}@1", [None, other, None, None]))
    add_one = _add_one(name)
    async with (
        Worker(cluster.frontend, task_queue=queue, blocks=[add_one], namespace="tests"),
        Worker(cluster.frontend, task_queue=other, blocks=[add_one], namespace="tests"),
    ):
        run_id, _ = await client.start(flow, 1)
        closed = await client.close_event(run_id, timeout_s=30)
    assert value(closed.run_completed_event_attributes.result) == 5
    starts = _starts(await client.history(run_id))
    # b1 is on `other`, b2 comes back to the flow's queue from a worker on `other`: neither
    # may be handed out eagerly; b3 follows b2 on the same queue and is.
    assert [_eager(starts[b]) for b in ("b0", "b1", "b2", "b3")] == [False, False, False, True]


async def test_eager_slots_bound_how_many_parallel_blocks_come_back(
    cluster: Cluster, client: Client
) -> None:
    """A block fanning out to three: with two slots offered, two come back with the answer
    and the third is left to matching, where a poll finds it."""
    queue, flow = _name("q"), _name("flow")
    fan = [
        {"id": f"f{i}", "needs": ["root"], "external": {"block": "leaf@1"}, "input": i}
        for i in range(3)
    ]
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "timeouts": {"start_to_close": "10s"},
            "blocks": [{"id": "root", "external": {"block": "root@1"}}, *fan],
        }
    )
    run_id, _ = await client.start(flow, None)
    async with grpc.aio.insecure_channel(cluster.frontend) as channel:
        stub = flow_service_pb2_grpc.FlowServiceStub(channel)
        poll = flow_service_pb2.PollBlockTaskRequest(namespace="tests", identity="eager-test")
        poll.task_queue.name = queue
        root = await stub.PollBlockTask(poll, timeout=10)
        assert root.block_type == "root@1"
        answer = await stub.RespondBlockCompleted(
            flow_service_pb2.RespondBlockCompletedRequest(
                namespace="tests",
                task_token=root.task_token,
                result=payloads(None),
                identity="eager-test",
                eager_slots=2,
            ),
            timeout=10,
        )
        eager = {t.block_id: t for t in answer.next_tasks}
        assert len(eager) == 2 and set(eager) < {"f0", "f1", "f2"}
        for task in eager.values():
            assert task.block_type == "leaf@1" and task.attempt == 1
            assert value(task.input) == int(task.block_id[1])
            assert task.run.run_id == run_id
        polled = await stub.PollBlockTask(poll, timeout=10)
        assert {*eager, polled.block_id} == {"f0", "f1", "f2"}
        await asyncio.gather(
            *(
                stub.RespondBlockCompleted(
                    flow_service_pb2.RespondBlockCompletedRequest(
                        namespace="tests",
                        task_token=t.task_token,
                        result=payloads(None),
                        identity="eager-test",
                    ),
                    timeout=10,
                )
                for t in [*eager.values(), polled]
            )
        )
    closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    starts = _starts(await client.history(run_id))
    assert sorted(b for b, e in starts.items() if _eager(e)) == sorted(eager)


async def test_a_rate_limited_queue_gets_no_eager_dispatch(
    cluster: Cluster, client: Client
) -> None:
    name = _name("add")
    queue, flow = _name("q"), _name("flow")
    await client.register(_chain(flow, queue, f"{name}@1", [None, None, None]))
    sdk = await TideflowClient.connect(cluster.frontend, namespace="tests")
    try:
        await sdk.update_task_queue_config(queue, rate_per_second=1000.0)
    finally:
        await sdk.close()
    worker = Worker(cluster.frontend, task_queue=queue, blocks=[_add_one(name)], namespace="tests")
    async with worker:
        run_id, _ = await client.start(flow, 1)  # its first add reads the queue's config
        closed = await client.close_event(run_id, timeout_s=30)
    assert value(closed.run_completed_event_attributes.result) == 4
    # The limit holds only for tasks that go through matching: none is handed out eagerly.
    assert not any(_eager(e) for e in _starts(await client.history(run_id)).values())
