"""map and loop blocks against real server processes: items and iterations run as scopes
of external blocks, addressed `<id>[<index>].<inner id>`."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.support.cluster import Cluster
from tests.support.flows import BlockWorker, Client, Task, value
from tideflow.api.v1 import common_pb2, history_pb2


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_a_map_of_twenty_items_runs_five_at_a_time_with_outputs_in_item_order(
    cluster: Cluster, client: Client
) -> None:
    flow, queue = _name("fanout"), _name("q")
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "timeouts": {"start_to_close": "30s"},
            "blocks": [
                {
                    "id": "squares",
                    "map_block": {
                        "items": "input.numbers",
                        "max_concurrency": 5,
                        "blocks": [
                            {
                                "id": "square",
                                "external": {"block": "square@1"},
                                "input": {"n": "${item}", "index": "${index}"},
                            }
                        ],
                    },
                }
            ],
            "output": "${blocks.squares.output}",
        }
    )
    numbers = list(range(20))
    in_flight, most, done = 0, 0, 0
    changed = asyncio.Condition()

    async def square(task: Task) -> Any:
        # Each item waits until as many are in flight as the map allows (5, fewer at the
        # end), so more than 5 at once shows up in `most` and fewer never completes.
        nonlocal in_flight, most, done
        async with changed:
            in_flight += 1
            most = max(most, in_flight)
            changed.notify_all()
            await changed.wait_for(lambda: in_flight >= min(5, len(numbers) - done))
            in_flight -= 1
            done += 1
            changed.notify_all()
        assert task.input["n"] == numbers[task.input["index"]]
        return task.input["n"] ** 2

    async with BlockWorker(cluster.frontend, queue, {"square@1": square}, concurrency=10):
        run_id, _ = await client.start(flow, {"numbers": numbers})
        closed = await client.close_event(run_id, timeout_s=60)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert value(closed.run_completed_event_attributes.result) == [n * n for n in numbers]
    assert most == 5
    history = await client.history(run_id)
    started = [e for e in history if e.event_type == history_pb2.EVENT_TYPE_MAP_STARTED]
    assert len(started) == 1  # the items are recorded once
    assert len(started[0].map_started_event_attributes.items.values) == len(numbers)
    described = {b.block_id: b for b in (await client.describe(run_id)).blocks}
    summary = described["squares"]
    assert summary.status == common_pb2.BLOCK_STATUS_SUCCEEDED
    assert (summary.scopes.total, summary.scopes.started, summary.scopes.succeeded) == (20, 20, 20)
    assert described["squares[7].square"].status == common_pb2.BLOCK_STATUS_SUCCEEDED


async def test_a_loop_runs_until_its_counter_reaches_three(
    cluster: Cluster, client: Client
) -> None:
    flow, queue = _name("loop"), _name("q")
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "timeouts": {"start_to_close": "30s"},
            "blocks": [
                {
                    "id": "count",
                    "loop": {
                        "max_iterations": 10,
                        "condition": "iteration.output < 3",
                        "blocks": [
                            {
                                "id": "increment",
                                "external": {"block": "increment@1"},
                                "input": "${iteration.index == 0 ? 0 : iteration.previous}",
                            }
                        ],
                    },
                }
            ],
            "output": "${blocks.count.output}",
        }
    )

    async def increment(task: Task) -> Any:
        return task.input + 1

    async with BlockWorker(cluster.frontend, queue, {"increment@1": increment}):
        run_id, _ = await client.start(flow)
        closed = await client.close_event(run_id, timeout_s=60)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert value(closed.run_completed_event_attributes.result) == {
        "iterations": [1, 2, 3],
        "last": 3,
    }
    described = {b.block_id: b for b in (await client.describe(run_id)).blocks}
    assert described["count"].scopes.started == 3
    assert list(described)[:3] == ["count", "count[0].increment", "count[1].increment"]
