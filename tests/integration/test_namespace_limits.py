"""A namespace's own limits (NamespaceConfig.limits) over real processes: each one tightens
the server's where the server applies it, names itself in the error, and leaves other
namespaces alone."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from tests.support.cluster import Cluster
from tests.support.flows import Client, payloads
from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2, namespace_pb2
from tideflow_server.rpc.errors import InvalidArgument, from_rpc_error


@contextlib.asynccontextmanager
async def _namespace(cluster: Cluster, **limits: int) -> AsyncIterator[Client]:
    """A fresh namespace with these config.limits."""
    client = Client(cluster.frontend, namespace=f"limited-{uuid.uuid4().hex[:6]}")
    register = flow_service_pb2.RegisterNamespaceRequest(namespace=client.namespace)
    register.config.limits.CopyFrom(namespace_pb2.NamespaceLimits(**limits))
    try:
        await client.stub.RegisterNamespace(register, timeout=10)
        yield client
    finally:
        await client.close()


def _blueprint(flow: str, *block_ids: str) -> dict[str, Any]:
    """Blocks that all start at once, on the flow's own queue."""
    return {
        "name": flow,
        "version": 1,
        "task_queue": f"q-{flow}",
        "timeouts": {"start_to_close": "10s"},
        "blocks": [
            {"id": b, "external": {"block": "step@1"}, "input": "${input}"} for b in block_ids
        ],
    }


async def _in_both(limited: Client, other: Client, *block_ids: str) -> str:
    flow = f"flow_{uuid.uuid4().hex[:8]}"
    for client in (limited, other):
        await client.register(_blueprint(flow, *block_ids))
    return flow


async def _refused_start(client: Client, flow: str, run_input: Any) -> str:
    """The description of the one violation, of `input`, that refuses the start."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.start(flow, run_input)
    error = from_rpc_error(refused.value)
    assert isinstance(error, InvalidArgument)
    [violation] = error.violations
    assert violation.field == "input"
    return violation.description


async def _poll(client: Client, flow: str) -> flow_service_pb2.PollBlockTaskResponse:
    poll = flow_service_pb2.PollBlockTaskRequest(namespace=client.namespace, identity="limits")
    poll.task_queue.name = f"q-{flow}"
    while not (task := await client.stub.PollBlockTask(poll, timeout=10)).task_token:
        pass
    return task


async def test_max_payload_bytes(cluster: Cluster, client: Client) -> None:
    big = "x" * 100
    async with _namespace(cluster, max_payload_bytes=64) as limited:
        flow = await _in_both(limited, client, "a")
        assert "over the limit of 64 bytes" in await _refused_start(limited, flow, big)
        await limited.start(flow, "small")
        await client.start(flow, big)
        # A batch answers an item over its namespace's limit on its own, as a single call.
        task = await _poll(limited, flow)
        batch = flow_service_pb2.RespondBlockCompletedBatchRequest()
        batch.completions.add(
            namespace=limited.namespace, task_token=task.task_token, result=payloads(big)
        )
        [item] = (await limited.stub.RespondBlockCompletedBatch(batch, timeout=10)).results
    assert item.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [v.field for v in item.status.violations] == ["result"]
    assert "over the limit of 64 bytes" in item.status.violations[0].description


async def test_max_history_events(cluster: Cluster, client: Client) -> None:
    async with _namespace(cluster, max_history_events=1) as limited:
        flow = await _in_both(limited, client, "a")
        # RUN_STARTED and BLOCK_SCHEDULED: two events, over the namespace's one.
        refused = await _refused_start(limited, flow, 1)
    assert "history would be 2 events, over the limit of 1 events" in refused
    assert "namespace config.limits.max_history_events" in refused
    await client.start(flow, 1)


async def test_max_history_bytes(cluster: Cluster, client: Client) -> None:
    async with _namespace(cluster, max_history_bytes=500) as limited:
        flow = await _in_both(limited, client, "a")
        await limited.start(flow, "small")
        # The input goes into RUN_STARTED and again into the block's BLOCK_SCHEDULED.
        refused = await _refused_start(limited, flow, "x" * 400)
    assert "over the limit of 500 bytes" in refused
    assert "namespace config.limits.max_history_bytes" in refused
    await client.start(flow, "x" * 400)


async def test_max_pending_blocks(cluster: Cluster, client: Client) -> None:
    async with _namespace(cluster, max_pending_blocks=1) as limited:
        flow = await _in_both(limited, client, "a", "b")
        # As under the server's limit, a run that would hold more blocks pending fails.
        run_id, _ = await limited.start(flow, 1)
        closed = await limited.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    failure = closed.run_failed_event_attributes.failure
    assert "more than 1 blocks pending at once" in failure.message + failure.cause.message
    run_id, _ = await client.start(flow, 1)
    describe = flow_service_pb2.DescribeRunRequest(namespace=client.namespace)
    describe.run.run_id = run_id
    described = await client.stub.DescribeRun(describe, timeout=10)
    assert described.run_info.status == common_pb2.RUN_STATUS_RUNNING
