"""`wait` and `signal` blocks over real server processes: durable timers, signals taken
before and while a block waits, accept filters, timeouts, escalations and the buffer bound."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.cluster import Cluster, running_sqlite_cluster
from tests.support.flows import BlockWorker, Client, Task, payloads, value
from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2

COMPLETED = history_pb2.EVENT_TYPE_RUN_COMPLETED


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _flow(flow: str, *blocks: dict[str, Any], output: Any = None) -> dict[str, Any]:
    bp: dict[str, Any] = {
        "name": flow,
        "version": 1,
        "task_queue": "waits",
        "timeouts": {"start_to_close": "10s"},
        "blocks": list(blocks),
    }
    if output is not None:
        bp["output"] = output
    return bp


def _approval(**fields: Any) -> dict[str, Any]:
    return {"id": "approval", "signal": {"signal_name": "approve", **fields}}


async def _signal(client: Client, run_id: str, name: str, data: Any) -> None:
    request = flow_service_pb2.SignalRunRequest(
        namespace=client.namespace, signal_name=name, input=payloads(data)
    )
    request.run.run_id = run_id
    await client.stub.SignalRun(request, timeout=10)


async def _result(client: Client, run_id: str) -> Any:
    close = await client.close_event(run_id)
    assert close.event_type == COMPLETED, close
    return value(close.run_completed_event_attributes.result)


def _types(events: list[history_pb2.HistoryEvent]) -> list[int]:
    return [e.event_type for e in events]


async def test_a_wait_completes_when_its_timer_fires(cluster: Cluster, client: Client) -> None:
    flow = _name("wait")
    await client.register(
        _flow(
            flow,
            {"id": "pause", "wait": {"duration": "1s"}},
            {"id": "done", "needs": ["pause"], "transform": {"output": "waited"}},
            output="${blocks.done.output}",
        )
    )
    run_id, _ = await client.start(flow)
    described = await client.describe(run_id)
    [pause] = [b for b in described.blocks if b.block_id == "pause"]
    assert pause.status == common_pb2.BLOCK_STATUS_RUNNING
    assert pause.waiting.WhichOneof("on") == "timer"
    assert pause.waiting.HasField("deadline")
    assert await _result(client, run_id) == "waited"
    events = await client.history(run_id)
    [started] = [e for e in events if e.event_type == history_pb2.EVENT_TYPE_TIMER_STARTED]
    attrs = started.timer_started_event_attributes
    assert (attrs.timer_id, attrs.block_id) == ("pause:wait", "pause")
    assert attrs.start_to_fire_timeout.ToTimedelta().total_seconds() == 1
    assert attrs.fire_time == pause.waiting.deadline
    assert history_pb2.EVENT_TYPE_TIMER_FIRED in _types(events)


async def test_a_signal_completes_the_block_with_its_payload(
    cluster: Cluster, client: Client
) -> None:
    flow = _name("signal")
    await client.register(_flow(flow, _approval(), output="${blocks.approval.output}"))
    run_id, _ = await client.start(flow)
    described = await client.describe(run_id)
    # Parked: no timer, no event beyond the start, and it says what it waits for.
    assert described.run_info.history_length == 1
    [approval] = described.blocks
    assert approval.status == common_pb2.BLOCK_STATUS_RUNNING
    assert approval.waiting.signal.signal_name == "approve"
    assert not approval.waiting.HasField("deadline")
    await _signal(client, run_id, "approve", {"by": "ann", "ok": True})
    assert await _result(client, run_id) == {"by": "ann", "ok": True}


async def test_a_signal_sent_before_the_block_started_is_kept_and_taken(
    cluster: Cluster, client: Client
) -> None:
    flow = _name("early")
    await client.register(
        _flow(
            flow,
            {"id": "pause", "wait": {"duration": "1s"}},
            {"id": "approval", "needs": ["pause"], "signal": {"signal_name": "approve"}},
            output="${blocks.approval.output}",
        )
    )
    run_id, _ = await client.start(flow)
    await _signal(client, run_id, "approve", "early bird")  # the block has not started yet
    assert await _result(client, run_id) == "early bird"


async def test_accept_skips_a_signal_it_refuses(cluster: Cluster, client: Client) -> None:
    flow = _name("accept")
    await client.register(
        _flow(flow, _approval(accept="signal.amount <= 100"), output="${blocks.approval.output}")
    )
    run_id, _ = await client.start(flow)
    described = await client.describe(run_id)
    assert described.blocks[0].waiting.signal.accept == "signal.amount <= 100"
    await _signal(client, run_id, "approve", {"amount": 500})
    await _signal(client, run_id, "approve", {"amount": 50})
    assert await _result(client, run_id) == {"amount": 50}
    events = await client.history(run_id)
    signaled = [e.event_id for e in events if e.event_type == history_pb2.EVENT_TYPE_RUN_SIGNALED]
    [completed] = [
        e.system_block_completed_event_attributes
        for e in events
        if e.event_type == history_pb2.EVENT_TYPE_SYSTEM_BLOCK_COMPLETED
    ]
    assert completed.cause_event_id == signaled[1]


async def test_a_timeout_routes_to_on_timeout(cluster: Cluster, client: Client) -> None:
    flow = _name("timeout")
    await client.register(
        _flow(
            flow,
            _approval(timeout="1s", on_timeout="late"),
            {"id": "approved", "needs": ["approval"], "transform": {"output": "approved"}},
            {"id": "late", "needs": ["approval"], "transform": {"output": "too late"}},
            output="${blocks.late.output}",
        )
    )
    run_id, _ = await client.start(flow)
    assert await _result(client, run_id) == "too late"
    blocks = {b.block_id: b for b in (await client.describe(run_id)).blocks}
    assert blocks["approval"].status == common_pb2.BLOCK_STATUS_FAILED
    assert (blocks["approval"].routed, blocks["approval"].route) == (True, "late")
    cause = blocks["approval"].failure.cause
    assert cause.application_failure_info.type == "TimeoutError"
    assert cause.message == "signal approve not received within 1s"
    assert blocks["approved"].status == common_pb2.BLOCK_STATUS_SKIPPED


async def test_an_escalation_runs_its_target_and_the_block_keeps_waiting(
    cluster: Cluster, client: Client
) -> None:
    flow, queue = _name("escalate"), _name("notify")
    await client.register(
        _flow(
            flow,
            _approval(timeout="600s", escalations=[{"after": "1s", "goto": "remind"}]),
            {"id": "remind", "external": {"block": "notify@1", "task_queue": queue}},
            output="${blocks.approval.output}",
        )
    )
    reminded = asyncio.Event()

    async def notify(task: Task) -> Any:
        reminded.set()
        return "sent"

    async with BlockWorker(cluster.frontend, queue, {"notify@1": notify}):
        run_id, _ = await client.start(flow)
        await asyncio.wait_for(reminded.wait(), 30)
        blocks = {b.block_id: b for b in (await client.describe(run_id)).blocks}
        assert blocks["approval"].status == common_pb2.BLOCK_STATUS_RUNNING
        assert list(blocks["approval"].escalated) == ["remind"]
        await _signal(client, run_id, "approve", "finally")
        assert await _result(client, run_id) == "finally"
    events = await client.history(run_id)
    assert history_pb2.EVENT_TYPE_TIMER_CANCELED in _types(events)  # the timeout


async def test_closing_a_run_ends_its_waits(cluster: Cluster, client: Client) -> None:
    flow = _name("terminate")
    await client.register(_flow(flow, _approval(timeout="600s")))
    run_id, _ = await client.start(flow)
    request = flow_service_pb2.TerminateRunRequest(namespace=client.namespace, reason="enough")
    request.run.run_id = run_id
    await client.stub.TerminateRun(request, timeout=10)
    [approval] = (await client.describe(run_id)).blocks
    assert approval.status == common_pb2.BLOCK_STATUS_CANCELED
    assert not approval.HasField("waiting")


async def test_registration_reports_malformed_waits_and_signals(
    cluster: Cluster, client: Client
) -> None:
    bad = _flow(
        _name("bad"),
        {"id": "w", "wait": {"duration": "-5s"}},
        {"id": "s", "signal": {"timeout": "1s", "on_timeout": "w", "accept": "signal +"}},
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.register(bad)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = raised.value.details() or ""
    assert "blocks[0].wait.duration: must not be negative" in details
    assert "blocks[1].signal.signal_name: the signal name is required" in details
    assert "blocks[1].signal.on_timeout: 'w' must need 's'" in details
    assert "blocks[1].signal.accept: invalid CEL" in details


async def test_signals_past_the_buffer_bound_are_refused_and_change_nothing(
    tmp_path: Path,
) -> None:
    settings = {"history": {"max_buffered_signals": 2}}
    async with running_sqlite_cluster(tmp_path, settings=settings) as cluster:
        client = Client(cluster.frontend)
        await client.ensure_namespace()
        try:
            flow = _name("bound")
            await client.register(_flow(flow, _approval(), output="${blocks.approval.output}"))
            run_id, _ = await client.start(flow)
            for i in range(2):
                await _signal(client, run_id, "other", i)  # nobody takes these
            before = (await client.describe(run_id)).run_info.history_length
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await _signal(client, run_id, "other", 3)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "history.max_buffered_signals" in (raised.value.details() or "")
            assert (await client.describe(run_id)).run_info.history_length == before
            await _signal(client, run_id, "approve", "taken")  # a signal a block takes is fine
            assert await _result(client, run_id) == "taken"
        finally:
            await client.close()
