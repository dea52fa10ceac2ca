"""A saga over real server processes: a and b succeed, c fails; on_failure runs, then b's and
a's compensations, in that order, and the run fails saying what was compensated."""

from __future__ import annotations

import uuid
from typing import Any

from tests.support.cluster import Cluster
from tests.support.flows import BlockFailure, BlockWorker, Client, Task
from tideflow.api.v1 import common_pb2, history_pb2


def _blueprint(flow: str, queue: str) -> dict[str, Any]:
    def step(block_id: str, *needs: str, **fields: Any) -> dict[str, Any]:
        return {
            "id": block_id,
            "needs": list(needs),
            "external": {"block": "step@1"},
            "input": block_id,
            **fields,
        }

    return {
        "name": flow,
        "version": 1,
        "task_queue": queue,
        "timeouts": {"start_to_close": "10s"},
        "retry": {"initial_interval": "0.1s", "maximum_attempts": 2},
        "on_failure": "report",
        "blocks": [
            step("a", compensate="undo_a"),
            step("b", "a", compensate="undo_b"),
            step("c", "b"),
            step("undo_a", "a"),
            step("undo_b"),
            {"id": "report", "transform": {"output": "${blocks.c.error.message}"}},
        ],
    }


async def test_a_failed_run_compensates_in_reverse_completion_order(
    cluster: Cluster, client: Client
) -> None:
    flow, queue = f"saga-{uuid.uuid4().hex[:8]}", f"q-{uuid.uuid4().hex[:8]}"
    await client.register(_blueprint(flow, queue))

    async def step(task: Task) -> Any:
        if task.input == "c":
            raise BlockFailure("out of stock", type="NoStock", non_retryable=True)
        if task.input == "undo_a" and task.response.attempt == 1:
            raise BlockFailure("try again")  # its own retry policy: the second attempt works
        return f"{task.input} done"

    worker = BlockWorker(cluster.frontend, queue, {"step@1": step})
    async with worker:
        run_id, _ = await client.start(flow)
        closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    failure = closed.run_failed_event_attributes.failure
    assert failure.block_failure_info.block_id == "c"
    assert failure.cause.message == "out of stock"
    assert failure.message.endswith(
        "; compensated: b by undo_b (succeeded), a by undo_a (succeeded)"
    )
    assert worker.attempts[(run_id, "undo_a")] == 2

    events = await client.history(run_id)
    order = [
        e.block_scheduled_event_attributes.block_id
        for e in events
        if e.event_type == history_pb2.EVENT_TYPE_BLOCK_SCHEDULED
    ]
    assert order == ["a", "b", "c", "undo_b", "undo_a"]
    blocks = {b.block_id: b for b in (await client.describe(run_id)).blocks}
    assert blocks["undo_b"].compensates == "b" and blocks["undo_a"].compensates == "a"
    assert blocks["report"].compensates == ""
    assert blocks["report"].status == common_pb2.BLOCK_STATUS_SUCCEEDED
    # on_failure ran first, once c had failed; then the compensations.
    reached = [b.block_id for b in (await client.describe(run_id)).blocks]
    assert reached == ["a", "b", "c", "report", "undo_b", "undo_a"]
