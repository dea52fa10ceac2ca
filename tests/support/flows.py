"""A thin test client and a test worker speaking the public gRPC API directly, as a block
worker in any language would (no SDK involved)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format

from tideflow.api.v1 import (
    blueprint_pb2,
    common_pb2,
    failure_pb2,
    flow_service_pb2,
    flow_service_pb2_grpc,
    history_pb2,
)

NAMESPACE = "tests"


def payloads(value: Any) -> common_pb2.Payloads:
    return common_pb2.Payloads(
        payloads=[
            common_pb2.Payload(
                metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode()
            )
        ]
    )


def value(given: common_pb2.Payloads) -> Any:
    return json.loads(given.payloads[0].data) if given.payloads else None


def two_step_blueprint(flow: str, queue: str) -> dict[str, Any]:
    """`a -> b` on `queue`, both `step@1`: a gets the run's input, b gets a's output, and the
    run's output is b's."""
    return {
        "name": flow,
        "version": 1,
        "task_queue": queue,
        "timeouts": {"start_to_close": "10s"},
        "blocks": [
            {"id": "a", "external": {"block": "step@1"}, "input": "${input}"},
            {
                "id": "b",
                "needs": ["a"],
                "external": {"block": "step@1"},
                "input": "${blocks.a.output}",
            },
        ],
        "output": "${blocks.b.output}",
    }


def three_increments_blueprint(flow: str, queue: str) -> dict[str, Any]:
    """`a -> b -> c` on `queue`, each `inc@1` on `{"n": ...}`, short timeouts and retries (for
    chaos tests): the run's output is the input's `n` after three increments."""
    return {
        "name": flow,
        "version": 1,
        "task_queue": queue,
        "timeouts": {"start_to_close": "5s"},
        "retry": {"initial_interval": "0.2s", "maximum_interval": "1s"},
        "blocks": [
            {"id": "a", "external": {"block": "inc@1"}, "input": {"n": "${input.n}"}},
            {
                "id": "b",
                "needs": ["a"],
                "external": {"block": "inc@1"},
                "input": {"n": "${blocks.a.output.n}"},
            },
            {
                "id": "c",
                "needs": ["b"],
                "external": {"block": "inc@1"},
                "input": {"n": "${blocks.b.output.n}"},
            },
        ],
        "output": "${blocks.c.output.n}",
    }


class Client:
    def __init__(self, address: str, namespace: str = NAMESPACE) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = flow_service_pb2_grpc.FlowServiceStub(self.channel)
        self.namespace = namespace

    async def close(self) -> None:
        await self.channel.close(None)

    async def ensure_namespace(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.stub.RegisterNamespace(
                flow_service_pb2.RegisterNamespaceRequest(namespace=self.namespace), timeout=10
            )

    async def register(self, blueprint: dict[str, Any]) -> flow_service_pb2.RegisterFlowResponse:
        parsed = json_format.ParseDict(blueprint, blueprint_pb2.Blueprint())
        return await self.stub.RegisterFlow(
            flow_service_pb2.RegisterFlowRequest(namespace=self.namespace, blueprint=parsed),
            timeout=10,
        )

    async def start(
        self, flow: str, run_input: Any = None, *, run_id: str | None = None, **kwargs: Any
    ) -> tuple[str, flow_service_pb2.StartRunResponse]:
        run_id = run_id or f"run-{uuid.uuid4().hex[:12]}"
        request = flow_service_pb2.StartRunRequest(
            namespace=self.namespace,
            run_id=run_id,
            input=payloads(run_input),
            **kwargs,
        )
        request.flow.name = flow
        return run_id, await self.stub.StartRun(request, timeout=30)

    async def close_event(
        self, run_id: str, *, timeout_s: float = 60.0
    ) -> history_pb2.HistoryEvent:
        """Wait for the run to close; its close event."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        token = b""
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"run {run_id} did not close")
            request = flow_service_pb2.GetRunHistoryRequest(
                namespace=self.namespace,
                wait_new_event=True,
                history_event_filter_type=history_pb2.HISTORY_EVENT_FILTER_TYPE_CLOSE_EVENT,
                next_page_token=token,
            )
            request.run.run_id = run_id
            try:
                reply = await self.stub.GetRunHistory(request, timeout=min(remaining, 15))
            except grpc.aio.AioRpcError as e:
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    continue  # a server is restarting: ask again
                raise
            if reply.history.events:
                return reply.history.events[-1]
            token = reply.next_page_token

    async def history(self, run_id: str) -> list[history_pb2.HistoryEvent]:
        events: list[history_pb2.HistoryEvent] = []
        token = b""
        while True:
            request = flow_service_pb2.GetRunHistoryRequest(
                namespace=self.namespace, next_page_token=token, page_size=50
            )
            request.run.run_id = run_id
            reply = await self.stub.GetRunHistory(request, timeout=30)
            events.extend(reply.history.events)
            token = reply.next_page_token
            if not token:
                return events

    async def describe(self, run_id: str) -> flow_service_pb2.DescribeRunResponse:
        request = flow_service_pb2.DescribeRunRequest(namespace=self.namespace)
        request.run.run_id = run_id
        return await self.stub.DescribeRun(request, timeout=10)


class BlockFailure(Exception):
    def __init__(self, message: str, *, type: str = "Boom", non_retryable: bool = False) -> None:
        super().__init__(message)
        self.type = type
        self.non_retryable = non_retryable


HANG = object()
"""Returned by a handler: take the task and never answer (a worker that died mid-block)."""
CANCELED = object()
"""Returned by a handler: acknowledge a requested cancellation (RespondBlockCanceled)."""


@dataclass
class Task:
    response: flow_service_pb2.PollBlockTaskResponse
    worker: BlockWorker

    @property
    def input(self) -> Any:
        return value(self.response.input)

    async def heartbeat(self, details: Any = None) -> bool:
        reply = await self.worker.stub.RecordBlockHeartbeat(
            flow_service_pb2.RecordBlockHeartbeatRequest(
                namespace=self.worker.namespace,
                task_token=self.response.task_token,
                details=payloads(details),
                identity=self.worker.identity,
            ),
            timeout=10,
        )
        return reply.cancel_requested


Handler = Callable[[Task], Awaitable[Any]]


@dataclass
class BlockWorker:
    address: str
    task_queue: str
    handlers: Mapping[str, Handler]
    namespace: str = NAMESPACE
    identity: str = field(default_factory=lambda: f"worker-{uuid.uuid4().hex[:6]}")
    concurrency: int = 20
    eager: bool = False
    """Offer each completion's slot for eager dispatch, as the SDK worker does."""
    detached: bool = False
    """Poll again as soon as the handler returns, sending its answer in the background (a
    worker that queues its answers): it keeps polling while the server cannot record them."""
    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = flow_service_pb2_grpc.FlowServiceStub(self.channel)
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> BlockWorker:
        self._tasks = [asyncio.create_task(self._poll()) for _ in range(self.concurrency)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in [*self._tasks, *self._running]:
            task.cancel()
        for task in [*self._tasks, *self._running]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.channel.close(None)

    async def _poll(self) -> None:
        request = flow_service_pb2.PollBlockTaskRequest(
            namespace=self.namespace, identity=self.identity
        )
        request.task_queue.name = self.task_queue
        while True:
            try:
                response = await self.stub.PollBlockTask(request, timeout=10)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.2)  # the server is away: poll again shortly
                continue
            if not response.task_token:
                continue
            if not self.detached:
                await self._run(Task(response, self))
                continue
            handled = asyncio.Event()
            running = asyncio.create_task(self._run(Task(response, self), handled))
            self._running.add(running)
            running.add_done_callback(self._running.discard)
            waiting = asyncio.create_task(handled.wait())
            await asyncio.wait((running, waiting), return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()

    async def _run(self, task: Task, handled: asyncio.Event | None = None) -> None:
        response = task.response
        self.attempts[(response.run.run_id, response.block_id)] += 1
        handler = self.handlers[response.block_type]
        try:
            try:
                result = await handler(task)
            finally:
                if handled is not None:
                    handled.set()
        except BlockFailure as e:
            failure = failure_pb2.Failure(message=str(e), source="test-worker")
            failure.application_failure_info.type = e.type
            failure.application_failure_info.non_retryable = e.non_retryable
            await self._respond(
                self.stub.RespondBlockFailed,
                flow_service_pb2.RespondBlockFailedRequest(
                    namespace=self.namespace,
                    task_token=response.task_token,
                    failure=failure,
                    identity=self.identity,
                ),
            )
            return
        if result is HANG:
            return
        if result is CANCELED:
            await self._respond(
                self.stub.RespondBlockCanceled,
                flow_service_pb2.RespondBlockCanceledRequest(
                    namespace=self.namespace,
                    task_token=response.task_token,
                    identity=self.identity,
                ),
            )
            return
        reply = await self._respond(
            self.stub.RespondBlockCompleted,
            flow_service_pb2.RespondBlockCompletedRequest(
                namespace=self.namespace,
                task_token=response.task_token,
                result=payloads(result),
                identity=self.identity,
                eager_slots=1 if self.eager else 0,
            ),
        )
        for next_task in reply.next_tasks if reply is not None else ():
            await self._run(Task(next_task, self))

    async def _respond(self, method: Any, request: Any) -> Any:
        for _ in range(50):
            try:
                return await method(request, timeout=10)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    return None  # stale (NOT_FOUND): the server moved on without this attempt
                await asyncio.sleep(0.2)
        return None


async def echo(task: Task) -> Any:
    return task.input
