"""The SDK's Client against real server processes, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from tests.support.cluster import Cluster
from tests.support.flows import BlockWorker, echo, payloads, value
from tideflow import Client, RunHandle, SyncClient
from tideflow.api.v1 import common_pb2, flow_service_pb2, flow_service_pb2_grpc, history_pb2
from tideflow.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RunFailedError,
    UnavailableError,
)


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _echo_flow(name: str, queue: str) -> dict[str, Any]:
    return {
        "name": name,
        "version": 1,
        "task_queue": queue,
        "blocks": [
            {
                "id": "echo",
                "external": {"block": "echo@1", "timeouts": {"start_to_close": "10s"}},
                "input": "${input}",
            }
        ],
        "output": "${blocks.echo.output}",
    }


@pytest.fixture(scope="module")
async def namespace(cluster: Cluster) -> str:
    name = _name("sdk")
    async with await Client.connect(cluster.frontend) as admin:
        info = await admin.register_namespace(name, description="sdk tests", retention_days=2)
    assert info.name == name
    return name


@pytest.fixture
async def sdk(cluster: Cluster, namespace: str) -> AsyncIterator[Client]:
    async with await Client.connect(cluster.frontend, namespace=namespace) as client:
        yield client


@pytest.fixture
async def echo_flow(sdk: Client) -> tuple[str, str]:
    flow, queue = _name("flow"), _name("q")
    await sdk.register_flow(_echo_flow(flow, queue))
    return flow, queue


async def test_namespace_and_flow_registration(sdk: Client, namespace: str) -> None:
    described = await sdk.describe_namespace()
    assert described.info.name == namespace
    assert described.info.description == "sdk tests"
    assert described.config.retention.ToSeconds() == 2 * 24 * 3600
    assert namespace in [n.info.name async for n in sdk.list_namespaces(page_size=1)]

    flow = _name("flow")
    registered = await sdk.register_flow(_echo_flow(flow, "q"))
    assert (registered.name, registered.version) == (flow, 1)
    assert (await sdk.describe_flow(flow)).version == 1
    assert [(f.name, f.version) async for f in sdk.list_flows(name=flow)] == [(flow, 1)]


async def test_start_and_result(cluster: Cluster, sdk: Client, echo_flow: tuple[str, str]) -> None:
    flow, queue = echo_flow
    async with BlockWorker(cluster.frontend, queue, {"echo@1": echo}, namespace=sdk.namespace):
        handle = await sdk.start_run(flow, {"doc": "hello", "n": [1, 2]}, memo={"who": "me"})
        assert handle.started and handle.execution_id
        assert await handle.result(timeout=60) == {"doc": "hello", "n": [1, 2]}
    described = await sdk.get_run(handle.run_id).describe()
    assert described.run_info.status == common_pb2.RUN_STATUS_COMPLETED
    assert described.run_info.run.execution_id == handle.execution_id
    assert "who" in described.run_info.memo.fields


async def test_execute_run_starts_and_returns_the_result_in_one_call(
    cluster: Cluster, sdk: Client, echo_flow: tuple[str, str]
) -> None:
    flow, queue = echo_flow
    run_id, request_id = _name("run"), str(uuid.uuid4())
    async with BlockWorker(cluster.frontend, queue, {"echo@1": echo}, namespace=sdk.namespace):
        assert await sdk.execute_run(flow, {"doc": "x"}, run_id=run_id, timeout=60) == {"doc": "x"}
    described = await sdk.get_run(run_id).describe()
    assert described.run_info.status == common_pb2.RUN_STATUS_COMPLETED

    # On the wire: one StartRun with wait_for_close answers with the close event, and a
    # repeat of it (same request_id) waits for the same execution instead of starting one.
    request = flow_service_pb2.StartRunRequest(
        namespace=sdk.namespace,
        run_id=_name("run"),
        flow=common_pb2.FlowRef(name=flow),
        input=payloads(7),
        request_id=request_id,
        wait_for_close=True,
    )
    async with (
        grpc.aio.insecure_channel(cluster.frontend) as channel,
        BlockWorker(cluster.frontend, queue, {"echo@1": echo}, namespace=sdk.namespace),
    ):
        stub = flow_service_pb2_grpc.FlowServiceStub(channel)
        first = await stub.StartRun(request, timeout=30)
        again = await stub.StartRun(request, timeout=30)
    assert first.started and not again.started
    assert again.execution_id == first.execution_id
    for reply in (first, again):
        assert reply.close_event.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
        assert value(reply.close_event.run_completed_event_attributes.result) == 7


async def test_start_and_wait_answers_within_the_callers_deadline(
    cluster: Cluster, sdk: Client, echo_flow: tuple[str, str]
) -> None:
    flow, _ = echo_flow  # nobody polls the queue: the run stays open
    request = flow_service_pb2.StartRunRequest(
        namespace=sdk.namespace,
        run_id=_name("run"),
        flow=common_pb2.FlowRef(name=flow),
        input=payloads(1),
        request_id=str(uuid.uuid4()),
        wait_for_close=True,
    )
    async with grpc.aio.insecure_channel(cluster.frontend) as channel:
        stub = flow_service_pb2_grpc.FlowServiceStub(channel)
        # The wait ends before the deadline with an answer: started, and still open.
        reply = await stub.StartRun(request, timeout=4)
    assert reply.started and reply.execution_id
    assert not reply.HasField("close_event")

    run_id, request_id = request.run_id, request.request_id

    with pytest.raises(TimeoutError):
        await sdk.execute_run(flow, 1, run_id=run_id, request_id=request_id, timeout=0.5)
    await sdk.get_run(run_id).terminate(reason="enough")
    # The same start again reaches the closed execution and reports how it closed.
    with pytest.raises(RunFailedError) as raised:
        await sdk.execute_run(flow, 1, run_id=run_id, request_id=request_id, timeout=30)
    assert raised.value.status == "TERMINATED"


async def test_terminated_run_fails_its_result(sdk: Client, echo_flow: tuple[str, str]) -> None:
    flow, _ = echo_flow  # nobody polls the queue: the run stays open until terminated
    handle = await sdk.start_run(flow, 1)
    await handle.terminate(reason="enough")
    with pytest.raises(RunFailedError) as raised:
        await handle.result(timeout=60)
    assert raised.value.status == "TERMINATED"
    assert "enough" in str(raised.value)


async def test_result_times_out_while_the_run_is_open(
    sdk: Client, echo_flow: tuple[str, str]
) -> None:
    handle = await sdk.start_run(echo_flow[0], 1)
    with pytest.raises(TimeoutError):
        await handle.result(timeout=0.5)
    await handle.cancel(reason="done")
    with pytest.raises(RunFailedError) as raised:
        await handle.result(timeout=60)
    assert raised.value.status == "CANCELED"


async def test_unknown_run_is_not_found(sdk: Client) -> None:
    with pytest.raises(NotFoundError) as raised:
        await sdk.get_run(_name("ghost")).describe()
    assert raised.value.reason == "RUN_NOT_FOUND"
    with pytest.raises(NotFoundError):
        await sdk.get_run(_name("ghost")).result(timeout=10)


async def test_bad_blueprint_lists_violations(sdk: Client) -> None:
    bad = _echo_flow(_name("flow"), "q")
    bad["blocks"].append({**bad["blocks"][0], "needs": ["ghost"]})
    with pytest.raises(InvalidArgumentError) as raised:
        await sdk.register_flow(bad)
    fields = {v.field for v in raised.value.violations}
    assert {"blocks[1].id", "blocks[1].needs[0]"} <= fields


async def test_start_with_the_same_request_id_is_idempotent(
    sdk: Client, echo_flow: tuple[str, str]
) -> None:
    run_id, request_id = _name("run"), str(uuid.uuid4())
    first = await sdk.start_run(echo_flow[0], 1, run_id=run_id, request_id=request_id)
    again = await sdk.start_run(echo_flow[0], 1, run_id=run_id, request_id=request_id)
    assert first.started and not again.started
    assert again.execution_id == first.execution_id
    await first.terminate()


async def test_history_follows_the_run_until_it_closes(
    cluster: Cluster, sdk: Client, echo_flow: tuple[str, str]
) -> None:
    flow, queue = echo_flow
    handle = await sdk.start_run(flow, "x")
    seen: asyncio.Queue[history_pb2.HistoryEvent] = asyncio.Queue()

    async def follow() -> None:
        async for event in handle.history(follow=True):
            seen.put_nowait(event)

    following = asyncio.create_task(follow())
    # Events arrive while the run is open: nobody has taken its block yet.
    first = await asyncio.wait_for(seen.get(), 30)
    assert first.event_type == history_pb2.EVENT_TYPE_RUN_STARTED
    assert not following.done()
    async with BlockWorker(cluster.frontend, queue, {"echo@1": echo}, namespace=sdk.namespace):
        await asyncio.wait_for(following, 60)
    events = [first] + [seen.get_nowait() for _ in range(seen.qsize())]
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert [e.event_id async for e in handle.history(page_size=2)] == [e.event_id for e in events]


async def test_list_runs_filters_by_status(
    cluster: Cluster, sdk: Client, echo_flow: tuple[str, str]
) -> None:
    flow, queue = echo_flow
    async with BlockWorker(cluster.frontend, queue, {"echo@1": echo}, namespace=sdk.namespace):
        done = await sdk.start_run(flow, 1)
        await done.result(timeout=60)
    killed: RunHandle = await sdk.start_run(flow, 2)
    await killed.terminate()

    async def listed(status: str) -> list[str]:
        return [r.run.run_id async for r in sdk.list_runs(statuses=[status], flow=flow)]

    # Visibility is written just after each commit, by the transfer queue: poll it.
    for _ in range(100):
        completed, terminated = await listed("COMPLETED"), await listed("TERMINATED")
        if completed and terminated:
            break
        await asyncio.sleep(0.1)
    assert completed == [done.run_id]
    assert terminated == [killed.run_id]
    assert await listed("RUNNING") == []


async def test_sync_client_from_a_thread(
    cluster: Cluster, namespace: str, echo_flow: tuple[str, str]
) -> None:
    flow, queue = echo_flow

    def script() -> tuple[Any, str, Any]:
        with SyncClient.connect(cluster.frontend, namespace=namespace) as client:
            handle = client.start_run(flow, {"from": "thread"})
            executed = client.execute_run(flow, {"executed": True}, timeout=60)
            return handle.result(timeout=60), handle.run_id, executed

    async with BlockWorker(cluster.frontend, queue, {"echo@1": echo}, namespace=namespace):
        result, run_id, executed = await asyncio.to_thread(script)
    assert result == {"from": "thread"}
    assert run_id
    assert executed == {"executed": True}


async def test_connect_fails_fast_without_a_server() -> None:
    with pytest.raises(UnavailableError):
        await Client.connect("127.0.0.1:1", timeout_s=0.5)


async def test_api_key_is_sent_and_errors_are_typed() -> None:
    seen: list[tuple[str, str]] = []

    async def describe_namespace(
        request: flow_service_pb2.DescribeNamespaceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> flow_service_pb2.DescribeNamespaceResponse:
        seen.extend((k, str(v)) for k, v in context.invocation_metadata() or ())
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        describe_namespace,
        request_deserializer=flow_service_pb2.DescribeNamespaceRequest.FromString,
        response_serializer=flow_service_pb2.DescribeNamespaceResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "tideflow.api.v1.FlowService", {"DescribeNamespace": handler}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with await Client.connect(f"127.0.0.1:{port}", api_key="s3cret") as client:
            with pytest.raises(PermissionDeniedError):
                await client.describe_namespace("x")
    finally:
        await server.stop(None)
    assert ("authorization", "Bearer s3cret") in seen
