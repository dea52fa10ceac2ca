"""Bad input gets a precise status with the offending fields, and changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from tests.support.cluster import Cluster
from tests.support.flows import NAMESPACE, BlockWorker, Client, Task, payloads, value
from tideflow.api.v1 import (
    blueprint_pb2,
    common_pb2,
    failure_pb2,
    flow_service_pb2,
    flow_service_pb2_grpc,
    history_pb2,
)
from tideflow.api.v1.common_pb2 import PENDING_BLOCK_STATE_STARTED
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


# -- payloads that do not hold what their encoding says ------------------------------------


def _raw(data: bytes, encoding: bytes = b"json/plain") -> common_pb2.Payloads:
    return common_pb2.Payloads(
        payloads=[common_pb2.Payload(metadata={"encoding": encoding}, data=data)]
    )


async def _poll(stub: flow_service_pb2_grpc.FlowServiceAsyncStub, queue: str) -> Any:
    request = flow_service_pb2.PollBlockTaskRequest(namespace=NAMESPACE, identity="bad-input")
    request.task_queue.name = queue
    while True:
        task = await stub.PollBlockTask(request, timeout=15)
        if task.task_token:
            return task


def _completion(task: Any, result: common_pb2.Payloads) -> Any:
    return flow_service_pb2.RespondBlockCompletedRequest(
        namespace=NAMESPACE, task_token=task.task_token, result=result, identity="bad-input"
    )


async def test_start_input_that_is_not_json_starts_nothing(
    cluster: Cluster, client: Client
) -> None:
    name = _flow()
    await client.register(
        {"name": name, "version": 1, "task_queue": "cpu", "blocks": [_block("a")]}
    )
    for data, encoding, field in (
        (b"{not json", b"json/plain", "input.payloads[0].data"),
        (b"\x00\x01", b"binary/plain", 'input.payloads[0].metadata["encoding"]'),
    ):
        run_id = f"nojson-{uuid.uuid4().hex[:6]}"
        request = flow_service_pb2.StartRunRequest(
            namespace=client.namespace, run_id=run_id, input=_raw(data, encoding)
        )
        request.flow.name = name
        error = await _rejected(client.stub.StartRun(request, timeout=30))
        assert isinstance(error, InvalidArgument)
        assert [v.field for v in error.violations] == [field]
        missing = await _rejected(client.describe(run_id))
        assert isinstance(missing, NotFound)


async def _echo_flow(client: Client) -> tuple[str, str]:
    """A flow of one block `a` on a queue of its own that takes the run's input, and whose
    output is the run's result: (queue, flow name)."""
    queue, name = f"q-{uuid.uuid4().hex[:8]}", _flow()
    await client.register(
        {
            "name": name,
            "version": 1,
            "task_queue": queue,
            "blocks": [_block("a", input="${input}")],
            "output": "${blocks.a.output}",
        }
    )
    return queue, name


async def test_completion_that_is_not_json_is_refused_and_the_block_stays_open(
    cluster: Cluster, client: Client
) -> None:
    queue, name = await _echo_flow(client)
    run_id, _ = await client.start(name, {"n": 1})
    async with grpc.aio.insecure_channel(cluster.frontend) as channel:
        stub = flow_service_pb2_grpc.FlowServiceStub(channel)
        task = await _poll(stub, queue)
        bad = _completion(task, _raw(b"{not json"))
        error = await _rejected(stub.RespondBlockCompleted(bad, timeout=10))
        assert isinstance(error, InvalidArgument)
        assert [v.field for v in error.violations] == ["result.payloads[0].data"]
        batch = flow_service_pb2.RespondBlockCompletedBatchRequest(completions=[bad])
        error = await _rejected(stub.RespondBlockCompletedBatch(batch, timeout=10))
        assert isinstance(error, InvalidArgument)
        assert [v.field for v in error.violations] == ["completions[0].result.payloads[0].data"]
        [pending] = (await client.describe(run_id)).pending_blocks
        assert (pending.block_id, pending.state) == ("a", PENDING_BLOCK_STATE_STARTED)
        await stub.RespondBlockCompleted(_completion(task, payloads({"ok": True})), timeout=10)
    closed = await client.close_event(run_id)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert value(closed.run_completed_event_attributes.result) == {"ok": True}


# -- tokens and kindless values name their field -------------------------------------------


async def test_garbage_tokens_name_their_field(cluster: Cluster, client: Client) -> None:
    name = _flow()
    await client.register(
        {"name": name, "version": 1, "task_queue": "nobody-polls", "blocks": [_block("a")]}
    )
    run_id, _ = await client.start(name, {})
    garbage, ns, stub = b"\xffnot a token", client.namespace, client.stub
    history = flow_service_pb2.GetRunHistoryRequest(namespace=ns, next_page_token=garbage)
    history.run.run_id = run_id
    failure = failure_pb2.Failure(message="boom")
    calls: list[tuple[Callable[[], Any], str]] = [
        (
            lambda: stub.ListRuns(
                flow_service_pb2.ListRunsRequest(namespace=ns, next_page_token=garbage), timeout=10
            ),
            "next_page_token",
        ),
        (
            lambda: stub.ListFlows(
                flow_service_pb2.ListFlowsRequest(namespace=ns, next_page_token=garbage), timeout=10
            ),
            "next_page_token",
        ),
        (
            lambda: stub.ListNamespaces(
                flow_service_pb2.ListNamespacesRequest(next_page_token=garbage), timeout=10
            ),
            "next_page_token",
        ),
        (lambda: stub.GetRunHistory(history, timeout=10), "next_page_token"),
        (
            lambda: stub.RespondBlockCompleted(
                flow_service_pb2.RespondBlockCompletedRequest(namespace=ns, task_token=garbage),
                timeout=10,
            ),
            "task_token",
        ),
        (
            lambda: stub.RespondBlockFailed(
                flow_service_pb2.RespondBlockFailedRequest(
                    namespace=ns, task_token=garbage, failure=failure
                ),
                timeout=10,
            ),
            "task_token",
        ),
        (
            lambda: stub.RespondBlockCanceled(
                flow_service_pb2.RespondBlockCanceledRequest(namespace=ns, task_token=garbage),
                timeout=10,
            ),
            "task_token",
        ),
        (
            lambda: stub.RecordBlockHeartbeat(
                flow_service_pb2.RecordBlockHeartbeatRequest(namespace=ns, task_token=garbage),
                timeout=10,
            ),
            "task_token",
        ),
        (
            lambda: stub.RespondBlockCompletedBatch(
                flow_service_pb2.RespondBlockCompletedBatchRequest(
                    completions=[
                        flow_service_pb2.RespondBlockCompletedRequest(
                            namespace=ns, task_token=garbage
                        )
                    ]
                ),
                timeout=10,
            ),
            "completions[0].task_token",
        ),
    ]
    for call, field in calls:
        error = await _rejected(call())
        assert isinstance(error, InvalidArgument), error
        assert [v.field for v in error.violations] == [field], error.violations


async def test_value_with_no_kind_is_rejected_at_registration(
    cluster: Cluster, client: Client
) -> None:
    name = _flow()
    blueprint = json_format.ParseDict(
        {
            "name": name,
            "version": 1,
            "task_queue": "cpu",
            "blocks": [_block("a"), {"id": "b", "needs": ["a"], "set": {"vars": {"x": 1}}}],
        },
        blueprint_pb2.Blueprint(),
    )
    # What a client gets by building google.protobuf.Value() and never setting it.
    blueprint.blocks[0].input.SetInParent()
    blueprint.blocks[1].set.vars["y"].SetInParent()
    blueprint.output.struct_value.fields["label"].SetInParent()
    error = await _rejected(
        client.stub.RegisterFlow(
            flow_service_pb2.RegisterFlowRequest(namespace=client.namespace, blueprint=blueprint),
            timeout=10,
        )
    )
    assert isinstance(error, InvalidArgument)
    assert [v.field for v in error.violations] == [
        "blocks[0].input",
        "blocks[1].set.vars.y",
        "output.label",
    ]
    await _not_registered(client, name)


# -- a step's history against the size limits ----------------------------------------------

_BIG = "x" * (1536 * 1024)  # 1.5 MiB: under the 2 MiB payload limit
_BATCH_SETTING = "persistence.limits.max_history_batch_bytes"


async def test_input_under_the_payload_limit_runs_when_the_first_block_takes_it(
    cluster: Cluster, client: Client
) -> None:
    queue, name = await _echo_flow(client)

    async def size(task: Task) -> int:
        return len(task.input)

    async with BlockWorker(cluster.frontend, queue, {"ocr@1": size}, concurrency=1):
        run_id, _ = await client.start(name, _BIG)
        closed = await client.close_event(run_id)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert value(closed.run_completed_event_attributes.result) == len(_BIG)


async def test_a_step_over_the_history_batch_limit_names_the_field_and_the_setting(
    cluster: Cluster, client: Client
) -> None:
    queue, name = f"q-{uuid.uuid4().hex[:8]}", _flow()
    fan_out = [_block(f"b{i}", needs=["a"], input="${blocks.a.output}") for i in range(4)]
    await client.register(
        {
            "name": name,
            "version": 1,
            "task_queue": queue,
            "blocks": [_block("a", input="${input}"), *fan_out],
        }
    )
    # Starting: four blocks, each with its own copy of the input, would not fit one step.
    wide = _flow()
    await client.register(
        {
            "name": wide,
            "version": 1,
            "task_queue": queue,
            "blocks": [_block(f"b{i}", input="${input}") for i in range(4)],
        }
    )
    run_id = f"wide-{uuid.uuid4().hex[:6]}"
    error = await _rejected(client.start(wide, _BIG, run_id=run_id))
    assert isinstance(error, InvalidArgument)
    assert [v.field for v in error.violations] == ["input"]
    assert _BATCH_SETTING in error.violations[0].description
    missing = await _rejected(client.describe(run_id))
    assert isinstance(missing, NotFound)

    # Completing: the result fans out to four blocks; the worker is told, the block stays open.
    run_id, _ = await client.start(name, {})
    async with grpc.aio.insecure_channel(cluster.frontend) as channel:
        stub = flow_service_pb2_grpc.FlowServiceStub(channel)
        task = await _poll(stub, queue)
        error = await _rejected(
            stub.RespondBlockCompleted(_completion(task, payloads(_BIG)), timeout=30)
        )
        assert isinstance(error, InvalidArgument)
        assert [v.field for v in error.violations] == ["result"]
        assert _BATCH_SETTING in error.violations[0].description
        [pending] = (await client.describe(run_id)).pending_blocks
        assert (pending.block_id, pending.state) == ("a", PENDING_BLOCK_STATE_STARTED)
