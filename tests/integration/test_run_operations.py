"""Run operations over real processes: signals, reuse of a closed run_id, visibility lists,
paged history, guards, rate limits and task queue descriptions."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import grpc
import pytest

from tests.support.cluster import Cluster
from tests.support.flows import BlockWorker, Client, Task, echo, payloads, value
from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2
from tideflow_server.rpc.errors import AlreadyExists, ResourceExhausted, from_rpc_error


def _flow() -> str:
    return f"flow_{uuid.uuid4().hex[:8]}"


def _one_block(flow: str, queue: str) -> dict[str, Any]:
    return {
        "name": flow,
        "version": 1,
        "task_queue": queue,
        "blocks": [
            {
                "id": "a",
                "external": {"block": "a@1", "timeouts": {"start_to_close": "10s"}},
                "input": "${input}",
            }
        ],
        "output": "${blocks.a.output}",
    }


async def test_signal_is_recorded_once_per_request_id(cluster: Cluster, client: Client) -> None:
    queue, flow = f"q-{uuid.uuid4().hex[:6]}", _flow()
    await client.register(_one_block(flow, queue))
    run_id, _ = await client.start(flow, {"x": 1})
    signal = flow_service_pb2.SignalRunRequest(
        namespace=client.namespace,
        signal_name="approve",
        input=payloads({"by": "alice"}),
        request_id="sig-1",
    )
    signal.run.run_id = run_id
    await client.stub.SignalRun(signal, timeout=10)
    await client.stub.SignalRun(signal, timeout=10)  # a retry of the same request
    signaled = [
        e
        for e in await client.history(run_id)
        if e.event_type == history_pb2.EVENT_TYPE_RUN_SIGNALED
    ]
    assert len(signaled) == 1
    assert signaled[0].run_signaled_event_attributes.signal_name == "approve"
    assert value(signaled[0].run_signaled_event_attributes.input) == {"by": "alice"}


async def test_signal_with_start_starts_then_signals(cluster: Cluster, client: Client) -> None:
    queue, flow = f"q-{uuid.uuid4().hex[:6]}", _flow()
    await client.register(_one_block(flow, queue))
    run_id = f"sws-{uuid.uuid4().hex[:6]}"

    def request(request_id: str) -> flow_service_pb2.SignalWithStartRunRequest:
        given = flow_service_pb2.SignalWithStartRunRequest(
            namespace=client.namespace,
            run_id=run_id,
            signal_name="doc-arrived",
            signal_input=payloads(request_id),
            request_id=request_id,
        )
        given.flow.name = flow
        return given

    first = await client.stub.SignalWithStartRun(request("r1"), timeout=10)
    second = await client.stub.SignalWithStartRun(request("r2"), timeout=10)
    assert first.started and not second.started
    assert first.execution_id == second.execution_id
    types = [e.event_type for e in await client.history(run_id)]
    assert types[0] == history_pb2.EVENT_TYPE_RUN_STARTED
    assert types.count(history_pb2.EVENT_TYPE_RUN_SIGNALED) == 2


async def test_reuse_policy_for_a_closed_run_id(cluster: Cluster, client: Client) -> None:
    queue, flow = f"q-{uuid.uuid4().hex[:6]}", _flow()
    await client.register(_one_block(flow, queue))
    run_id = f"reuse-{uuid.uuid4().hex[:6]}"
    async with BlockWorker(cluster.frontend, queue, {"a@1": echo}):
        _, first = await client.start(flow, 1, run_id=run_id)
        await client.close_event(run_id)

        with pytest.raises(grpc.aio.AioRpcError) as rejected:
            await client.start(
                flow,
                2,
                run_id=run_id,
                run_id_reuse_policy=common_pb2.RUN_ID_REUSE_POLICY_REJECT_DUPLICATE,
            )
        error = from_rpc_error(rejected.value)
        assert isinstance(error, AlreadyExists) and error.reason == "RUN_ID_REUSE_REJECTED"

        with pytest.raises(grpc.aio.AioRpcError):
            await client.start(
                flow,
                2,
                run_id=run_id,
                run_id_reuse_policy=common_pb2.RUN_ID_REUSE_POLICY_ALLOW_DUPLICATE_FAILED_ONLY,
            )

        _, second = await client.start(flow, 3, run_id=run_id)  # ALLOW_DUPLICATE, the default
        assert second.started and second.execution_id != first.execution_id
        closed = await client.close_event(run_id)
    assert value(closed.run_completed_event_attributes.result) == 3


async def test_terminate_if_running_replaces_the_open_execution(
    cluster: Cluster, client: Client
) -> None:
    queue, flow = f"q-{uuid.uuid4().hex[:6]}", _flow()
    await client.register(_one_block(flow, queue))
    run_id = f"replace-{uuid.uuid4().hex[:6]}"
    _, first = await client.start(flow, 1, run_id=run_id)
    _, second = await client.start(
        flow,
        2,
        run_id=run_id,
        run_id_reuse_policy=common_pb2.RUN_ID_REUSE_POLICY_TERMINATE_IF_RUNNING,
    )
    assert second.started and second.execution_id != first.execution_id
    old = flow_service_pb2.GetRunHistoryRequest(namespace=client.namespace)
    old.run.run_id, old.run.execution_id = run_id, first.execution_id
    events = (await client.stub.GetRunHistory(old, timeout=10)).history.events
    assert events[-1].event_type == history_pb2.EVENT_TYPE_RUN_TERMINATED


async def test_list_runs_with_filters(cluster: Cluster, client: Client) -> None:
    queue = f"q-{uuid.uuid4().hex[:6]}"
    done_flow, open_flow = _flow(), _flow()
    await client.register(_one_block(done_flow, queue))
    await client.register(_one_block(open_flow, f"{queue}-idle"))
    async with BlockWorker(cluster.frontend, queue, {"a@1": echo}):
        done = [(await client.start(done_flow, i))[0] for i in range(3)]
        for run_id in done:
            await client.close_event(run_id)
    still_open = [(await client.start(open_flow, i))[0] for i in range(2)]

    async def listed(**kwargs: Any) -> list[str]:
        request = flow_service_pb2.ListRunsRequest(namespace=client.namespace, **kwargs)
        ids: list[str] = []
        while True:
            reply = await client.stub.ListRuns(request, timeout=10)
            ids += [r.run.run_id for r in reply.runs]
            if not reply.next_page_token:
                return ids
            request.next_page_token = reply.next_page_token

    # Visibility is written by the transfer queue, right after each commit.
    for _ in range(100):
        completed = await listed(
            flow_name=done_flow, statuses=[common_pb2.RUN_STATUS_COMPLETED], page_size=2
        )
        running = await listed(flow_name=open_flow, statuses=[common_pb2.RUN_STATUS_RUNNING])
        if len(completed) == 3 and len(running) == 2:
            break
        await asyncio.sleep(0.1)
    assert completed == list(reversed(done))  # newest first
    assert sorted(running) == sorted(still_open)
    assert await listed(run_id=done[0]) == [done[0]]


async def test_history_pages_and_long_polls(cluster: Cluster, client: Client) -> None:
    queue, flow = f"q-{uuid.uuid4().hex[:6]}", _flow()
    blocks = [
        {
            "id": f"b{i}",
            "needs": [f"b{i - 1}"] if i else [],
            "external": {"block": "a@1", "timeouts": {"start_to_close": "10s"}},
        }
        for i in range(6)
    ]
    await client.register({"name": flow, "version": 1, "task_queue": queue, "blocks": blocks})
    run_id, _ = await client.start(flow, None)

    # Following a run: the first read returns what exists and a position; a long poll from
    # that position returns as soon as the next event is committed.
    request = flow_service_pb2.GetRunHistoryRequest(namespace=client.namespace, wait_new_event=True)
    request.run.run_id = run_id
    first_page = await client.stub.GetRunHistory(request, timeout=10)
    assert first_page.next_page_token  # running: a position to wait from
    waiting = flow_service_pb2.GetRunHistoryRequest(
        namespace=client.namespace,
        wait_new_event=True,
        next_page_token=first_page.next_page_token,
    )
    waiting.run.run_id = run_id
    poll = asyncio.ensure_future(client.stub.GetRunHistory(waiting, timeout=20))
    async with BlockWorker(cluster.frontend, queue, {"a@1": echo}):
        new = await poll
        assert new.history.events[0].event_id == first_page.history.events[-1].event_id + 1
        await client.close_event(run_id)

    paged: list[int] = []
    request = flow_service_pb2.GetRunHistoryRequest(namespace=client.namespace, page_size=2)
    request.run.run_id = run_id
    pages = 0
    while True:
        reply = await client.stub.GetRunHistory(request, timeout=10)
        paged += [e.event_id for e in reply.history.events]
        pages += 1
        if not reply.next_page_token:
            break
        request.next_page_token = reply.next_page_token
    assert paged == list(range(1, len(paged) + 1))
    assert pages > 3


async def test_when_guard_skips_a_block(cluster: Cluster, client: Client) -> None:
    queue, flow = f"q-{uuid.uuid4().hex[:6]}", _flow()
    timeouts = {"start_to_close": "10s"}
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "timeouts": timeouts,
            "blocks": [
                {"id": "classify", "external": {"block": "classify@1"}, "input": "${input}"},
                {
                    "id": "ocr",
                    "needs": ["classify"],
                    "when": "blocks.classify.output.label == 'scan'",
                    "external": {"block": "ocr@1"},
                },
                {"id": "store", "needs": ["ocr"], "external": {"block": "store@1"}},
            ],
            "output": {"ocr": "${blocks.ocr.status}", "stored": "${blocks.store.succeeded}"},
        }
    )

    async def classify(task: Task) -> Any:
        return {"label": task.input["kind"]}

    worker = BlockWorker(
        cluster.frontend, queue, {"classify@1": classify, "ocr@1": echo, "store@1": echo}
    )
    async with worker:
        digital, _ = await client.start(flow, {"kind": "digital"})
        scan, _ = await client.start(flow, {"kind": "scan"})
        skipped = await client.close_event(digital)
        ran = await client.close_event(scan)
    assert value(skipped.run_completed_event_attributes.result) == {
        "ocr": "SKIPPED",
        "stored": True,
    }
    assert value(ran.run_completed_event_attributes.result) == {"ocr": "SUCCEEDED", "stored": True}
    assert (digital, "ocr") not in worker.attempts and (scan, "ocr") in worker.attempts


async def test_namespace_rate_limit(cluster: Cluster) -> None:
    limited = Client(cluster.frontend, namespace=f"limited-{uuid.uuid4().hex[:6]}")
    register = flow_service_pb2.RegisterNamespaceRequest(namespace=limited.namespace)
    register.config.rate_limits.requests_per_second = 0.5
    register.config.rate_limits.burst = 2
    await limited.stub.RegisterNamespace(register, timeout=10)
    list_flows = flow_service_pb2.ListFlowsRequest(namespace=limited.namespace)
    try:
        await limited.stub.ListFlows(list_flows, timeout=10)
        await limited.stub.ListFlows(list_flows, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as limited_out:
            await limited.stub.ListFlows(list_flows, timeout=10)
    finally:
        await limited.close()
    error = from_rpc_error(limited_out.value)
    assert isinstance(error, ResourceExhausted)
    assert error.reason == "NAMESPACE_RATE_LIMITED"
    assert int(error.metadata["retry_after_ms"]) > 0


async def test_a_namespace_over_its_limit_can_still_be_described_and_fixed(
    cluster: Cluster,
) -> None:
    limited = Client(cluster.frontend, namespace=f"locked-{uuid.uuid4().hex[:6]}")
    register = flow_service_pb2.RegisterNamespaceRequest(namespace=limited.namespace)
    register.config.rate_limits.requests_per_second = 0.01  # the slowest allowed
    register.config.rate_limits.burst = 1
    list_flows = flow_service_pb2.ListFlowsRequest(namespace=limited.namespace)
    try:
        await limited.stub.RegisterNamespace(register, timeout=10)
        await limited.stub.ListFlows(list_flows, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as limited_out:
            await limited.stub.ListFlows(list_flows, timeout=10)
        assert limited_out.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Administration is not charged to the namespace's own bucket.
        describe = flow_service_pb2.DescribeNamespaceRequest(namespace=limited.namespace)
        for _ in range(3):
            await limited.stub.DescribeNamespace(describe, timeout=10)
        fix = flow_service_pb2.UpdateNamespaceRequest(namespace=limited.namespace)
        fix.update_mask.paths.append("config.rate_limits")
        fix.config.rate_limits.requests_per_second = 1000
        fix.config.rate_limits.burst = 1000
        updated = await limited.stub.UpdateNamespace(fix, timeout=10)
        assert updated.config.rate_limits.requests_per_second == 1000
        # The emptied bucket now refills at the new rate: within the hinted wait, not 100 s.
        try:
            await limited.stub.ListFlows(list_flows, timeout=10)
        except grpc.aio.AioRpcError as e:
            retry_after_ms = int(from_rpc_error(e).metadata["retry_after_ms"])
            assert retry_after_ms <= 1
            await asyncio.sleep(retry_after_ms / 1000)
            await limited.stub.ListFlows(list_flows, timeout=10)
    finally:
        await limited.close()


async def test_describe_task_queue_shows_pollers_and_backlog(
    cluster: Cluster, client: Client
) -> None:
    queue, flow = f"q-{uuid.uuid4().hex[:6]}", _flow()
    await client.register(_one_block(flow, queue))
    for i in range(3):
        await client.start(flow, i)
    request = flow_service_pb2.DescribeTaskQueueRequest(namespace=client.namespace)
    request.task_queue.name = queue
    for _ in range(100):
        described = await client.stub.DescribeTaskQueue(request, timeout=10)
        if described.backlog_count_hint == 3:
            break
        await asyncio.sleep(0.1)  # the transfer queue pushes the block tasks after commit
    assert described.backlog_count_hint == 3
    assert not described.pollers
    worker = BlockWorker(cluster.frontend, queue, {"a@1": echo}, identity="ocr-box-1")
    async with worker:
        while sum(worker.attempts.values()) < 3:  # noqa: ASYNC110 - polling a counter
            await asyncio.sleep(0.05)
        described = await client.stub.DescribeTaskQueue(request, timeout=10)
    assert [p.identity for p in described.pollers] == ["ocr-box-1"]


async def _deleted_at(client: Client, run_id: str, *, within_s: float = 30.0) -> float:
    """Wall-clock time at which the run was first seen gone (DescribeRun NOT_FOUND). Polled:
    a deletion sends no event anyone can wait for."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        try:
            await client.describe(run_id)
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e
            return time.time()
        await asyncio.sleep(0.2)
    raise AssertionError(f"run {run_id} still there {within_s:g}s on")


async def test_closed_runs_leave_when_their_retention_ends(cluster: Cluster) -> None:
    """Retention (history/tasks/retention.py): in a namespace that keeps closed runs 2 s, a
    closed run's execution, history and visibility row are deleted after 2 s and within a
    bound; an open run, and a child left open by its closed parent (ABANDON), are untouched."""
    kept = Client(cluster.frontend, namespace=f"kept-{uuid.uuid4().hex[:6]}")
    register = flow_service_pb2.RegisterNamespaceRequest(namespace=kept.namespace)
    register.config.retention.FromSeconds(2)
    await kept.stub.RegisterNamespace(register, timeout=10)
    queue, idle = f"q-{uuid.uuid4().hex[:6]}", f"idle-{uuid.uuid4().hex[:6]}"
    done_flow, open_flow, parent_flow = _flow(), _flow(), _flow()
    await kept.register(_one_block(done_flow, queue))
    await kept.register(_one_block(open_flow, idle))  # nobody polls `idle`: its runs stay open
    await kept.register(
        {
            "name": parent_flow,
            "version": 1,
            "blocks": [
                {
                    "id": "sub",
                    "subflow": {
                        "flow": open_flow,
                        "parent_close_policy": "PARENT_CLOSE_POLICY_ABANDON",
                    },
                }
            ],
        }
    )
    try:
        async with BlockWorker(cluster.frontend, queue, {"a@1": echo}, namespace=kept.namespace):
            done, _ = await kept.start(done_flow, {"x": 1})
            closed = await kept.close_event(done, timeout_s=30)
        # Right after its close the run is all there.
        assert (await kept.describe(done)).run_info.status == common_pb2.RUN_STATUS_COMPLETED
        open_run, _ = await kept.start(open_flow, {})
        parent, _ = await kept.start(parent_flow, {})
        for _ in range(150):  # the child is started through the parent's outbox
            if any(
                e.event_type == history_pb2.EVENT_TYPE_CHILD_RUN_STARTED
                for e in await kept.history(parent)
            ):
                break
            await asyncio.sleep(0.1)
        terminate = flow_service_pb2.TerminateRunRequest(namespace=kept.namespace, reason="stop")
        terminate.run.run_id = parent
        await kept.stub.TerminateRun(terminate, timeout=10)

        gone = await _deleted_at(kept, done)
        closed_s = closed.event_time.ToNanoseconds() / 1e9
        assert gone - closed_s >= 2.0  # never before its retention
        with pytest.raises(grpc.aio.AioRpcError) as no_history:
            await kept.history(done)
        assert no_history.value.code() == grpc.StatusCode.NOT_FOUND
        listed = await kept.stub.ListRuns(
            flow_service_pb2.ListRunsRequest(namespace=kept.namespace, run_id=done), timeout=10
        )
        assert list(listed.runs) == []
        await _deleted_at(kept, parent)

        # The open run and the abandoned child are kept, whatever their age.
        for run_id in (open_run, f"{parent}/sub"):
            view = await kept.describe(run_id)
            assert view.run_info.status == common_pb2.RUN_STATUS_RUNNING
        listed = await kept.stub.ListRuns(
            flow_service_pb2.ListRunsRequest(
                namespace=kept.namespace, statuses=[common_pb2.RUN_STATUS_RUNNING]
            ),
            timeout=10,
        )
        assert sorted(r.run.run_id for r in listed.runs) == sorted([open_run, f"{parent}/sub"])
    finally:
        await kept.close()
