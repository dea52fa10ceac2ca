"""Subflow blocks against real server processes: a child run is started through the outbox,
its close is reported to the parent, which takes its result or fails the block; the parent's
close terminates an open child; describe links parent and child both ways."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.support.cluster import Cluster
from tests.support.flows import BlockFailure, BlockWorker, Client, Task, value
from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _tidectl_describe(address: str, namespace: str, run_id: str) -> str:
    """`tidectl run describe`'s text, as an operator sees it."""
    tidectl = str(Path(sys.executable).with_name("tidectl"))
    args = ("--address", address, "-n", namespace, "run", "describe", run_id)
    process = await asyncio.create_subprocess_exec(
        tidectl, *args, stdout=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "400"}
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    return out.decode()


def _child(flow: str, queue: str) -> dict[str, Any]:
    """One external block, `double@1`, whose output is the run's."""
    return {
        "name": flow,
        "version": 1,
        "task_queue": queue,
        "timeouts": {"start_to_close": "10s"},
        "retry": {"maximum_attempts": 1},
        "blocks": [{"id": "work", "external": {"block": "double@1"}, "input": "${input}"}],
        "output": "${blocks.work.output}",
    }


def _parent(flow: str, child: str, **subflow: Any) -> dict[str, Any]:
    """`prep -> sub -> after`: the subflow's input is prep's output, and the run's output is
    what `after` makes of the child's result."""
    return {
        "name": flow,
        "version": 1,
        "blocks": [
            {"id": "prep", "transform": {"output": {"n": "${input.n}"}}},
            {
                "id": "sub",
                "needs": ["prep"],
                "subflow": {"flow": child, **subflow},
                "input": "${blocks.prep.output}",
            },
            {"id": "after", "needs": ["sub"], "transform": {"output": "${blocks.sub.output}"}},
        ],
        "output": "${blocks.after.output}",
    }


async def _double(task: Task) -> Any:
    if task.input["n"] < 0:
        raise BlockFailure("negative", type="Negative", non_retryable=True)
    return {"n": task.input["n"] * 2}


async def test_a_subflow_completes_with_its_childs_output_and_both_link(
    cluster: Cluster, client: Client
) -> None:
    queue, child, parent = _name("q"), _name("child"), _name("parent")
    await client.register(_child(child, queue))
    await client.register(_parent(parent, f"{child}@1", run_id="${run.id}-kid"))
    async with BlockWorker(cluster.frontend, queue, {"double@1": _double}):
        run_id, started = await client.start(parent, {"n": 21})
        closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert value(closed.run_completed_event_attributes.result) == {"n": 42}

    child_run = f"{run_id}-kid"
    parent_view = await client.describe(run_id)
    (sub,) = [b for b in parent_view.blocks if b.block_id == "sub"]
    assert sub.status == common_pb2.BLOCK_STATUS_SUCCEEDED
    assert sub.child_run.run_id == child_run
    child_view = await client.describe(child_run)
    assert sub.child_run.execution_id == child_view.run_info.run.execution_id
    assert child_view.run_info.status == common_pb2.RUN_STATUS_COMPLETED
    assert child_view.run_info.parent.run.run_id == run_id
    assert child_view.run_info.parent.run.execution_id == started.execution_id
    assert child_view.run_info.parent.block_id == "sub"

    shown = await _tidectl_describe(cluster.frontend, client.namespace, child_run)
    assert f"{run_id} ({started.execution_id}), block sub" in shown
    assert child_run in await _tidectl_describe(cluster.frontend, client.namespace, run_id)

    types = [e.event_type for e in await client.history(run_id)]
    assert [t for t in types if 60 <= t < 70] == [
        history_pb2.EVENT_TYPE_CHILD_RUN_INITIATED,
        history_pb2.EVENT_TYPE_CHILD_RUN_STARTED,
        history_pb2.EVENT_TYPE_CHILD_RUN_CLOSED,
    ]


async def test_a_failing_child_fails_the_block_and_the_parent(
    cluster: Cluster, client: Client
) -> None:
    queue, child, parent = _name("q"), _name("child"), _name("parent")
    await client.register(_child(child, queue))
    await client.register(_parent(parent, child))  # the latest version, default run id
    async with BlockWorker(cluster.frontend, queue, {"double@1": _double}):
        run_id, _ = await client.start(parent, {"n": -1})
        closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    failure = closed.run_failed_event_attributes.failure
    assert failure.block_failure_info.block_id == "sub"
    cause = failure.cause.application_failure_info
    assert cause.type == "ChildRunFailed"
    assert failure.cause.message == f"child run '{run_id}/sub' failed: Negative: negative"
    child_closed = await client.close_event(f"{run_id}/sub")
    assert child_closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED


async def test_a_child_that_cannot_start_fails_the_block(client: Client) -> None:
    parent = _name("parent")
    await client.register(_parent(parent, _name("nobody")))
    run_id, _ = await client.start(parent, {"n": 1})
    closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    cause = closed.run_failed_event_attributes.failure.cause
    assert cause.application_failure_info.type == "ChildRunStartFailed"
    assert "was not started" in cause.message
    types = [e.event_type for e in await client.history(run_id)]
    assert history_pb2.EVENT_TYPE_CHILD_RUN_START_FAILED in types


async def test_terminating_the_parent_terminates_its_open_child(
    cluster: Cluster, client: Client
) -> None:
    queue, child, parent = _name("q"), _name("child"), _name("parent")
    await client.register(_child(child, queue))
    await client.register(_parent(parent, child))
    taken = asyncio.Event()

    async def hang(task: Task) -> Any:
        taken.set()
        await asyncio.Event().wait()  # never answers: the child stays open

    async with BlockWorker(cluster.frontend, queue, {"double@1": hang}):
        run_id, _ = await client.start(parent, {"n": 1})
        await asyncio.wait_for(taken.wait(), 30)
        terminate = flow_service_pb2.TerminateRunRequest(namespace=client.namespace, reason="stop")
        terminate.run.run_id = run_id
        await client.stub.TerminateRun(terminate, timeout=10)
        child_closed = await client.close_event(f"{run_id}/sub", timeout_s=30)
    assert child_closed.event_type == history_pb2.EVENT_TYPE_RUN_TERMINATED
    reason = child_closed.run_terminated_event_attributes.reason
    assert reason == f"parent run {run_id!r} closed"
    (sub,) = [b for b in (await client.describe(run_id)).blocks if b.block_id == "sub"]
    assert sub.status == common_pb2.BLOCK_STATUS_CANCELED
