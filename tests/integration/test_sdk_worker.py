"""The SDK block worker against real server processes, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import grpc
import pytest

from tests.support.cluster import Cluster
from tests.support.flows import Client, value
from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2
from tideflow.errors import ApplicationError
from tideflow.worker import Worker, block, context


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _blueprint(
    flow: str,
    queue: str,
    block_types: list[str],
    *,
    retry: dict[str, Any] | None = None,
    timeouts: dict[str, str] | None = None,
    chain: bool = True,
) -> dict[str, Any]:
    """Blocks one after another (`chain`) or side by side; the output is the last block's."""
    blocks: list[dict[str, Any]] = []
    for i, block_type in enumerate(block_types):
        external: dict[str, Any] = {
            "block": block_type,
            "timeouts": timeouts or {"start_to_close": "10s"},
        }
        if retry:
            external["retry"] = retry
        spec: dict[str, Any] = {"id": f"b{i}", "external": external}
        if chain and i:
            spec["needs"] = [f"b{i - 1}"]
            spec["input"] = f"${{blocks.b{i - 1}.output}}"
        else:
            spec["input"] = "${input}"
        blocks.append(spec)
    return {
        "name": flow,
        "version": 1,
        "task_queue": queue,
        "blocks": blocks,
        "output": f"${{blocks.b{len(block_types) - 1}.output}}",
    }


def _worker(cluster: Cluster, queue: str, blocks: list[Any], **kwargs: Any) -> Worker:
    return Worker(cluster.frontend, task_queue=queue, blocks=blocks, namespace="tests", **kwargs)


def _failures(events: list[history_pb2.HistoryEvent]) -> Iterator[Any]:
    for e in events:
        if e.event_type == history_pb2.EVENT_TYPE_BLOCK_FAILED:
            yield e.block_failed_event_attributes.failure


async def test_async_and_sync_blocks_complete_a_flow(cluster: Cluster, client: Client) -> None:
    suffix = uuid.uuid4().hex[:6]
    threads: list[bool] = []

    @block(f"upper_{suffix}")
    async def upper(text: str) -> str:
        assert context().info.block_id == "b0"
        return text.upper()

    @block(f"count_{suffix}", version=2)
    def count(text: str) -> dict[str, Any]:
        threads.append(threading.current_thread() is threading.main_thread())
        return {"text": text, "n": len(text), "block": context().info.block_type}

    queue, flow = _name("q"), _name("flow")
    await client.register(_blueprint(flow, queue, [f"upper_{suffix}@1", f"count_{suffix}@2"]))
    async with _worker(cluster, queue, [upper, count]):
        run_id, _ = await client.start(flow, "hello")
        closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert value(closed.run_completed_event_attributes.result) == {
        "text": "HELLO",
        "n": 5,
        "block": f"count_{suffix}@2",
    }
    assert threads == [False]  # the sync block ran on the thread pool


async def test_non_retryable_application_error_fails_after_one_attempt(
    cluster: Cluster, client: Client
) -> None:
    attempts: list[int] = []
    name = _name("refuse")

    @block(name)
    async def refuse(_: Any) -> None:
        attempts.append(context().info.attempt)
        raise ApplicationError("no way", type="Refused", non_retryable=True)

    queue, flow = _name("q"), _name("flow")
    retry = {"initial_interval": "0.1s", "maximum_attempts": 5}
    await client.register(_blueprint(flow, queue, [f"{name}@1"], retry=retry))
    async with _worker(cluster, queue, [refuse]):
        run_id, _ = await client.start(flow, None)
        closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    assert attempts == [1]
    [failure] = list(_failures(await client.history(run_id)))
    assert failure.message == "no way"
    assert failure.source == "python"
    assert failure.application_failure_info.type == "Refused"
    assert failure.application_failure_info.non_retryable


async def test_unknown_block_type_fails_the_run(cluster: Cluster, client: Client) -> None:
    @block(_name("known"))
    async def known(_: Any) -> None:
        return None

    queue, flow = _name("q"), _name("flow")
    retry = {"initial_interval": "0.1s", "maximum_attempts": 5}
    await client.register(_blueprint(flow, queue, [f"{_name('missing')}@1"], retry=retry))
    async with _worker(cluster, queue, [known]):
        run_id, _ = await client.start(flow, None)
        closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    [failure] = list(_failures(await client.history(run_id)))
    assert failure.application_failure_info.type == "UnknownBlockType"


async def test_plain_exception_is_retried_by_the_retry_policy(
    cluster: Cluster, client: Client
) -> None:
    attempts: list[int] = []
    name = _name("flaky")

    @block(name)
    def flaky(n: int) -> int:
        attempts.append(context().info.attempt)
        if len(attempts) < 3:
            raise ValueError(f"attempt {len(attempts)} fails")
        return n + 1

    queue, flow = _name("q"), _name("flow")
    retry = {"initial_interval": "0.1s", "maximum_attempts": 3}
    await client.register(_blueprint(flow, queue, [f"{name}@1"], retry=retry))
    async with _worker(cluster, queue, [flaky]):
        run_id, _ = await client.start(flow, 41)
        closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert value(closed.run_completed_event_attributes.result) == 42
    assert attempts == [1, 2, 3]


async def test_plain_exception_fails_the_run_when_attempts_run_out(
    cluster: Cluster, client: Client
) -> None:
    attempts: list[int] = []
    name = _name("broken")

    @block(name)
    async def broken(_: Any) -> None:
        attempts.append(context().info.attempt)
        raise KeyError("gone")

    queue, flow = _name("q"), _name("flow")
    retry = {"initial_interval": "0.1s", "maximum_attempts": 2}
    await client.register(_blueprint(flow, queue, [f"{name}@1"], retry=retry))
    async with _worker(cluster, queue, [broken]):
        run_id, _ = await client.start(flow, None)
        closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    assert attempts == [1, 2]
    [failure] = list(_failures(await client.history(run_id)))
    assert failure.application_failure_info.type == "KeyError"
    assert not failure.application_failure_info.non_retryable
    assert "KeyError" in failure.stack_trace


async def test_heartbeat_details_reach_the_next_attempt(cluster: Cluster, client: Client) -> None:
    seen: list[Any] = []
    never = asyncio.Event()
    name = _name("resume")

    @block(name)
    async def resume(_: Any) -> str:
        ctx = context()
        seen.append(ctx.info.heartbeat_details)
        if ctx.info.attempt == 1:
            await ctx.heartbeat({"done": 7})
            await never.wait()  # stop heartbeating: the server times the attempt out
        return "resumed"

    queue, flow = _name("q"), _name("flow")
    retry = {"initial_interval": "0.1s", "maximum_attempts": 3}
    timeouts = {"start_to_close": "30s", "heartbeat": "1s"}
    await client.register(_blueprint(flow, queue, [f"{name}@1"], retry=retry, timeouts=timeouts))
    worker = _worker(cluster, queue, [resume])
    async with worker:
        run_id, _ = await client.start(flow, None)
        closed = await client.close_event(run_id, timeout_s=30)
        await worker.shutdown(grace_s=0)  # the first attempt still hangs
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert seen == [None, {"done": 7}]


async def test_cancel_run_reaches_a_heartbeating_async_block(
    cluster: Cluster, client: Client
) -> None:
    started, saw_cancel = asyncio.Event(), asyncio.Event()
    name = _name("spin")

    @block(name)
    async def spin(_: Any) -> None:
        ctx = context()
        started.set()
        try:
            for i in range(10_000):
                await ctx.heartbeat(i)
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            saw_cancel.set()
            raise

    queue, flow = _name("q"), _name("flow")
    timeouts = {"start_to_close": "30s", "heartbeat": "1s"}
    await client.register(_blueprint(flow, queue, [f"{name}@1"], timeouts=timeouts))
    async with _worker(cluster, queue, [spin]):
        run_id, _ = await client.start(flow, None)
        await asyncio.wait_for(started.wait(), 30)
        request = flow_service_pb2.CancelRunRequest(namespace=client.namespace)
        request.run.run_id = run_id
        await client.stub.CancelRun(request, timeout=10)
        await asyncio.wait_for(saw_cancel.wait(), 30)
        closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_CANCELED
    types = [e.event_type for e in await client.history(run_id)]
    assert history_pb2.EVENT_TYPE_BLOCK_CANCELED in types


async def test_cancel_run_reaches_a_heartbeating_sync_block(
    cluster: Cluster, client: Client
) -> None:
    started, saw_cancel = threading.Event(), threading.Event()
    name = _name("spin_sync")

    @block(name)
    def spin(_: Any) -> None:
        ctx = context()
        started.set()
        for i in range(600):
            ctx.heartbeat_sync(i)
            if ctx.is_cancelled():
                saw_cancel.set()
                return
            threading.Event().wait(0.05)

    queue, flow = _name("q"), _name("flow")
    timeouts = {"start_to_close": "60s", "heartbeat": "1s"}
    await client.register(_blueprint(flow, queue, [f"{name}@1"], timeouts=timeouts))
    async with _worker(cluster, queue, [spin]):
        run_id, _ = await client.start(flow, None)
        assert await asyncio.to_thread(started.wait, 30)
        request = flow_service_pb2.CancelRunRequest(namespace=client.namespace)
        request.run.run_id = run_id
        await client.stub.CancelRun(request, timeout=10)
        closed = await client.close_event(run_id, timeout_s=30)
    assert saw_cancel.is_set()
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_CANCELED


async def test_max_concurrent_bounds_running_blocks(cluster: Cluster, client: Client) -> None:
    running, most, ran = 0, 0, 0
    two_running, third_running, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    name = _name("gate")

    @block(name)
    async def gate(_: Any) -> int:
        nonlocal running, most, ran
        running += 1
        ran += 1
        most = max(most, running)
        if running == 2:
            two_running.set()
        if running > 2:
            third_running.set()
        try:
            await release.wait()
        finally:
            running -= 1
        return ran

    queue, flow = _name("q"), _name("flow")
    await client.register(_blueprint(flow, queue, [f"{name}@1"] * 5, chain=False))
    async with _worker(cluster, queue, [gate], max_concurrent=2):
        run_id, _ = await client.start(flow, None)
        await asyncio.wait_for(two_running.wait(), 30)
        with pytest.raises(TimeoutError):
            # Three more tasks are dispatchable: a third would start almost at once.
            await asyncio.wait_for(third_running.wait(), 1.0)
        release.set()
        closed = await client.close_event(run_id, timeout_s=30)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert (most, ran) == (2, 5)


async def test_graceful_shutdown_lets_a_running_block_finish(
    cluster: Cluster, client: Client
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    name = _name("slow")

    @block(name)
    async def slow(text: str) -> str:
        started.set()
        await release.wait()
        return text + "!"

    queue, flow = _name("q"), _name("flow")
    await client.register(_blueprint(flow, queue, [f"{name}@1"]))
    worker = _worker(cluster, queue, [slow])
    running = asyncio.create_task(worker.run())
    try:
        run_id, _ = await client.start(flow, "bye")
        await asyncio.wait_for(started.wait(), 30)
        stopping = asyncio.create_task(worker.shutdown(grace_s=30))
        await asyncio.sleep(0)
        assert not stopping.done()
        release.set()
        await asyncio.wait_for(stopping, 30)
        await asyncio.wait_for(running, 5)
    finally:
        running.cancel()
    # The block answered before the worker stopped: no other worker is needed to close the run.
    closed = await client.close_event(run_id, timeout_s=10)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert value(closed.run_completed_event_attributes.result) == "bye!"


if TYPE_CHECKING:
    _Interceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
else:  # generic only in the type stubs
    _Interceptor = grpc.aio.UnaryUnaryClientInterceptor


class _OpenPolls(_Interceptor):
    """Tracks the worker's PollBlockTask calls in flight: of its normal queue in `open` and
    `most`, of its sticky queue in `sticky_most`."""

    def __init__(self, want: int) -> None:
        self.open = self.most = 0
        self.sticky_open = self.sticky_most = 0
        self.want = want
        self.reached = asyncio.Event()

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else method
        if not name.endswith("/PollBlockTask"):
            return await continuation(client_call_details, request)
        if request.task_queue.kind == common_pb2.TASK_QUEUE_KIND_STICKY:
            self.sticky_open += 1
            self.sticky_most = max(self.sticky_most, self.sticky_open)
            self._check()
            call = await continuation(client_call_details, request)
            call.add_done_callback(lambda _: self._sticky_closed())
            return call
        assert request.sticky_task_queue  # a normal poll names the worker's sticky queue
        self.open += 1
        self.most = max(self.most, self.open)
        self._check()
        call = await continuation(client_call_details, request)
        call.add_done_callback(lambda _: self._closed())
        return call

    def _check(self) -> None:
        if self.open >= self.want and self.sticky_open:
            self.reached.set()

    def _closed(self) -> None:
        self.open -= 1

    def _sticky_closed(self) -> None:
        self.sticky_open -= 1


async def test_pollers_sets_the_long_polls_kept_open(cluster: Cluster) -> None:
    with pytest.raises(ValueError, match="pollers"):
        _worker(cluster, "q", [], max_concurrent=4, pollers=5)
    polls = _OpenPolls(want=8)
    worker = _worker(
        cluster,
        _name("q"),
        [],
        max_concurrent=20,
        pollers=8,
        interceptors=[cast("grpc.aio.ClientInterceptor", polls)],
    )
    async with worker:
        await asyncio.wait_for(polls.reached.wait(), 30)
    assert polls.most == 8
    assert polls.sticky_most == 4  # and half as many on its own sticky queue
