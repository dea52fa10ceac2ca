"""catch over real server processes: a worker's failure that a clause matches goes to its
handler (or continues) and the run completes; the outcome is in history and DescribeRun."""

from __future__ import annotations

import uuid
from typing import Any

from tests.support.cluster import Cluster
from tests.support.flows import BlockFailure, BlockWorker, Client, Task, value
from tideflow.api.v1 import blueprint_pb2, common_pb2, history_pb2


def _blueprint(flow: str, queue: str) -> dict[str, Any]:
    return {
        "name": flow,
        "version": 1,
        "task_queue": queue,
        "timeouts": {"start_to_close": "10s"},
        "blocks": [
            {
                "id": "charge",
                "external": {"block": "charge@1"},
                "input": "${input}",
                "catch": [
                    {"error_types": ["Declined"], "goto": "ask_again"},
                    {"when": "error.message.startsWith('soft')"},
                ],
            },
            {
                "id": "ask_again",
                "needs": ["charge"],
                "transform": {"output": "asked: ${blocks.charge.error.message}"},
            },
            {"id": "ship", "needs": ["charge"], "transform": {"output": "shipped"}},
        ],
        "output": {
            "charge": "${blocks.charge.output}",
            "ask_again": "${blocks.ask_again.output}",
            "ship": "${blocks.ship.output}",
        },
    }


async def test_a_caught_failure_goes_to_its_handler_or_continues(
    cluster: Cluster, client: Client
) -> None:
    flow, queue = f"catch-{uuid.uuid4().hex[:8]}", f"q-{uuid.uuid4().hex[:8]}"
    await client.register(_blueprint(flow, queue))

    async def charge(task: Task) -> Any:
        kind, message = task.input
        raise BlockFailure(message, type=kind, non_retryable=True)

    async with BlockWorker(cluster.frontend, queue, {"charge@1": charge}):
        declined, _ = await client.start(flow, ["Declined", "card declined"])
        soft, _ = await client.start(flow, ["Soft", "soft limit"])
        hard, _ = await client.start(flow, ["Hard", "hard limit"])
        closed = {
            run_id: await client.close_event(run_id, timeout_s=30)
            for run_id in (declined, soft, hard)
        }
    assert closed[declined].event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert value(closed[declined].run_completed_event_attributes.result) == {
        "charge": None,
        "ask_again": "asked: card declined",
        "ship": None,
    }
    assert closed[soft].event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert value(closed[soft].run_completed_event_attributes.result) == {
        "charge": {"type": "Soft", "message": "soft limit"},
        "ask_again": None,
        "ship": "shipped",
    }
    assert closed[hard].event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    assert closed[hard].run_failed_event_attributes.failure.cause.message == "hard limit"

    [caught] = [
        e.block_caught_event_attributes
        for e in await client.history(declined)
        if e.event_type == history_pb2.EVENT_TYPE_BLOCK_CAUGHT
    ]
    assert caught.block_id == "charge"
    assert (caught.outcome.clause, caught.outcome.action, caught.outcome.goto) == (
        0,
        blueprint_pb2.CATCH_ACTION_GOTO,
        "ask_again",
    )
    blocks = {b.block_id: b for b in (await client.describe(declined)).blocks}
    assert blocks["charge"].status == common_pb2.BLOCK_STATUS_FAILED
    assert blocks["charge"].caught.action == blueprint_pb2.CATCH_ACTION_GOTO
    assert blocks["charge"].routed and blocks["charge"].route == "ask_again"
    assert blocks["ship"].skip_reason == "needs charge, which routed to ask_again"
    continued_blocks = {b.block_id: b for b in (await client.describe(soft)).blocks}
    assert continued_blocks["ask_again"].skip_reason == "needs charge, which did not route to it"
    continued = continued_blocks["charge"]
    assert continued.status == common_pb2.BLOCK_STATUS_SUCCEEDED
    assert continued.caught.clause == 1
    assert continued.caught.action == blueprint_pb2.CATCH_ACTION_CONTINUE
    assert continued.failure.cause.message == "soft limit"
    failed = {b.block_id: b for b in (await client.describe(hard)).blocks}["charge"]
    assert failed.caught.clause == -1 and failed.caught.action == blueprint_pb2.CATCH_ACTION_NONE
