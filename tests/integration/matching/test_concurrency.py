"""Concurrency limits on real server processes (SQLite and PostgreSQL): a block type limited to
3 never has more than 3 attempts started and unfinished, as history records them, and the
slots a killed worker held come back once its attempts time out in history."""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import datetime
from typing import Any

from google.protobuf import field_mask_pb2

from tests.support.cluster import Cluster
from tests.support.flows import BlockWorker, Client, Task, echo
from tideflow.api.v1 import flow_service_pb2, history_pb2, task_queue_pb2

REPO = __file__.rsplit("/tests/", 1)[0]
LIMIT = 3


async def _limit(client: Client, queue: str, block_type: str, limit: int) -> None:
    request = flow_service_pb2.UpdateTaskQueueConfigRequest(
        namespace=client.namespace,
        config=task_queue_pb2.TaskQueueConfig(block_concurrency={block_type: limit}),
        update_mask=field_mask_pb2.FieldMask(paths=["block_concurrency"]),
        identity="test",
    )
    request.task_queue.name = queue
    await client.stub.UpdateTaskQueueConfig(request, timeout=10)


async def _partition_status(client: Client, queue: str) -> task_queue_pb2.TaskQueuePartitionStatus:
    request = flow_service_pb2.DescribeTaskQueueRequest(namespace=client.namespace)
    request.task_queue.name = queue
    reply = await client.stub.DescribeTaskQueue(request, timeout=10)
    return next(p for p in reply.partitions if p.partition == 0)


def _blueprint(flow: str, queue: str, external: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": flow,
        "version": 1,
        "task_queue": queue,
        "blocks": [{"id": "work", "external": external, "input": "${input}"}],
        "output": "${blocks.work.output}",
    }


def _chain_blueprint(flow: str, queue: str) -> dict[str, Any]:
    """Two ocr@1 blocks in a row: a worker offering eager slots would get the second one
    started with its answer to the first, past matching, if history offered it."""
    external = {"block": "ocr@1", "timeouts": {"start_to_close": "30s"}}
    return {
        "name": flow,
        "version": 1,
        "task_queue": queue,
        "blocks": [
            {"id": "first", "external": external, "input": "${input}"},
            {
                "id": "second",
                "needs": ["first"],
                "external": external,
                "input": "${blocks.first.output}",
            },
        ],
        "output": "${blocks.second.output}",
    }


def _most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals [start, end) open at one moment."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = open_now = 0
    for _, step in edges:  # at equal times an end (-1) sorts before a start
        open_now += step
        most = max(most, open_now)
    return most


async def _until_in_use(client: Client, queue: str, in_use: int) -> None:
    """Until the queue's slots in use are `in_use`: releases travel through history's outbox
    after the run's close, so they may land a moment after it."""
    async with asyncio.timeout(10):
        while (await _partition_status(client, queue)).concurrency_in_use != in_use:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_a_block_type_limited_to_3_never_has_more_started(
    cluster: Cluster, client: Client
) -> None:
    queue = f"ocr-{uuid.uuid4().hex[:6]}"
    await _limit(client, queue, "ocr@1", LIMIT)
    await client.register(_chain_blueprint("limited-ocr", queue))
    # (run id, block id) -> start of its attempt, as history recorded it
    started: dict[tuple[str, str], datetime] = {}

    async def ocr(task: Task) -> Any:
        response = task.response
        started[(response.run.run_id, response.block_id)] = response.started_time.ToDatetime()
        await asyncio.sleep(0.1)
        return task.input

    runs = [(await client.start("limited-ocr", {"page": i}))[0] for i in range(10)]
    async with BlockWorker(cluster.frontend, queue, {"ocr@1": ocr}, concurrency=8, eager=True):
        for run_id in runs:
            close = await client.close_event(run_id)
            assert close.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED

    intervals = []
    for run_id in runs:
        history = await client.history(run_id)
        block_of = {
            e.event_id: e.block_scheduled_event_attributes.block_id
            for e in history
            if e.HasField("block_scheduled_event_attributes")
        }
        for e in history:
            if e.HasField("block_completed_event_attributes"):
                block_id = block_of[e.block_completed_event_attributes.scheduled_event_id]
                intervals.append((started[(run_id, block_id)], e.event_time.ToDatetime()))
    assert len(intervals) == 2 * len(runs)
    assert _most_at_once(intervals) == LIMIT  # reached, never passed, with 8 polls waiting
    await _until_in_use(client, queue, 0)


async def test_slots_come_back_after_the_worker_holding_them_is_killed(
    cluster: Cluster, client: Client
) -> None:
    queue = f"work-{uuid.uuid4().hex[:6]}"
    await _limit(client, queue, "work@1", LIMIT)
    external = {
        "block": "work@1",
        "timeouts": {"start_to_close": "60s", "heartbeat": "1s"},
        "retry": {"initial_interval": "0.1s"},
    }
    await client.register(_blueprint("killable", queue, external))
    doomed = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.worker_process",
        cluster.frontend,
        client.namespace,
        queue,
        "doomed",
        "heartbeat",  # holds its slots for as long as it lives
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        runs = [(await client.start("killable", {"doc": i}))[0] for i in range(LIMIT + 2)]
        assert doomed.stdout is not None
        for _ in range(LIMIT):
            line = await asyncio.wait_for(doomed.stdout.readline(), 30)
            assert line.split()[0] == b"started"
        status = await _partition_status(client, queue)
        assert status.concurrency_in_use == LIMIT
        assert dict(status.block_concurrency_in_use) == {"work@1": LIMIT}
    finally:
        doomed.kill()  # SIGKILL, holding every slot
        await doomed.wait()

    async with BlockWorker(cluster.frontend, queue, {"work@1": echo}):
        for run_id in runs:
            close = await client.close_event(run_id)
            assert close.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    await _until_in_use(client, queue, 0)
