"""Bad input gets a precise status with the offending fields, and changes nothing."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from tests.support.cluster import Cluster
from tests.support.flows import Client, payloads
from tideflow.api.v1 import flow_service_pb2
from tideflow_server.rpc.errors import InvalidArgument, NotFound, ServiceError, from_rpc_error


def _flow() -> str:
    return f"flow_{uuid.uuid4().hex[:8]}"


def _block(block_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": block_id,
        "external": {"block": "ocr@1", "timeouts": {"start_to_close": "5s"}},
        **extra,
    }


async def _rejected(call: Any) -> ServiceError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return from_rpc_error(raised.value)


async def _not_registered(client: Client, name: str) -> None:
    error = await _rejected(
        client.stub.DescribeFlow(
            flow_service_pb2.DescribeFlowRequest(namespace=client.namespace, name=name),
            timeout=10,
        )
    )
    assert isinstance(error, NotFound)


async def test_malformed_blueprint_reports_every_error(cluster: Cluster, client: Client) -> None:
    name = _flow()
    error = await _rejected(
        client.register(
            {
                "name": name,
                "version": 1,
                "task_queue": "cpu",
                "input_schema": {"type": "no-such-type"},
                "blocks": [
                    _block("a", needs=["ghost"]),
                    _block("a"),
                    _block("b", when="input.x >"),
                    _block("c", input={"x": "${blocks.nope.output}"}),
                ],
            }
        )
    )
    assert isinstance(error, InvalidArgument)
    fields = {v.field for v in error.violations}
    assert {"blocks[0].needs[0]", "blocks[1].id", "blocks[2].when", "input_schema.type"} <= fields
    assert any(f.startswith("blocks[3].input") for f in fields)
    await _not_registered(client, name)


async def test_cycle_is_reported_with_its_path(cluster: Cluster, client: Client) -> None:
    name = _flow()
    error = await _rejected(
        client.register(
            {
                "name": name,
                "version": 1,
                "task_queue": "cpu",
                "blocks": [
                    _block("a", needs=["c"]),
                    _block("b", needs=["a"]),
                    _block("c", needs=["b"]),
                ],
            }
        )
    )
    assert isinstance(error, InvalidArgument)
    assert any("cycle" in v.description for v in error.violations), error.violations
    await _not_registered(client, name)


async def test_bad_cel_and_unknown_reference(cluster: Cluster, client: Client) -> None:
    name = _flow()
    error = await _rejected(
        client.register(
            {
                "name": name,
                "version": 1,
                "task_queue": "cpu",
                "blocks": [
                    _block("a", when="size(input.items) >>> 2"),
                    _block("b", needs=["a"], input={"v": "${blocks.z.output}"}),
                ],
            }
        )
    )
    assert isinstance(error, InvalidArgument)
    by_field = {v.field: v.description for v in error.violations}
    assert "blocks[0].when" in by_field
    assert any(f.startswith("blocks[1].input") for f in by_field)
    await _not_registered(client, name)


async def test_input_not_matching_schema_starts_nothing(cluster: Cluster, client: Client) -> None:
    name = _flow()
    await client.register(
        {
            "name": name,
            "version": 1,
            "task_queue": "cpu",
            "input_schema": {
                "type": "object",
                "required": ["doc"],
                "properties": {
                    "doc": {"type": "object", "properties": {"pages": {"type": "integer"}}}
                },
            },
            "blocks": [_block("a")],
        }
    )
    run_id = f"bad-{uuid.uuid4().hex[:6]}"
    error = await _rejected(client.start(name, {"doc": {"pages": "three"}}, run_id=run_id))
    assert isinstance(error, InvalidArgument)
    assert [v.field for v in error.violations] == ["input.doc.pages"]
    missing = await _rejected(client.describe(run_id))
    assert isinstance(missing, NotFound)


async def test_unknown_namespace(cluster: Cluster, client: Client) -> None:
    other = Client(cluster.frontend, namespace=f"nope-{uuid.uuid4().hex[:6]}")
    try:
        error = await _rejected(other.start("anything", {}))
    finally:
        await other.close()
    assert isinstance(error, NotFound)
    assert error.reason == "NAMESPACE_NOT_FOUND"


async def test_oversized_payload_starts_nothing(cluster: Cluster, client: Client) -> None:
    name = _flow()
    await client.register(
        {"name": name, "version": 1, "task_queue": "cpu", "blocks": [_block("a")]}
    )
    run_id = f"big-{uuid.uuid4().hex[:6]}"
    request = flow_service_pb2.StartRunRequest(
        namespace=client.namespace, run_id=run_id, input=payloads("x" * (3 * 1024 * 1024))
    )
    request.flow.name = name
    error = await _rejected(client.stub.StartRun(request, timeout=30))
    assert isinstance(error, InvalidArgument)
    assert [v.field for v in error.violations] == ["input"]
    assert "over the limit" in error.violations[0].description
    missing = await _rejected(client.describe(run_id))
    assert isinstance(missing, NotFound)


async def test_unknown_flow_and_run(cluster: Cluster, client: Client) -> None:
    error = await _rejected(client.start(_flow(), {}))
    assert isinstance(error, NotFound) and error.reason == "FLOW_NOT_FOUND"
    error = await _rejected(client.describe("never-started"))
    assert isinstance(error, NotFound) and error.reason == "RUN_NOT_FOUND"


async def test_input_that_breaks_a_variable_default_starts_nothing(
    cluster: Cluster, client: Client
) -> None:
    name = _flow()
    await client.register(
        {
            "name": name,
            "version": 1,
            "task_queue": "cpu",
            "vars": {"pages": "${input.doc.pages + 1}"},
            "blocks": [_block("a")],
        }
    )
    run_id = f"vars-{uuid.uuid4().hex[:6]}"
    error = await _rejected(client.start(name, {"doc": {}}, run_id=run_id))
    assert isinstance(error, InvalidArgument)
    assert error.reason == "INPUT_EVALUATION_FAILED"
    assert [v.field for v in error.violations] == ["input"]
    missing = await _rejected(client.describe(run_id))
    assert isinstance(missing, NotFound)


async def test_expressions_that_cannot_run_are_refused(cluster: Cluster, client: Client) -> None:
    """Issue 16, bug 3: an unknown function and a `when` that is never a bool registered, and
    every run then failed the block."""
    name = _flow()
    error = await _rejected(
        client.register(
            {
                "name": name,
                "version": 1,
                "task_queue": "cpu",
                "blocks": [
                    _block("a"),
                    _block("b", needs=["a"], when="nosuchfn(blocks.a.output)"),
                    _block("c", needs=["a"], when='"yes"'),
                ],
            }
        )
    )
    assert isinstance(error, InvalidArgument)
    by_field = {v.field: v.description for v in error.violations}
    assert sorted(by_field) == ["blocks[1].when", "blocks[2].when"]
    assert "unknown function nosuchfn()" in by_field["blocks[1].when"]
    assert by_field["blocks[2].when"] == '`"yes"`: must be a bool, but is a string'
    await _not_registered(client, name)
