"""Issue 17: bad input at the edge is never INTERNAL or UNKNOWN. Each case answers
INVALID_ARGUMENT naming its field (or another precise status), and changes nothing."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import json_format

from tests.support.cluster import Cluster
from tests.support.flows import Client
from tideflow.api.v1 import blueprint_pb2, common_pb2, failure_pb2, flow_service_pb2, history_pb2
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.persistence.records import ExecutionKey, UpdateExecution
from tideflow_server.persistence.sqlite import open_sqlite
from tideflow_server.rpc.clients import shard_for
from tideflow_server.rpc.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
    from_rpc_error,
)


async def _rejected(call: Any) -> ServiceError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return from_rpc_error(raised.value)


async def test_a_huge_namespace_data_key_is_not_echoed_whole(
    cluster: Cluster, client: Client
) -> None:
    """Item 8: the 16 KB key made the status bigger than the client takes (it saw
    RESOURCE_EXHAUSTED); the violation names the key, cut short."""
    key = "k" * 20_000
    request = flow_service_pb2.RegisterNamespaceRequest(namespace="huge-key", data={key: "v"})
    error = await _rejected(client.stub.RegisterNamespace(request, timeout=10))
    assert isinstance(error, InvalidArgument), error
    [violation] = error.violations
    assert violation.field.startswith('data["kkkk')
    assert violation.field.endswith("characters)")
    assert "over the limit of 255" in violation.description


_GARBAGE = b"\xff\xff\xff\xff\x0f\x00garbage"  # a field tag past the largest field number

_METHODS = [
    ("frontend", "/tideflow.api.v1.FlowService/StartRun", "tideflow.api.v1.StartRunRequest"),
    (
        "frontend",
        "/tideflow.api.v1.FlowService/RespondBlockCompleted",
        "tideflow.api.v1.RespondBlockCompletedRequest",
    ),
    (
        "frontend",
        "/tideflow.api.v1.OperatorService/ListShards",
        "tideflow.api.v1.ListShardsRequest",
    ),
    (
        "history",
        "/tideflow_server.internal.v1.HistoryService/SignalRun",
        "tideflow_server.internal.v1.SignalRunRequest",
    ),
    (
        "matching",
        "/tideflow_server.internal.v1.MatchingService/PollBlockTask",
        "tideflow_server.internal.v1.PollBlockTaskRequest",
    ),
]


@pytest.mark.parametrize(("role", "method", "message"), _METHODS)
async def test_bytes_that_are_no_request_are_invalid_argument(
    cluster: Cluster, role: str, method: str, message: str
) -> None:
    """Item 7: gRPC answers a request it cannot decode with UNKNOWN; every service of every
    role answers INVALID_ARGUMENT naming the message it expected."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cluster.ports[role]}") as channel:
        call = channel.unary_unary(method, None, None)
        error = await _rejected(call(_GARBAGE, timeout=10))
    assert isinstance(error, InvalidArgument), error
    assert error.reason == "UNDECODABLE_REQUEST"
    [violation] = error.violations
    assert f"is not a valid {message} message" in violation.description


async def test_bytes_that_are_no_request_on_a_stream_are_invalid_argument(
    cluster: Cluster,
) -> None:
    """Item 7, streams: the internal completion stream reads through its context."""
    method = "/tideflow_server.internal.v1.HistoryService/RespondBlockCompletedStream"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cluster.ports['history']}") as channel:
        call = channel.stream_stream(method, None, None)(iter([_GARBAGE]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in call:
                pass
    error = from_rpc_error(raised.value)
    assert isinstance(error, InvalidArgument), error
    assert error.reason == "UNDECODABLE_REQUEST"


async def test_durations_out_of_range_or_absurd_are_refused_at_registration(
    cluster: Cluster, client: Client
) -> None:
    """Item 4: these registered, and every StartRun of the flow then answered INTERNAL."""
    name = f"flow_{uuid.uuid4().hex[:8]}"
    blueprint = json_format.ParseDict(
        {
            "name": name,
            "version": 1,
            "task_queue": "cpu",
            "blocks": [{"id": "a", "external": {"block": "ocr@1"}}],
        },
        blueprint_pb2.Blueprint(),
    )
    blueprint.run_timeout.seconds = 4_600_000_000_000_000_000
    blueprint.retry.initial_interval.seconds = -4_600_000_000_000_000_000
    blueprint.blocks[0].external.timeouts.start_to_close.seconds = 8000 * 365 * 86_400
    request = flow_service_pb2.RegisterFlowRequest(namespace=client.namespace, blueprint=blueprint)
    error = await _rejected(client.stub.RegisterFlow(request, timeout=10))
    assert isinstance(error, InvalidArgument), error
    assert sorted(v.field for v in error.violations) == [
        "blocks[0].external.timeouts.start_to_close",
        "retry.initial_interval",
        "run_timeout",
    ]
    missing = await _rejected(
        client.stub.DescribeFlow(
            flow_service_pb2.DescribeFlowRequest(namespace=client.namespace, name=name), timeout=10
        )
    )
    assert isinstance(missing, NotFound)


def _too_deep(state: records_pb2.MutableState) -> bytes:
    """`state` with a variable nested past what protobuf decoders read (100 levels), as a
    value accepted before any depth bound existed could leave it."""
    deep = state.execution_info.vars["deep"]
    for _ in range(60):
        deep = deep.list_value.values.add()
    deep.number_value = 1
    return state.SerializeToString()


async def _write_unreadable_state(cluster: Cluster, namespace_id: str, run_id: str) -> None:
    """Through the persistence layer, with the server down: the run's state stops parsing."""
    path = cast(dict[str, str], cluster.persistence["sqlite"])["path"]
    persistence = await open_sqlite(Path(path))
    try:
        shard_id = shard_for(namespace_id, run_id, cluster.shard_count)
        current = await persistence.executions.get_current_run(shard_id, namespace_id, run_id)
        key = ExecutionKey(shard_id, namespace_id, run_id, current.execution_id)
        row = await persistence.executions.get_execution(key)
        shard = await persistence.shards.get_shard(shard_id)
        data = _too_deep(records_pb2.MutableState.FromString(row.data))
        await persistence.executions.update_execution(
            UpdateExecution(
                shard_id=shard_id,
                range_id=shard.range_id,
                execution=dataclasses.replace(row, db_version=row.db_version + 1, data=data),
                expected_db_version=row.db_version,
            )
        )
    finally:
        await persistence.close()


async def test_a_run_whose_state_no_longer_parses_can_still_be_terminated(
    cluster: Cluster, client: Client
) -> None:
    """Item 2: such a run answered INTERNAL to every call and could never be ended. Every
    call but TerminateRun answers FAILED_PRECONDITION saying why; TerminateRun closes it."""
    if cluster.persistence["backend"] != "sqlite":
        pytest.skip("writes the state through the SQLite store of a one-process cluster")
    name = f"flow_{uuid.uuid4().hex[:8]}"
    await client.register(
        {
            "name": name,
            "version": 1,
            "task_queue": "nobody-polls",
            "blocks": [
                {"id": "a", "external": {"block": "ocr@1", "timeouts": {"start_to_close": "60s"}}}
            ],
        }
    )
    run_id, _ = await client.start(name, {"n": 1})
    namespace = await client.stub.DescribeNamespace(
        flow_service_pb2.DescribeNamespaceRequest(namespace=client.namespace), timeout=10
    )
    [server] = cluster.processes.values()
    server.kill()
    await _write_unreadable_state(cluster, namespace.info.id, run_id)
    server.start()
    await server.wait_serving()

    signal = flow_service_pb2.SignalRunRequest(namespace=client.namespace, signal_name="go")
    signal.run.run_id = run_id
    history = flow_service_pb2.GetRunHistoryRequest(namespace=client.namespace)
    history.run.run_id = run_id
    for call in (
        client.describe(run_id),
        client.stub.SignalRun(signal, timeout=10),
        client.stub.GetRunHistory(history, timeout=10),
    ):
        error = await _rejected(call)
        assert isinstance(error, FailedPrecondition), error
        assert error.reason == "RUN_STATE_UNREADABLE"
        assert "TerminateRun can still close it" in error.message

    terminate = flow_service_pb2.TerminateRunRequest(
        namespace=client.namespace, reason="state lost", identity="operator"
    )
    terminate.run.run_id = run_id
    await client.stub.TerminateRun(terminate, timeout=10)
    described = await client.describe(run_id)
    assert described.run_info.status == common_pb2.RUN_STATUS_TERMINATED
    closed = await client.close_event(run_id)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_TERMINATED
    assert closed.run_terminated_event_attributes.reason == "state lost"


def _wrapped(levels: int, inner: Any) -> Any:
    for _ in range(levels):
        inner = {"a": inner}
    return inner


async def test_a_blueprint_that_wraps_a_deep_value_deeper_still_keeps_the_run_readable(
    cluster: Cluster, client: Client
) -> None:
    """Item 2, the wrapping the engine adds: an input at the depth limit, wrapped by the
    blueprint in ten more levels, would no longer parse back once stored. A variable default
    refuses the start; a transform block fails, and the run with it, readably."""
    deep_input = _wrapped(24, 1)
    wraps_in_vars = f"flow_{uuid.uuid4().hex[:8]}"
    await client.register(
        {
            "name": wraps_in_vars,
            "version": 1,
            "vars": {"v": _wrapped(10, "${input}")},
            "blocks": [{"id": "t", "transform": {"output": 1}}],
        }
    )
    run_id = f"deep-{uuid.uuid4().hex[:6]}"
    error = await _rejected(client.start(wraps_in_vars, deep_input, run_id=run_id))
    assert isinstance(error, InvalidArgument), error
    [violation] = error.violations
    assert violation.field == "input"
    assert violation.description.startswith("vars.v: with this input, the default nests")
    assert isinstance(await _rejected(client.describe(run_id)), NotFound)

    wraps_in_a_block = f"flow_{uuid.uuid4().hex[:8]}"
    await client.register(
        {
            "name": wraps_in_a_block,
            "version": 1,
            "blocks": [{"id": "t", "transform": {"output": _wrapped(10, "${input}")}}],
        }
    )
    run_id, _ = await client.start(wraps_in_a_block, deep_input)
    closed = await client.close_event(run_id)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    cause = closed.run_failed_event_attributes.failure.cause
    assert cause.server_failure_info.type == "ValueTooDeep"
    described = await client.describe(run_id)
    assert described.run_info.status == common_pb2.RUN_STATUS_FAILED


def _chain(causes: int) -> failure_pb2.Failure:
    outer = inner = failure_pb2.Failure(message="0")
    for i in range(causes):
        inner = inner.cause
        inner.message = str(i + 1)
    return outer


async def test_a_long_cause_chain_is_refused_at_the_edge(cluster: Cluster, client: Client) -> None:
    """Item 6: 50-99 causes answered INTERNAL (the internal hop could not parse them), more
    UNKNOWN (the frontend could not)."""
    request = flow_service_pb2.RespondBlockFailedRequest(
        namespace=client.namespace, task_token=b"\x0a\x05token", failure=_chain(60)
    )
    error = await _rejected(client.stub.RespondBlockFailed(request, timeout=10))
    assert isinstance(error, InvalidArgument), error
    assert "failure" + ".cause" * 17 in [v.field for v in error.violations]

    request.failure.CopyFrom(_chain(150))
    error = await _rejected(client.stub.RespondBlockFailed(request, timeout=10))
    assert isinstance(error, InvalidArgument), error
    assert error.reason == "UNDECODABLE_REQUEST"
