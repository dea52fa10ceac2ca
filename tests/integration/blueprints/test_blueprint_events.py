"""`event` blocks and PublishEvent over real server processes: an event published while a block
waits, or before it started, completes it with the event; keys must match; an event id reaches a
run once however often it is published; `tidectl event publish`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.cluster import Cluster
from tests.support.flows import Client, payloads, value
from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2
from tideflow_server.rpc.errors import InvalidArgument, from_rpc_error

COMPLETED = history_pb2.EVENT_TYPE_RUN_COMPLETED
RUNNING = common_pb2.BLOCK_STATUS_RUNNING


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _paid(block_id: str = "paid", *needs: str, **fields: Any) -> dict[str, Any]:
    spec = {"event_type": "payment.received", "correlation": "input.order", **fields}
    return {"id": block_id, "needs": list(needs), "event": spec}


async def _register(client: Client, *blocks: dict[str, Any], output: str) -> str:
    flow = _name("event")
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": "events",
            "blocks": list(blocks),
            "output": output,
        }
    )
    return flow


async def _publish(
    client: Client, key: str, data: Any, *, event_id: str = ""
) -> flow_service_pb2.PublishEventResponse:
    request = flow_service_pb2.PublishEventRequest(
        namespace=client.namespace,
        event_type="payment.received",
        correlation_key=key,
        payload=payloads(data),
        event_id=event_id,
    )
    response: flow_service_pb2.PublishEventResponse = await client.stub.PublishEvent(
        request, timeout=10
    )
    return response


async def _result(client: Client, run_id: str) -> Any:
    close = await client.close_event(run_id)
    assert close.event_type == COMPLETED, close
    return value(close.run_completed_event_attributes.result)


async def _waiting(client: Client, run_id: str, block_id: str) -> common_pb2.BlockStatus.ValueType:
    """The block's status once it has reached its wait or ended (describe after the start
    shows the run as the start's step left it)."""
    described = await client.describe(run_id)
    [block] = [b for b in described.blocks if b.block_id == block_id]
    return block.status


async def test_an_event_published_while_the_block_waits_completes_it(
    cluster: Cluster, client: Client
) -> None:
    flow = await _register(client, _paid(), output="${blocks.paid.output}")
    order = _name("order")
    run_id, _ = await client.start(flow, {"order": order})
    described = await client.describe(run_id)
    [paid] = described.blocks
    assert paid.status == RUNNING
    assert paid.waiting.event.event_type == "payment.received"
    assert paid.waiting.event.correlation_key == order
    published = await _publish(client, order, {"amount": 12}, event_id=f"{order}-1")
    assert published.event_id == f"{order}-1"
    output = await _result(client, run_id)
    assert output["payload"] == {"amount": 12}
    assert (output["event_id"], output["correlation_key"]) == (f"{order}-1", order)
    assert output["event_type"] == "payment.received" and output["publish_time"]


async def test_an_event_published_before_the_run_is_matched(
    cluster: Cluster, client: Client
) -> None:
    flow = await _register(client, _paid(), output="${blocks.paid.output.payload}")
    order = _name("order")
    published = await _publish(client, order, "early")
    assert published.event_id and published.delivered == 0  # the server named it
    run_id, _ = await client.start(flow, {"order": order})
    assert await _result(client, run_id) == "early"


async def test_another_key_does_not_complete_the_block(cluster: Cluster, client: Client) -> None:
    flow = await _register(client, _paid(), output="${blocks.paid.output.payload}")
    order = _name("order")
    run_id, _ = await client.start(flow, {"order": order})
    assert (await _publish(client, f"{order}-other", "not mine")).delivered == 0
    assert await _waiting(client, run_id, "paid") == RUNNING
    await _publish(client, order, "mine")
    assert await _result(client, run_id) == "mine"


async def test_an_event_id_reaches_a_run_once(cluster: Cluster, client: Client) -> None:
    flow = await _register(
        client,
        _paid("first"),
        _paid("second", "first"),
        output="${[blocks.first.output.event_id, blocks.second.output.event_id]}",
    )
    order = _name("order")
    run_id, _ = await client.start(flow, {"order": order})
    await _publish(client, order, 1, event_id=f"{order}-x")
    # Published again (a retry): `second` waits for the same type and key, and is offered the
    # event, kept and published, but the run has it already.
    again = await _publish(client, order, 1, event_id=f"{order}-x")
    assert again.event_id == f"{order}-x"
    assert await _waiting(client, run_id, "second") == RUNNING
    await _publish(client, order, 2, event_id=f"{order}-y")
    assert await _result(client, run_id) == [f"{order}-x", f"{order}-y"]
    events = await client.history(run_id)
    received = [
        e.event_received_event_attributes.event_id
        for e in events
        if e.event_type == history_pb2.EVENT_TYPE_EVENT_RECEIVED
    ]
    assert received == [f"{order}-x", f"{order}-y"]


async def test_tidectl_event_publish(cluster: Cluster, client: Client) -> None:
    flow = await _register(client, _paid(), output="${blocks.paid.output}")
    order = _name("order")
    run_id, _ = await client.start(flow, {"order": order})
    tidectl = str(Path(sys.executable).with_name("tidectl"))
    args = [
        *("--address", cluster.frontend, "-n", client.namespace, "-o", "json"),
        *("event", "publish", "payment.received"),
        *("--key", order, "--data", '{"amount": 3}', "--id", "cli-1"),
    ]
    process = await asyncio.create_subprocess_exec(
        tidectl, *args, stdout=asyncio.subprocess.PIPE, env=dict(os.environ)
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    assert json.loads(out) == {"event_id": "cli-1", "ok": True}
    output = await _result(client, run_id)
    assert (output["event_id"], output["payload"]) == ("cli-1", {"amount": 3})


async def test_a_malformed_publish_is_refused_with_its_fields_and_keeps_nothing(
    cluster: Cluster, client: Client
) -> None:
    flow = await _register(client, _paid(), output="${blocks.paid.output.payload}")
    order = _name("order")
    request = flow_service_pb2.PublishEventRequest(
        namespace=client.namespace,
        event_type="",
        correlation_key=order,
        payload=payloads("x" * 10),
        event_id="bad\x1bid",
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.PublishEvent(request, timeout=10)
    error = from_rpc_error(raised.value)
    assert isinstance(error, InvalidArgument)
    assert [v.field for v in error.violations] == ["event_type", "event_id"]
    # Nothing was kept: a block that starts waiting for the key takes only the next event.
    run_id, _ = await client.start(flow, {"order": order})
    await _publish(client, order, "the first kept")
    assert await _result(client, run_id) == "the first kept"


async def test_a_timeout_routes_and_the_stale_wait_is_dropped_by_a_publish(
    cluster: Cluster, client: Client
) -> None:
    flow = await _register(
        client,
        _paid(timeout="1s", on_timeout="late"),
        {"id": "late", "needs": ["paid"], "transform": {"output": "timed out"}},
        output="${blocks.late.output}",
    )
    order = _name("order")
    run_id, _ = await client.start(flow, {"order": order})
    described = await client.describe(run_id)
    [paid] = described.blocks
    assert paid.waiting.event.correlation_key == order and paid.waiting.HasField("deadline")
    assert await _result(client, run_id) == "timed out"
    # The block's wait may still be in the store: the publish that finds it drops it.
    assert (await _publish(client, order, "too late")).delivered <= 1
    assert (await _publish(client, order, "later still")).delivered == 0
