"""The model worker's loop: polls for `model.predict@1` tasks, batches them across runs,
runs one forward pass per batch off the event loop and answers every task of it.

Slots bound the tasks held at once (polled and not yet answered): twice `max_batch`, one
batch in the forward pass and one forming. Every poll holds a free slot, so a task never
arrives with nowhere to go, and `pollers` polls (default `max_batch`) are kept open on the
normal queue and as many on this worker's sticky queue, through which matching sends the
tasks whose `affinity_key` is the model's name (advertised as a warm key), enough for a
batch to fill.

A task's input is checked when it arrives: a bad one fails that task alone (BadModelInput,
non-retryable) and never joins a batch. A forward pass that raises is retried item by item,
so only the items the model refuses fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import random
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from tideflow.api.v1 import common_pb2, failure_pb2, flow_service_pb2, flow_service_pb2_grpc
from tideflow.converter import (
    DefaultConverter,
    check_engine_readable,
    from_payloads,
    to_payloads,
)
from tideflow.errors import from_grpc
from workers.ml_model.batcher import Batcher
from workers.ml_model.model import BadModelInput, Model

logger = logging.getLogger("workers.ml_model")

T = TypeVar("T")

BLOCK_TYPE = "model.predict@1"
# The server answers an idle long poll after 60 s; the deadline leaves it room to.
_POLL_TIMEOUT_S = 90.0
_RPC_TIMEOUT_S = 10.0
_RESPOND_FOR_S = 60.0  # how long an answer keeps retrying while the server is away
_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 5.0
_MAX_BATCH_CALL = 100  # the server's limit on completions per RespondBlockCompletedBatch
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_OK = grpc.StatusCode.OK.value[0]
_NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
_INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


@dataclass(frozen=True)
class Options:
    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    task_queue: str = "ml"
    identity: str = ""
    max_batch: int = 16
    max_wait_s: float = 0.005
    pollers: int = 0
    """Polls per queue (normal and sticky); 0: `max_batch`."""
    drain_timeout_s: float = 30.0
    stats_interval_s: float = 10.0
    stats_file: Path | None = None
    api_key: str = ""
    """A worker key of the namespace, for a cluster with auth on (sent as a bearer token)."""

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()


@dataclass
class _Pending:
    """A checked task waiting for its batch's forward pass."""

    task: flow_service_pb2.PollBlockTaskResponse
    features: list[float]


@dataclass
class Stats:
    """What the worker did; `mean_batch_size` is items over batches of forward passes."""

    completed: int = 0
    failed: int = 0
    dropped: int = 0
    """Answers the server no longer wanted (the attempt had timed out or was canceled)."""
    forward_s: float = 0.0
    """Time in forward passes (the model's share of a task's latency)."""
    started: float = field(default_factory=time.time)


def _backoff(previous: float) -> float:
    doubled = min(max(previous * 2, _BACKOFF_FIRST_S), _BACKOFF_MAX_S)
    return doubled * random.uniform(0.8, 1.2)


def _failure(error: BaseException, *, type_: str, non_retryable: bool) -> failure_pb2.Failure:
    failure = failure_pb2.Failure(
        message=str(error) or type(error).__name__,
        source="python",
        stack_trace="".join(traceback.format_exception(error)),
    )
    failure.application_failure_info.type = type_
    failure.application_failure_info.non_retryable = non_retryable
    return failure


class ModelWorker:
    def __init__(self, model: Model, options: Options) -> None:
        self.model = model
        self.options = options
        self.identity = options.identity or f"ml-model-{uuid.uuid4().hex[:8]}"
        self.sticky_task_queue = f"{self.identity}-{uuid.uuid4().hex}"
        self.converter = DefaultConverter()
        self.stats = Stats()
        self.batcher: Batcher[_Pending] = Batcher(
            self._forward, max_batch=options.max_batch, max_wait_s=options.max_wait_s
        )
        self._slots = asyncio.Semaphore(2 * options.max_batch)
        # One thread: one forward pass at a time, which is what makes batches form.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ml-model-forward"
        )
        self._answers: set[asyncio.Task[None]] = set()
        self._channel: grpc.aio.Channel | None = None
        self._stub: flow_service_pb2_grpc.FlowServiceAsyncStub | None = None

    @property
    def stub(self) -> flow_service_pb2_grpc.FlowServiceAsyncStub:
        assert self._stub is not None, "not running"
        return self._stub

    def stats_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "model": self.model.name,
            "provider": self.model.provider,
            "max_batch": self.options.max_batch,
            "max_wait_ms": self.options.max_wait_s * 1000,
            **self.batcher.stats.as_dict(),
            "completed": self.stats.completed,
            "failed": self.stats.failed,
            "dropped": self.stats.dropped,
            "forward_ms_per_batch": round(
                self.stats.forward_s * 1000 / max(1, self.batcher.stats.batches), 3
            ),
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then drain: stop polling, run what was polled, answer
        it (at most `drain_timeout_s`), and return."""
        self._channel = grpc.aio.insecure_channel(self.options.address)
        # The generated stub is the async variant when given an aio channel; that class
        # exists only in the type stubs.
        self._stub = flow_service_pb2_grpc.FlowServiceStub(self._channel)
        pollers = self.options.pollers or self.options.max_batch
        normal = flow_service_pb2.PollBlockTaskRequest(
            namespace=self.options.namespace,
            task_queue=common_pb2.TaskQueue(name=self.options.task_queue),
            identity=self.identity,
            sticky_task_queue=self.sticky_task_queue,
            warm_keys=[self.model.name],
        )
        sticky = flow_service_pb2.PollBlockTaskRequest(
            namespace=self.options.namespace,
            task_queue=common_pb2.TaskQueue(
                name=self.sticky_task_queue, kind=common_pb2.TASK_QUEUE_KIND_STICKY
            ),
            identity=self.identity,
        )
        polls = [
            asyncio.create_task(self._poll(r)) for r in (normal, sticky) for _ in range(pollers)
        ]
        batching = asyncio.create_task(self.batcher.run())
        reporting = asyncio.create_task(self._report())
        logger.info(
            "model worker %s serving %s (%s) on %s, %s/%s, max_batch %d, max_wait %.1f ms",
            self.identity,
            self.model.name,
            self.model.path,
            self.model.provider,
            self.options.namespace,
            self.options.task_queue,
            self.options.max_batch,
            self.options.max_wait_s * 1000,
        )
        try:
            await stop.wait()
        finally:
            for poll in polls:
                poll.cancel()
            await asyncio.gather(*polls, return_exceptions=True)
            self.batcher.close()
            logger.info("draining: %d tasks queued", self.batcher.queued)
            try:
                await asyncio.wait_for(self._drain(batching), self.options.drain_timeout_s)
            except TimeoutError:
                logger.warning("drain timed out; the server retries what was not answered")
            batching.cancel()
            reporting.cancel()
            for answer in self._answers:
                answer.cancel()
            self._executor.shutdown(wait=False, cancel_futures=True)
            await self._channel.close(None)
            self._log_stats()
            self._write_stats()

    async def _drain(self, batching: asyncio.Task[None]) -> None:
        await batching
        while self._answers:
            await asyncio.gather(*self._answers, return_exceptions=True)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.options.stats_interval_s)
            self._log_stats()

    def _log_stats(self) -> None:
        logger.info("stats %s", json.dumps(self.stats_dict(), separators=(",", ":")))

    def _write_stats(self) -> None:
        if self.options.stats_file is not None:
            self.options.stats_file.write_text(json.dumps(self.stats_dict()) + "\n")

    # -- polling ---------------------------------------------------------------------------

    async def _poll(self, request: flow_service_pb2.PollBlockTaskRequest) -> None:
        delay = 0.0
        while True:
            # A slot before the poll: a task never arrives with nowhere to go.
            await self._slots.acquire()
            try:
                task = await self.stub.PollBlockTask(
                    request, timeout=_POLL_TIMEOUT_S, metadata=self.options.metadata
                )
            except grpc.aio.AioRpcError as e:
                self._slots.release()
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue
                delay = _backoff(delay)
                logger.warning("poll failed (%s); again in %.2fs", e.code().name, delay)
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self._slots.release()
                raise
            delay = 0.0
            if not task.task_token:
                self._slots.release()
                continue
            self._accept(task)

    def _accept(self, task: flow_service_pb2.PollBlockTaskResponse) -> None:
        """Queue a task for its batch, or fail it alone when its input is bad."""
        try:
            if task.block_type != BLOCK_TYPE:
                raise BadModelInput(f"this worker serves {BLOCK_TYPE}, not {task.block_type}")
            features = self.model.check(from_payloads(self.converter, task.input))
        except (BadModelInput, ValueError) as e:
            # A ValueError: input that is not JSON at all.
            self._answer(self._fail([task], e, type_="BadModelInput", non_retryable=True))
            return
        self.batcher.put(_Pending(task, features))

    # -- a batch ---------------------------------------------------------------------------

    async def _forward(self, batch: list[_Pending]) -> None:
        """One forward pass over the batch, off the event loop; its answers go in the
        background so that the next batch's pass can start at once."""
        try:
            results = await self._predict([p.features for p in batch])
        except Exception as e:
            if len(batch) == 1:
                logger.warning("forward pass failed: %r", e)
                self._answer(
                    self._fail([batch[0].task], e, type_="ModelError", non_retryable=False)
                )
                return
            # Find the items the model refuses: each alone.
            logger.warning("forward pass over %d items failed (%r); item by item", len(batch), e)
            for pending in batch:
                await self._forward([pending])
            return
        self._answer(self._complete([(p.task, r) for p, r in zip(batch, results, strict=True)]))

    async def _predict(self, rows: list[list[float]]) -> list[dict[str, Any]]:
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self.model.predict, rows
            )
        finally:
            self.stats.forward_s += time.perf_counter() - started

    def _answer(self, answering: Awaitable[None]) -> None:
        task = asyncio.ensure_future(answering)
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    # -- answers ---------------------------------------------------------------------------

    async def _complete(
        self, done: Sequence[tuple[flow_service_pb2.PollBlockTaskResponse, dict[str, Any]]]
    ) -> None:
        """RespondBlockCompletedBatch, 100 at a time; releases each task's slot."""
        try:
            for first in range(0, len(done), _MAX_BATCH_CALL):
                await self._complete_chunk(done[first : first + _MAX_BATCH_CALL])
        finally:
            for _ in done:
                self._slots.release()

    async def _complete_chunk(
        self, chunk: Sequence[tuple[flow_service_pb2.PollBlockTaskResponse, dict[str, Any]]]
    ) -> None:
        requests = []
        for task, result in chunk:
            payloads = to_payloads(self.converter, result)
            check_engine_readable(payloads, "a prediction")
            requests.append(
                flow_service_pb2.RespondBlockCompletedRequest(
                    namespace=self.options.namespace,
                    task_token=task.task_token,
                    result=payloads,
                    identity=self.identity,
                    sticky_task_queue=self.sticky_task_queue,
                )
            )
        batch = flow_service_pb2.RespondBlockCompletedBatchRequest(completions=requests)
        answer = await self._call(
            "RespondBlockCompletedBatch",
            lambda: self.stub.RespondBlockCompletedBatch(
                batch, timeout=_RPC_TIMEOUT_S, metadata=self.options.metadata
            ),
        )
        if answer is None:
            return
        refused = []
        for (task, _), item in zip(chunk, answer.results, strict=False):
            if item.status.code == _OK:
                self.stats.completed += 1
            elif item.status.code == _NOT_FOUND:
                self.stats.dropped += 1
            elif item.status.code == _INVALID_ARGUMENT:
                # The block stays open (e.g. a result too big for the run): say why.
                refused.append((task, ValueError(item.status.message)))
            else:
                logger.error(
                    "completion of run %s refused: %d %s",
                    task.run.run_id,
                    item.status.code,
                    item.status.message,
                )
        for task, error in refused:
            await self._fail_now(task, error, type_="ResultRejected", non_retryable=True)

    async def _fail(
        self,
        tasks: Sequence[flow_service_pb2.PollBlockTaskResponse],
        error: BaseException,
        *,
        type_: str,
        non_retryable: bool,
    ) -> None:
        """Fail each task; releases their slots."""
        try:
            for task in tasks:
                await self._fail_now(task, error, type_=type_, non_retryable=non_retryable)
        finally:
            for _ in tasks:
                self._slots.release()

    async def _fail_now(
        self,
        task: flow_service_pb2.PollBlockTaskResponse,
        error: BaseException,
        *,
        type_: str,
        non_retryable: bool,
    ) -> None:
        logger.info("block %s of run %s failed: %s", task.block_id, task.run.run_id, error)
        request = flow_service_pb2.RespondBlockFailedRequest(
            namespace=self.options.namespace,
            task_token=task.task_token,
            failure=_failure(error, type_=type_, non_retryable=non_retryable),
            identity=self.identity,
        )
        answer = await self._call(
            "RespondBlockFailed",
            lambda: self.stub.RespondBlockFailed(
                request, timeout=_RPC_TIMEOUT_S, metadata=self.options.metadata
            ),
        )
        if answer is not None:
            self.stats.failed += 1

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """The server's answer; None when there is none to act on (logged): the attempt is no
        longer current, the call is refused, or the server stayed away `_RESPOND_FOR_S`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _RESPOND_FOR_S
        delay = 0.0
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.NOT_FOUND:
                    self.stats.dropped += 1
                    logger.info("%s dropped: attempt no longer current", what)
                    return None
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    retry_delay = from_grpc(e).retry_delay
                    delay = retry_delay.total_seconds() if retry_delay else _backoff(delay)
                elif code in _RETRYABLE:
                    delay = _backoff(delay)
                else:
                    logger.error("%s failed: %s %s", what, code.name, e.details())
                    return None
                if loop.time() + delay >= deadline:
                    logger.error("%s failed: %s for %.0fs", what, code.name, _RESPOND_FOR_S)
                    return None
                await asyncio.sleep(delay)
