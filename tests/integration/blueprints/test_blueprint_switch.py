"""switch over real server processes: the run takes the branch its input picks, and describe
says why the other branch was skipped."""

from __future__ import annotations

import uuid
from typing import Any

from tests.support.cluster import Cluster
from tests.support.flows import BlockWorker, Client, Task, value
from tideflow.api.v1 import blueprint_pb2, common_pb2, history_pb2


def _blueprint(flow: str, queue: str) -> dict[str, Any]:
    return {
        "name": flow,
        "version": 1,
        "task_queue": queue,
        "timeouts": {"start_to_close": "10s"},
        "blocks": [
            {
                "id": "route",
                "switch_block": {
                    "cases": [{"when": "input.kind == 'invoice'", "goto": "invoice"}],
                    "default": "other",
                },
            },
            {
                "id": "invoice",
                "needs": ["route"],
                "external": {"block": "invoice@1"},
                "input": "${input}",
            },
            {"id": "other", "needs": ["route"], "transform": {"output": "other"}},
        ],
        "output": {
            "route": "${blocks.route.output}",
            "invoice": "${blocks.invoice.output}",
            "other": "${blocks.other.output}",
        },
    }


async def test_a_switch_takes_the_branch_the_input_picks(cluster: Cluster, client: Client) -> None:
    flow, queue = f"switch-{uuid.uuid4().hex[:8]}", f"q-{uuid.uuid4().hex[:8]}"
    await client.register(_blueprint(flow, queue))

    async def invoice(task: Task) -> Any:
        return f"booked {task.input['n']}"

    async with BlockWorker(cluster.frontend, queue, {"invoice@1": invoice}):
        chose_invoice, _ = await client.start(flow, {"kind": "invoice", "n": 7})
        chose_other, _ = await client.start(flow, {"kind": "memo", "n": 8})
        first = await client.close_event(chose_invoice, timeout_s=30)
        second = await client.close_event(chose_other, timeout_s=30)
    assert first.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert value(first.run_completed_event_attributes.result) == {
        "route": {"case": 0, "goto": "invoice"},
        "invoice": "booked 7",
        "other": None,
    }
    assert second.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert value(second.run_completed_event_attributes.result) == {
        "route": {"case": None, "goto": "other"},
        "invoice": None,
        "other": "other",
    }
    described = {b.block_id: b for b in (await client.describe(chose_other)).blocks}
    assert described["route"].kind == blueprint_pb2.BLOCK_KIND_SWITCH
    assert described["route"].routed and described["route"].route == "other"
    assert described["invoice"].status == common_pb2.BLOCK_STATUS_SKIPPED
    assert described["invoice"].skip_reason == "needs route, which chose other"
    assert described["other"].status == common_pb2.BLOCK_STATUS_SUCCEEDED
