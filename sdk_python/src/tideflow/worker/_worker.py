"""The block worker: polls a task queue, runs blocks, answers the server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import os
import random
import re
import socket
import traceback
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tideflow._converter import (
    ConversionError,
    DefaultConverter,
    PayloadConverter,
    check_engine_readable,
    from_payloads,
    to_payloads,
)
from tideflow.api.v1 import common_pb2, failure_pb2, flow_service_pb2, flow_service_pb2_grpc
from tideflow.errors import ApplicationError
from tideflow.worker._block import (
    BlockCancelled,
    BlockContext,
    BlockDefinition,
    BlockInfo,
    _set_context,
    definition_of,
)

_tracer = trace.get_tracer("tideflow.worker")
_PROPAGATOR = TraceContextTextMapPropagator()

logger = logging.getLogger("tideflow.worker")

T = TypeVar("T")

# The server answers an idle long poll after matching.long_poll_timeout_s (60 s by default),
# or shortly before this deadline when that setting is longer.
_POLL_TIMEOUT_S = 90.0
_RPC_TIMEOUT_S = 10.0
_RESPOND_FOR_S = 60.0  # how long a response keeps retrying while the server is away
_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 5.0
_DEFAULT_HEARTBEAT_INTERVAL_S = 1.0
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_MAX_FAILURE_CAUSES = 8  # `raise ... from` links sent with a failure; each has its stack trace
_MAX_WARM_KEYS = 100  # the server refuses a poll with more
_QUEUE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._:/-]+")


def sticky_queue_name(identity: str) -> str:
    """A sticky queue name unique to this process: the identity (as far as a queue name may
    spell it) and a UUID."""
    readable = _QUEUE_NAME_CHARS.sub("-", identity).strip("-")[:200] or "worker"
    return f"{readable}-{uuid.uuid4().hex}"


def _stub(channel: grpc.aio.Channel) -> flow_service_pb2_grpc.FlowServiceAsyncStub:
    # The generated stub is the async variant when given an aio channel; that class exists
    # only in the type stubs.
    return flow_service_pb2_grpc.FlowServiceStub(channel)


def _backoff(previous: float) -> float:
    """The next delay: doubled up to the cap, with jitter so workers do not poll in step."""
    doubled = min(max(previous * 2, _BACKOFF_FIRST_S), _BACKOFF_MAX_S)
    return doubled * random.uniform(0.8, 1.2)


class _Cancellation:
    """Whether the server asked an attempt to stop, and what to do when it does."""

    def __init__(self) -> None:
        self.requested = False
        self.callbacks: list[Callable[[], Any]] = []

    def request(self) -> None:
        if self.requested:
            return
        self.requested = True
        for callback in self.callbacks:
            callback()


class _Heartbeater:
    """Sends one attempt's heartbeats: at most one RPC per interval, the latest details win,
    and a reply asking to cancel calls `on_cancel`."""

    def __init__(
        self,
        worker: Worker,
        task_token: bytes,
        interval_s: float,
        on_cancel: Callable[[], None],
    ) -> None:
        self._worker = worker
        self._token = task_token
        self._interval_s = interval_s
        self._on_cancel = on_cancel
        self._details: Any = None
        self._dirty = False
        self._last_sent = float("-inf")
        self._sender: asyncio.Task[None] | None = None
        self.has_details = False

    @property
    def details(self) -> Any:
        return self._details

    def record(self, details: Any) -> None:
        self._details, self._dirty, self.has_details = details, True, True
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        while self._dirty:
            wait = self._last_sent + self._interval_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            details, self._dirty = self._details, False
            self._last_sent = loop.time()
            try:
                payloads = to_payloads(self._worker.converter, details)
                reply = await self._worker._stub_or_raise().RecordBlockHeartbeat(
                    flow_service_pb2.RecordBlockHeartbeatRequest(
                        namespace=self._worker.namespace,
                        task_token=self._token,
                        details=payloads,
                        identity=self._worker.identity,
                    ),
                    timeout=_RPC_TIMEOUT_S,
                    metadata=self._worker._metadata,
                )
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    # The attempt is no longer current (timed out, run closed): stop the block.
                    logger.info("heartbeat for a stale attempt; cancelling it: %s", e.details())
                    self._on_cancel()
                    return
                logger.warning("heartbeat failed: %s", e.code().name)
                continue
            except Exception:
                logger.exception("heartbeat failed")
                continue
            if reply.cancel_requested:
                self._on_cancel()

    def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()


_COMPLETION_CALLS = 2
"""Completion calls a worker keeps in flight; completions that come while all are busy wait
for one to return and then go together in one batch."""
_MAX_BATCH = 100  # the server's limit on completions per RespondBlockCompletedBatch
_Completion = tuple[
    flow_service_pb2.RespondBlockCompletedRequest,
    "asyncio.Future[flow_service_pb2.RespondBlockCompletedResponse]",
]
"""A completion waiting for the server's answer."""


def _item_error(status: flow_service_pb2.ItemStatus) -> grpc.aio.AioRpcError:
    """A batch item's status as the error a single call would have raised."""
    code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), status.message, None
    )


class _Completions:
    """Sends a worker's completions. One goes at once while fewer than `_COMPLETION_CALLS`
    calls are in flight, so a lone completion never waits; those that come while all are
    busy go together in one RespondBlockCompletedBatch when a call returns. Under load a
    worker so makes a call per batch of completions, not one per completion. Against a server
    without the batch call, or when a batch is refused as malformed, each goes alone."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._waiting: list[_Completion] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._batches = True

    async def send(
        self, request: flow_service_pb2.RespondBlockCompletedRequest
    ) -> flow_service_pb2.RespondBlockCompletedResponse:
        """The server's answer to `request`; raises `grpc.aio.AioRpcError` as the single call
        would."""
        future: asyncio.Future[flow_service_pb2.RespondBlockCompletedResponse] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting.append((request, future))
        self._pump()
        return await future

    def _pump(self) -> None:
        while self._waiting and len(self._in_flight) < _COMPLETION_CALLS:
            batch, self._waiting = self._waiting[:_MAX_BATCH], self._waiting[_MAX_BATCH:]
            call = asyncio.create_task(self._call(batch))
            self._in_flight.add(call)
            call.add_done_callback(self._call_done)

    def _call_done(self, call: asyncio.Task[None]) -> None:
        self._in_flight.discard(call)
        self._pump()

    @staticmethod
    def _fail(batch: Sequence[_Completion], error: BaseException) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(error)

    async def _call(self, batch: list[_Completion]) -> None:
        worker = self._worker
        if len(batch) == 1 or not self._batches:
            await asyncio.gather(*(self._alone(request, future) for request, future in batch))
            return
        try:
            answer = await worker._stub_or_raise().RespondBlockCompletedBatch(
                flow_service_pb2.RespondBlockCompletedBatchRequest(
                    completions=[request for request, _ in batch]
                ),
                timeout=_RPC_TIMEOUT_S,
                metadata=worker._metadata,
            )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._batches = False
            if e.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INVALID_ARGUMENT):
                # Alone, only a malformed completion fails.
                await asyncio.gather(*(self._alone(r, f) for r, f in batch))
            else:
                self._fail(batch, e)
            return
        except Exception as e:
            self._fail(batch, e)
            return
        except BaseException:  # cancelled: so are the completions waiting on this call
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, answer.results, strict=False):
            if future.done():
                continue
            if result.status.code == grpc.StatusCode.OK.value[0]:
                future.set_result(result.response)
            else:
                future.set_exception(_item_error(result.status))
        self._fail(
            batch[len(answer.results) :], RuntimeError("the server answered part of a batch")
        )

    async def _alone(
        self,
        request: flow_service_pb2.RespondBlockCompletedRequest,
        future: asyncio.Future[flow_service_pb2.RespondBlockCompletedResponse],
    ) -> None:
        worker = self._worker
        try:
            carrier = tuple(request.trace_context.items())
            answer = await worker._stub_or_raise().RespondBlockCompleted(
                request, timeout=_RPC_TIMEOUT_S, metadata=(*worker._metadata, *carrier)
            )
        except Exception as e:
            if not future.done():
                future.set_exception(e)
            return
        if not future.done():
            future.set_result(answer)


class Worker:
    """Polls `task_queue` for external block tasks and runs the given `@block` functions.

    `await worker.run()` runs until `shutdown()` or cancellation; `async with Worker(...)`
    runs it in the background and shuts down on exit.

    With `eager` (the default) each completion offers its slot for the run's next block on
    the same task queue, which the server then hands back with the answer instead of through
    a poll: a chain of blocks on one queue stays on one worker with no matching round trip.

    Completions that come while earlier ones are still on the wire go together in one
    RespondBlockCompletedBatch call. `interceptors` are gRPC client interceptors for every
    call the worker makes (tracing, metrics, auth).

    `api_key` (a worker key of the namespace) goes with every call; `tls` is True for TLS with
    the system's roots, or `grpc.ssl_channel_credentials(...)` for a CA of your own and, for
    mutual TLS, a client certificate.

    `pollers` long polls are kept open (default: `max_concurrent`, at most 5); each holds a
    free slot, so a task never arrives with nowhere to run.

    With `sticky` (the default) the worker also polls a queue of its own (`sticky_task_queue`,
    kind STICKY) with half as many pollers again (at least one), each holding a free slot too,
    and names it on its polls and completions: blocks with `affinity: run` of runs whose
    previous block it ran come there first.

    `warm_keys` are the affinity keys whose state this worker holds warm (a loaded model, a
    document's pages): blocks with those `affinity_key`s come to it first (through its sticky
    queue), before the worker that hashing picks. The collection is read at every poll of the
    normal queue, not copied: pass a set you keep and update it (from block code too) to
    change what the next polls advertise. At most 100 are sent (the first in sorted order).
    """

    def __init__(
        self,
        address: str,
        *,
        task_queue: str,
        blocks: Sequence[Callable[..., Any]],
        namespace: str = "default",
        identity: str | None = None,
        max_concurrent: int = 10,
        converter: PayloadConverter | None = None,
        api_key: str | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        max_workers_for_sync: int | None = None,
        eager: bool = True,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        pollers: int | None = None,
        sticky: bool = True,
        warm_keys: Collection[str] = (),
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        if pollers is not None and not 1 <= pollers <= max_concurrent:
            raise ValueError("pollers must be between 1 and max_concurrent")
        self.address = address
        self.task_queue = task_queue
        self.namespace = namespace
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}"
        self.max_concurrent = max_concurrent
        self.pollers = pollers or min(max_concurrent, 5)
        self.eager = eager
        self.sticky_task_queue = sticky_queue_name(self.identity) if sticky else ""
        self.warm_keys = warm_keys
        self._interceptors = list(interceptors)
        self.converter: PayloadConverter = converter or DefaultConverter()
        self._blocks: dict[str, BlockDefinition] = {}
        for fn in blocks:
            definition = definition_of(fn)
            if definition.block_type in self._blocks:
                raise ValueError(f"block type {definition.block_type} given twice")
            self._blocks[definition.block_type] = definition
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ()
        )
        self._tls = tls
        self._max_workers_for_sync = max_workers_for_sync or max_concurrent
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: flow_service_pb2_grpc.FlowServiceAsyncStub | None = None
        self._slots = asyncio.Semaphore(max_concurrent)
        self._pollers: list[asyncio.Task[None]] = []
        self._attempts: set[asyncio.Task[None]] = set()
        self._stop: asyncio.Event | None = None
        self._finished: asyncio.Event | None = None
        self._grace_s = 0.0
        self._background: asyncio.Task[None] | None = None
        self._completions = _Completions(self)

    def _stub_or_raise(self) -> flow_service_pb2_grpc.FlowServiceAsyncStub:
        if self._stub is None:
            raise RuntimeError("worker is not running")
        return self._stub

    async def run(self) -> None:
        """Poll and run blocks until `shutdown()` is called or this call is cancelled."""
        if self._stop is not None:
            raise RuntimeError("worker already started")
        self._stop, self._finished = asyncio.Event(), asyncio.Event()
        if self._tls is False:
            self._channel = grpc.aio.insecure_channel(self.address, interceptors=self._interceptors)
        else:
            credentials = grpc.ssl_channel_credentials() if self._tls is True else self._tls
            self._channel = grpc.aio.secure_channel(
                self.address, credentials, interceptors=self._interceptors
            )
        self._stub = _stub(self._channel)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._max_workers_for_sync, thread_name_prefix="tideflow-block"
        )
        normal = flow_service_pb2.PollBlockTaskRequest(
            namespace=self.namespace,
            task_queue=common_pb2.TaskQueue(name=self.task_queue),
            identity=self.identity,
            sticky_task_queue=self.sticky_task_queue,
        )
        self._pollers = [asyncio.create_task(self._poll(normal)) for _ in range(self.pollers)]
        if self.sticky_task_queue:
            sticky = flow_service_pb2.PollBlockTaskRequest(
                namespace=self.namespace,
                task_queue=common_pb2.TaskQueue(
                    name=self.sticky_task_queue, kind=common_pb2.TASK_QUEUE_KIND_STICKY
                ),
                identity=self.identity,
            )
            self._pollers += [
                asyncio.create_task(self._poll(sticky)) for _ in range((self.pollers + 1) // 2)
            ]
        logger.info(
            "worker %s polling %s/%s for %s",
            self.identity,
            self.namespace,
            self.task_queue,
            sorted(self._blocks),
        )
        try:
            await self._stop.wait()
        except asyncio.CancelledError:
            self._grace_s = 0.0
            await asyncio.shield(self._drain())
            raise
        await self._drain()

    async def shutdown(self, *, grace_s: float = 10.0) -> None:
        """Stop polling, give running blocks `grace_s` to finish and answer, then cancel the
        rest (the server retries their attempts after their timeouts)."""
        if self._stop is None or self._finished is None:
            return
        self._grace_s = grace_s
        self._stop.set()
        await self._finished.wait()

    async def __aenter__(self) -> Worker:
        self._background = asyncio.create_task(self.run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()
        if self._background is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._background

    async def _drain(self) -> None:
        assert self._finished is not None
        for poller in self._pollers:
            poller.cancel()
        await asyncio.gather(*self._pollers, return_exceptions=True)
        if self._attempts:
            logger.info("waiting up to %.1fs for %d blocks", self._grace_s, len(self._attempts))
            _, pending = await asyncio.wait(set(self._attempts), timeout=self._grace_s)
            for attempt in pending:
                attempt.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._channel is not None:
            await self._channel.close(None)
        self._finished.set()
        logger.info("worker %s stopped", self.identity)

    async def _poll(self, request: flow_service_pb2.PollBlockTaskRequest) -> None:
        delay = 0.0
        while True:
            # Take a slot before polling so that a task never arrives with nowhere to run.
            await self._slots.acquire()
            try:
                response = await self._stub_or_raise().PollBlockTask(
                    self._advertising(request), timeout=_POLL_TIMEOUT_S, metadata=self._metadata
                )
            except grpc.aio.AioRpcError as e:
                self._slots.release()
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue
                delay = _backoff(delay)
                log = logger.info if e.code() == grpc.StatusCode.UNAVAILABLE else logger.warning
                log("poll failed (%s); again in %.2fs", e.code().name, delay)
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self._slots.release()
                raise
            delay = 0.0
            if not response.task_token:
                self._slots.release()
                continue
            attempt = asyncio.create_task(self._attempt(response))
            self._attempts.add(attempt)
            attempt.add_done_callback(self._attempt_done)

    def _advertising(
        self, request: flow_service_pb2.PollBlockTaskRequest
    ) -> flow_service_pb2.PollBlockTaskRequest:
        """A normal queue's poll with the keys warm now (a sticky queue's polls need none)."""
        if not self.warm_keys or request.task_queue.kind == common_pb2.TASK_QUEUE_KIND_STICKY:
            return request
        with_keys = flow_service_pb2.PollBlockTaskRequest()
        with_keys.CopyFrom(request)
        with_keys.warm_keys.extend(sorted(self.warm_keys)[:_MAX_WARM_KEYS])
        return with_keys

    def _attempt_done(self, attempt: asyncio.Task[None]) -> None:
        self._attempts.discard(attempt)
        self._slots.release()
        if not attempt.cancelled() and attempt.exception() is not None:
            logger.error("block attempt crashed", exc_info=attempt.exception())

    async def _attempt(self, task: flow_service_pb2.PollBlockTaskResponse) -> None:
        """Run a polled task and then, in the same slot, the tasks eager dispatch hands back."""
        tasks = [task]
        while tasks:
            tasks.extend(await self._run_attempt(tasks.pop(0)))

    def _eager_slots(self) -> int:
        """Tasks to ask for with a completion: the slot this attempt frees, unless stopping."""
        return 1 if self.eager and self._stop is not None and not self._stop.is_set() else 0

    async def _run_attempt(
        self, task: flow_service_pb2.PollBlockTaskResponse
    ) -> Sequence[flow_service_pb2.PollBlockTaskResponse]:
        """Run one attempt and answer for it, in a span that continues the run's trace (the
        task's trace context) when the process traces; returns the next tasks, if eager
        dispatch gave any."""
        parent = _PROPAGATOR.extract(dict(task.trace_context)) if task.trace_context else None
        with _tracer.start_as_current_span(
            f"block {task.block_type}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "tideflow.block_id": task.block_id,
                "tideflow.block_type": task.block_type,
                "tideflow.attempt": task.attempt,
                "tideflow.run_id": task.run.run_id,
                "tideflow.worker": self.identity,
            },
        ):
            return await self._run_traced_attempt(task)

    def _call_metadata(self) -> tuple[tuple[str, str], ...]:
        """The API key, and the current span as `traceparent` (the attempt's, or the run's
        when this process does not trace)."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return (*self._metadata, *carrier.items()) if carrier else self._metadata

    async def _run_traced_attempt(
        self, task: flow_service_pb2.PollBlockTaskResponse
    ) -> Sequence[flow_service_pb2.PollBlockTaskResponse]:
        definition = self._blocks.get(task.block_type)
        heartbeat_timeout = (
            task.timeouts.heartbeat.ToTimedelta().total_seconds()
            if task.timeouts.HasField("heartbeat")
            else 0.0
        )
        cancellation = _Cancellation()
        heartbeater = _Heartbeater(
            self,
            task.task_token,
            0.8 * heartbeat_timeout if heartbeat_timeout > 0 else _DEFAULT_HEARTBEAT_INTERVAL_S,
            cancellation.request,
        )
        ctx: BlockContext | None = None
        try:
            if definition is None:
                raise ApplicationError(
                    f"no block type {task.block_type!r} on worker {self.identity}",
                    type="UnknownBlockType",
                    non_retryable=True,
                )
            info = BlockInfo(
                run_id=task.run.run_id,
                execution_id=task.run.execution_id,
                block_id=task.block_id,
                block_type=task.block_type,
                attempt=task.attempt,
                task_queue=self.task_queue,
                heartbeat_details=from_payloads(self.converter, task.heartbeat_details),
                heartbeat_timeout_s=heartbeat_timeout or None,
            )
            ctx = BlockContext(
                info=info, loop=asyncio.get_running_loop(), record=heartbeater.record
            )
            cancellation.callbacks.append(ctx._set_cancelled)
            block_input = from_payloads(self.converter, task.input)
            result = await self._call(definition, ctx, block_input, cancellation)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # The worker is stopping: tell a sync block through its flag, and leave the
                # attempt to its timeout.
                if ctx is not None:
                    ctx._set_cancelled()
                raise
            await self._canceled(task, heartbeater)
            return ()
        except BlockCancelled as e:
            if cancellation.requested:
                await self._canceled(task, heartbeater)
            else:
                await self._failed(task, e, heartbeater)
            return ()
        except Exception as e:
            await self._failed(task, e, heartbeater)
            return ()
        finally:
            heartbeater.close()
        if cancellation.requested and not definition.is_async:
            # A sync block that returned after seeing the flag acknowledges the cancellation.
            await self._canceled(task, heartbeater)
            return ()
        try:
            payloads = to_payloads(self.converter, result)
            check_engine_readable(payloads, "a block's result")
        except Exception as e:
            await self._failed(task, e, heartbeater)
            return ()
        request = flow_service_pb2.RespondBlockCompletedRequest(
            namespace=self.namespace,
            task_token=task.task_token,
            result=payloads,
            identity=self.identity,
            eager_slots=self._eager_slots(),
            sticky_task_queue=self.sticky_task_queue,
        )
        # It may go in a batch, whose metadata names one span: the item names its own.
        _PROPAGATOR.inject(request.trace_context)
        completed = await self._respond(
            "RespondBlockCompleted", task, lambda _: self._completions.send(request)
        )
        return completed.next_tasks if completed is not None else ()

    async def _call(
        self,
        definition: BlockDefinition,
        ctx: BlockContext,
        block_input: Any,
        cancellation: _Cancellation,
    ) -> Any:
        """Run the block with `ctx` as its context; a cancellation from the server cancels
        an async block's task, and only sets the flag of a sync one."""
        copied = contextvars.copy_context()
        copied.run(_set_context, ctx)
        if not definition.is_async:
            assert self._executor is not None
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, copied.run, definition.fn, block_input
            )
        coro: Awaitable[Any] = definition.fn(block_input)
        inner: asyncio.Task[Any] = asyncio.create_task(
            coro,  # type: ignore[arg-type]
            context=copied,
        )
        cancellation.callbacks.append(inner.cancel)
        return await inner

    def _failure(self, error: BaseException, depth: int = 0) -> failure_pb2.Failure:
        """The Failure for what a block raised, with its `raise ... from` chain as causes."""
        failure = failure_pb2.Failure(
            message=str(error) or type(error).__name__,
            source="python",
            stack_trace="".join(traceback.format_exception(error)),
        )
        info = failure.application_failure_info
        if isinstance(error, ApplicationError):
            failure.message = error.message
            info.type, info.non_retryable = error.type, error.non_retryable
            if error.details:
                try:
                    info.details.CopyFrom(to_payloads(self.converter, *error.details))
                except ConversionError as e:
                    logger.warning("details of %r dropped: %s", error, e)
        else:
            info.type = type(error).__name__
        if error.__cause__ is not None and depth < _MAX_FAILURE_CAUSES:
            failure.cause.CopyFrom(self._failure(error.__cause__, depth + 1))
        return failure

    async def _failed(
        self,
        task: flow_service_pb2.PollBlockTaskResponse,
        error: BaseException,
        heartbeater: _Heartbeater,
    ) -> None:
        logger.info(
            "block %s (%s) attempt %d failed: %r",
            task.block_id,
            task.block_type,
            task.attempt,
            error,
        )
        trace.get_current_span().set_status(trace.Status(trace.StatusCode.ERROR, repr(error)))
        request = flow_service_pb2.RespondBlockFailedRequest(
            namespace=self.namespace,
            task_token=task.task_token,
            failure=self._failure(error),
            identity=self.identity,
        )
        if heartbeater.has_details:
            with contextlib.suppress(Exception):
                request.last_heartbeat_details.CopyFrom(
                    to_payloads(self.converter, heartbeater.details)
                )
        await self._respond(
            "RespondBlockFailed",
            task,
            lambda stub: stub.RespondBlockFailed(
                request, timeout=_RPC_TIMEOUT_S, metadata=self._call_metadata()
            ),
        )

    async def _canceled(
        self, task: flow_service_pb2.PollBlockTaskResponse, heartbeater: _Heartbeater
    ) -> None:
        """Acknowledge the cancellation, with the last heartbeat's details (the progress the
        block had made) when it sent any."""
        logger.info("block %s (%s) canceled", task.block_id, task.block_type)
        details: common_pb2.Payloads | None = None
        if heartbeater.has_details:
            try:
                details = to_payloads(self.converter, heartbeater.details)
            except ConversionError as e:
                logger.warning("heartbeat details of a canceled block dropped: %s", e)
        await self._respond(
            "RespondBlockCanceled",
            task,
            lambda stub: stub.RespondBlockCanceled(
                flow_service_pb2.RespondBlockCanceledRequest(
                    namespace=self.namespace,
                    task_token=task.task_token,
                    details=details,
                    identity=self.identity,
                ),
                timeout=_RPC_TIMEOUT_S,
                metadata=self._call_metadata(),
            ),
        )

    async def _respond(
        self,
        what: str,
        task: flow_service_pb2.PollBlockTaskResponse,
        call: Callable[[flow_service_pb2_grpc.FlowServiceAsyncStub], Awaitable[T]],
    ) -> T | None:
        """The server's answer; None when the answer was dropped (logged)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _RESPOND_FOR_S
        delay = 0.0
        while True:
            try:
                return await call(self._stub_or_raise())
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.NOT_FOUND:
                    logger.info(
                        "%s for block %s of run %s dropped: attempt no longer current",
                        what,
                        task.block_id,
                        task.run.run_id,
                    )
                    return None
                if code not in _RETRYABLE or loop.time() >= deadline:
                    logger.error(
                        "%s for block %s of run %s failed: %s %s",
                        what,
                        task.block_id,
                        task.run.run_id,
                        code.name,
                        e.details(),
                    )
                    return None
                delay = _backoff(delay)
                await asyncio.sleep(delay)
