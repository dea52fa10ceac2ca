"""Clients one role uses to reach another, routed by ownership.

History calls go to the host that owns the run's shard, matching calls to the host that owns
the task queue partition; both ask membership who that is. A host that no longer owns what
it was asked about answers UNAVAILABLE, as does a host that is down, and the call is retried
with backoff against a refreshed view until its deadline. A view that cannot be refreshed
(the database is away) is one more UNAVAILABLE: every failure a retry can cure is the RPC
layer's `Unavailable`, whichever layer it came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from tideflow.api.v1 import common_pb2, flow_service_pb2
from tideflow_server import observability
from tideflow_server.internal.v1 import (
    history_service_pb2 as hs,
)
from tideflow_server.internal.v1 import (
    history_service_pb2_grpc,
    matching_service_pb2_grpc,
)
from tideflow_server.internal.v1 import (
    matching_service_pb2 as ms,
)
from tideflow_server.membership import Membership, stable_hash
from tideflow_server.persistence.errors import Unavailable as PersistenceUnavailable
from tideflow_server.rpc.errors import (
    Internal,
    ServiceError,
    Unavailable,
    from_exchange_status,
    from_rpc_error,
    to_item_status,
)
from tideflow_server.rpc.streams import NotServed, StreamClient

T = TypeVar("T")
S = TypeVar("S")

HISTORY = "history"
MATCHING = "matching"


def _history_stub(channel: grpc.aio.Channel) -> history_service_pb2_grpc.HistoryServiceAsyncStub:
    # The generated stub types itself as the async variant when given an aio channel; the
    # async class exists only in the type stubs.
    return observability.traced(history_service_pb2_grpc.HistoryServiceStub(channel))


def _matching_stub(
    channel: grpc.aio.Channel,
) -> matching_service_pb2_grpc.MatchingServiceAsyncStub:
    return observability.traced(matching_service_pb2_grpc.MatchingServiceStub(channel))


CompletionStream = StreamClient[
    hs.RespondBlockCompletedStreamRequest, hs.RespondBlockCompletedStreamResponse
]
AddStream = StreamClient[ms.AddBlockTaskStreamRequest, ms.AddBlockTaskStreamResponse]


def _history_completions(
    channel: grpc.aio.Channel,
) -> tuple[history_service_pb2_grpc.HistoryServiceAsyncStub, CompletionStream]:
    stub = _history_stub(channel)
    return stub, StreamClient(
        lambda: stub.RespondBlockCompletedStream(None), lambda answer: answer.id
    )


def _matching_adds(
    channel: grpc.aio.Channel,
) -> tuple[matching_service_pb2_grpc.MatchingServiceAsyncStub, AddStream]:
    stub = _matching_stub(channel)
    return stub, StreamClient(lambda: stub.AddBlockTaskStream(None), lambda answer: answer.id)


def shard_for(namespace_id: str, run_id: str, shard_count: int) -> int:
    """The run's shard, 1..shard_count: fixed for the cluster's life."""
    return stable_hash(namespace_id, run_id) % shard_count + 1


def shard_key(shard_id: int) -> str:
    return f"shard/{shard_id}"


def partition_key(namespace_id: str, task_queue: str, kind: int, partition: int) -> str:
    """The ownership key of a partition. An unspecified kind is a normal queue, as matching
    reads it: a worker polling with kind 0 and history adding with NORMAL must reach the same
    host, or two hosts would take the partition from each other."""
    kind = kind or common_pb2.TASK_QUEUE_KIND_NORMAL
    return f"tq/{namespace_id}/{task_queue}/{kind}/{partition}"


class ChannelPool:
    """One long-lived channel per peer address; mutual TLS when `tls` is given (the roles'
    internal TLS: this process's certificate, and the CA its peers' certificates come from)."""

    def __init__(
        self,
        tls: grpc.ChannelCredentials | None = None,
        *,
        server_name: str | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tls = tls
        self._server_name = server_name
        self._interceptors = list(interceptors) or None

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            options: list[tuple[str, Any]] = [
                ("grpc.max_receive_message_length", 8 * 1024 * 1024),
                ("grpc.max_send_message_length", 8 * 1024 * 1024),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1_000),
            ]
            if self._tls is None:
                channel = grpc.aio.insecure_channel(
                    address, options=options, interceptors=self._interceptors
                )
            else:
                if self._server_name:
                    options.append(("grpc.ssl_target_name_override", self._server_name))
                channel = grpc.aio.secure_channel(
                    address, self._tls, options=options, interceptors=self._interceptors
                )
            self._channels[address] = channel
        return channel

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        await asyncio.gather(*(c.close(None) for c in channels.values()))


class _RoutedClient:
    def __init__(
        self,
        membership: Membership,
        channels: ChannelPool,
        *,
        role: str,
        retry_budget_s: float,
    ) -> None:
        self._membership = membership
        self._channels = channels
        self._role = role
        self._retry_budget_s = retry_budget_s
        self._stubs: dict[tuple[str, Callable[[grpc.aio.Channel], Any]], Any] = {}

    def _stub(self, address: str, make_stub: Callable[[grpc.aio.Channel], S]) -> S:
        """One stub (or stub and streams) per peer: building one per call costs more than the
        call's own work, and a stream is opened once."""
        stub = self._stubs.get((address, make_stub))
        if stub is None:
            stub = self._stubs[address, make_stub] = make_stub(self._channels.get(address))
        return stub

    async def _routed(
        self,
        key: str,
        make_stub: Callable[[grpc.aio.Channel], S],
        call: Callable[[S], Awaitable[T]],
        *,
        retry_budget_s: float | None = None,
    ) -> T:
        deadline = time.monotonic() + (
            self._retry_budget_s if retry_budget_s is None else retry_budget_s
        )
        backoff = 0.02
        refresh = False
        while True:
            try:
                if refresh:
                    await self._refresh()
                owner = self._membership.owner(self._role, key)
                if owner is None and not refresh:
                    # The view may predate the first host of the role (this process started
                    # before it): read it again once before refusing, whatever the budget.
                    refresh = True
                    await self._refresh()
                    owner = self._membership.owner(self._role, key)
                if owner is None:
                    raise Unavailable(f"no {self._role} host is available", reason="NO_HOST")
                try:
                    return await call(self._stub(owner.rpc_address, make_stub))
                except grpc.aio.AioRpcError as e:
                    raise from_rpc_error(e) from e
            except Unavailable:
                if time.monotonic() + backoff > deadline:
                    raise
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 1.0)
            refresh = True

    async def _refresh(self) -> None:
        """Re-read membership before a retry. The view lives in the database, so while the
        database is away (restarting) the read fails with the persistence layer's Unavailable:
        that is the same "try again" as a host answering UNAVAILABLE, so it is raised as the
        RPC layer's, which the retry loop and every caller treat as retryable. Escaping as the
        persistence error, it would read as an unexpected failure (matching once dropped
        tasks on it)."""
        try:
            await self._membership.refresh()
        except PersistenceUnavailable as e:
            raise Unavailable(f"membership not refreshed: {e}", reason="NO_MEMBERSHIP") from e


class HistoryClient(_RoutedClient):
    def __init__(
        self,
        membership: Membership,
        channels: ChannelPool,
        shard_count: int,
        *,
        retry_budget_s: float = 15.0,
        timeout_s: float = 10.0,
    ) -> None:
        super().__init__(membership, channels, role=HISTORY, retry_budget_s=retry_budget_s)
        self.shard_count = shard_count
        self._timeout_s = timeout_s

    def shard_for(self, namespace_id: str, run_id: str) -> int:
        return shard_for(namespace_id, run_id, self.shard_count)

    async def _call(
        self,
        namespace_id: str,
        run_id: str,
        call: Callable[[history_service_pb2_grpc.HistoryServiceAsyncStub], Awaitable[T]],
    ) -> T:
        key = shard_key(self.shard_for(namespace_id, run_id))
        return await self._routed(key, _history_stub, call)

    async def start_run(
        self, request: hs.StartRunRequest, *, timeout_s: float | None = None
    ) -> hs.StartRunResponse:
        """A start, retried like every call. History answers a retry whose request_id matches
        the execution's starter with started=false; when an earlier attempt of this call
        reached history and its outcome stayed unknown (the host died or the reply was lost
        after the commit), that starter was this call, so the answer is started=true."""
        sent = False

        async def attempt(
            stub: history_service_pb2_grpc.HistoryServiceAsyncStub,
        ) -> hs.StartRunResponse:
            nonlocal sent
            retry, sent = sent, True
            response = await stub.StartRun(request, timeout=timeout_s or self._timeout_s)
            if retry and not response.response.started:
                response.response.started = True
            return response

        return await self._call(request.namespace_id, request.request.run_id, attempt)

    async def signal_run(self, request: hs.SignalRunRequest) -> hs.SignalRunResponse:
        return await self._call(
            request.namespace_id,
            request.request.run.run_id,
            lambda s: s.SignalRun(request, timeout=self._timeout_s),
        )

    async def signal_with_start_run(
        self, request: hs.SignalWithStartRunRequest
    ) -> hs.SignalWithStartRunResponse:
        return await self._call(
            request.namespace_id,
            request.request.run_id,
            lambda s: s.SignalWithStartRun(request, timeout=self._timeout_s),
        )

    async def cancel_run(self, request: hs.CancelRunRequest) -> hs.CancelRunResponse:
        return await self._call(
            request.namespace_id,
            request.request.run.run_id,
            lambda s: s.CancelRun(request, timeout=self._timeout_s),
        )

    async def terminate_run(self, request: hs.TerminateRunRequest) -> hs.TerminateRunResponse:
        return await self._call(
            request.namespace_id,
            request.request.run.run_id,
            lambda s: s.TerminateRun(request, timeout=self._timeout_s),
        )

    async def describe_run(self, request: hs.DescribeRunRequest) -> hs.DescribeRunResponse:
        return await self._call(
            request.namespace_id,
            request.request.run.run_id,
            lambda s: s.DescribeRun(request, timeout=self._timeout_s),
        )

    async def get_run_history(
        self, request: hs.GetRunHistoryRequest, *, timeout_s: float | None = None
    ) -> hs.GetRunHistoryResponse:
        return await self._call(
            request.namespace_id,
            request.request.run.run_id,
            lambda s: s.GetRunHistory(request, timeout=timeout_s or self._timeout_s),
        )

    async def record_child_run_closed(
        self, request: hs.RecordChildRunClosedRequest
    ) -> hs.RecordChildRunClosedResponse:
        """Routed by the parent run's shard."""
        return await self._call(
            request.namespace_id,
            request.parent.run_id,
            lambda s: s.RecordChildRunClosed(request, timeout=self._timeout_s),
        )

    async def deliver_event(self, request: hs.DeliverEventRequest) -> hs.DeliverEventResponse:
        """Routed by the shard of the run whose event block waits."""
        return await self._call(
            request.namespace_id,
            request.run.run_id,
            lambda s: s.DeliverEvent(request, timeout=self._timeout_s),
        )

    async def record_block_started(
        self, request: hs.RecordBlockStartedRequest
    ) -> hs.RecordBlockStartedResponse:
        return await self._call(
            request.namespace_id,
            request.run.run_id,
            lambda s: s.RecordBlockStarted(request, timeout=self._timeout_s),
        )

    async def record_block_heartbeat(
        self, request: hs.RecordBlockHeartbeatRequest, *, run_id: str
    ) -> hs.RecordBlockHeartbeatResponse:
        return await self._call(
            request.namespace_id,
            run_id,
            lambda s: s.RecordBlockHeartbeat(request, timeout=self._timeout_s),
        )

    async def respond_block_completed(
        self, request: hs.RespondBlockCompletedRequest, *, run_id: str
    ) -> hs.RespondBlockCompletedResponse:
        return await self._call(
            request.namespace_id,
            run_id,
            lambda s: s.RespondBlockCompleted(request, timeout=self._timeout_s),
        )

    async def respond_block_completed_batch(
        self,
        items: Sequence[tuple[str, flow_service_pb2.RespondBlockCompletedRequest, str]],
        *,
        from_batch: bool = True,
    ) -> list[flow_service_pb2.RespondBlockCompletedResult]:
        """Completions of several runs, each as (namespace_id, completion, run_id): one call to
        each history host that owns some of their shards, every item answered on its own, in
        order. An item its host could not take (the shard moved, the host went away, a host
        without the batch call) goes again alone, with a single call's routing and retries."""
        results: list[flow_service_pb2.RespondBlockCompletedResult | None] = [None] * len(items)
        trace_context = observability.inject()  # a stream's messages carry no metadata
        by_host: dict[str, list[int]] = {}
        alone: list[int] = []
        for i, (namespace_id, _, run_id) in enumerate(items):
            key = shard_key(self.shard_for(namespace_id, run_id))
            owner = self._membership.owner(self._role, key)
            if owner is None:
                alone.append(i)
            else:
                by_host.setdefault(owner.rpc_address, []).append(i)

        def failed(error: ServiceError) -> flow_service_pb2.RespondBlockCompletedResult:
            return flow_service_pb2.RespondBlockCompletedResult(status=to_item_status(error))

        async def batch(address: str, indices: list[int]) -> None:
            request = hs.RespondBlockCompletedBatchRequest()
            for i in indices:
                namespace_id, completion, _ = items[i]
                item = request.items.add(namespace_id=namespace_id, request=completion)
                # In a batch, the worker's span for this item when it sent one (the call's
                # `traceparent` names one span for all); else the call's own span.
                carried = (from_batch and completion.trace_context) or trace_context
                if carried:
                    item.trace_context.update(carried)
            try:
                answer = await self._complete(address, request)
            except ServiceError as e:
                if isinstance(e, Unavailable):
                    await asyncio.gather(*(single(i) for i in indices))
                    return
                for i in indices:
                    results[i] = failed(e)
                return
            if len(answer.results) != len(indices):
                error = Internal(f"history answered {len(answer.results)} of {len(indices)} items")
                for i in indices:
                    results[i] = failed(error)
                return
            again: list[int] = []
            for i, result in zip(indices, answer.results, strict=True):
                if result.status.code == grpc.StatusCode.UNAVAILABLE.value[0]:
                    again.append(i)
                else:
                    results[i] = result
            await asyncio.gather(*(single(i) for i in again))

        async def single(i: int) -> None:
            namespace_id, completion, run_id = items[i]
            request = hs.RespondBlockCompletedRequest(namespace_id=namespace_id, request=completion)
            try:
                answer = await self.respond_block_completed(request, run_id=run_id)
            except ServiceError as e:
                results[i] = failed(e)
                return
            results[i] = flow_service_pb2.RespondBlockCompletedResult(response=answer.response)

        if len(by_host) == 1 and not alone:
            # The common case (and every lone completion): no task to gather one call.
            ((address, indices),) = by_host.items()
            await batch(address, indices)
        else:
            await asyncio.gather(
                *(batch(address, indices) for address, indices in by_host.items()),
                *(single(i) for i in alone),
            )
        return [r if r is not None else failed(Internal("no answer")) for r in results]

    async def _complete(
        self, address: str, request: hs.RespondBlockCompletedBatchRequest
    ) -> hs.RespondBlockCompletedBatchResponse:
        """One batch to one history host, on the host's completion stream (or, for a host
        without it, as a unary call). UNAVAILABLE means the items go again alone; a host without
        either call answers UNAVAILABLE too."""
        stub, stream = self._stub(address, _history_completions)
        try:
            try:
                reply = await stream.exchange(
                    lambda i: hs.RespondBlockCompletedStreamRequest(id=i, request=request),
                    timeout_s=self._timeout_s,
                )
            except NotServed:
                return await stub.RespondBlockCompletedBatch(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise Unavailable("history has no batch call", reason="NOT_SERVED") from e
            raise from_rpc_error(e) from e
        if reply.HasField("status"):
            raise from_exchange_status(reply.status)
        return reply.response

    async def respond_block_failed(
        self, request: hs.RespondBlockFailedRequest, *, run_id: str
    ) -> hs.RespondBlockFailedResponse:
        return await self._call(
            request.namespace_id,
            run_id,
            lambda s: s.RespondBlockFailed(request, timeout=self._timeout_s),
        )

    async def respond_block_canceled(
        self, request: hs.RespondBlockCanceledRequest, *, run_id: str
    ) -> hs.RespondBlockCanceledResponse:
        return await self._call(
            request.namespace_id,
            run_id,
            lambda s: s.RespondBlockCanceled(request, timeout=self._timeout_s),
        )


class MatchingClient(_RoutedClient):
    def __init__(
        self,
        membership: Membership,
        channels: ChannelPool,
        *,
        retry_budget_s: float = 15.0,
        timeout_s: float = 10.0,
    ) -> None:
        super().__init__(membership, channels, role=MATCHING, retry_budget_s=retry_budget_s)
        self._timeout_s = timeout_s

    @staticmethod
    def _key(namespace_id: str, task_queue: str, kind: int, partition: int) -> str:
        return partition_key(namespace_id, task_queue, kind, partition)

    async def add_block_task(
        self,
        request: ms.AddBlockTaskRequest,
        *,
        retry_budget_s: float | None = None,
        timeout_s: float | None = None,
    ) -> ms.AddBlockTaskResponse:
        """On the owner's add stream, or as a unary call to a host without it.
        `retry_budget_s`: how long to keep trying while the owner is unavailable (the
        client's default when None). `timeout_s` replaces the client's for one call (a sticky
        offer waits as long as its block asks)."""
        timeout = self._timeout_s if timeout_s is None else timeout_s

        async def add(
            peer: tuple[matching_service_pb2_grpc.MatchingServiceAsyncStub, AddStream],
        ) -> ms.AddBlockTaskResponse:
            stub, stream = peer
            try:
                reply = await stream.exchange(
                    lambda i: ms.AddBlockTaskStreamRequest(id=i, request=request),
                    timeout_s=timeout,
                )
            except NotServed:
                return await stub.AddBlockTask(request, timeout=timeout)
            if reply.HasField("status"):
                raise from_exchange_status(reply.status)
            return reply.response

        tq = request.task_queue
        return await self._routed(
            self._key(request.namespace_id, tq.name, tq.kind, request.partition),
            _matching_adds,
            add,
            retry_budget_s=retry_budget_s,
        )

    async def poll_block_task(
        self, request: ms.PollBlockTaskRequest, *, timeout_s: float
    ) -> ms.PollBlockTaskResponse:
        tq = request.request.task_queue
        return await self._routed(
            self._key(request.namespace_id, tq.name, tq.kind, request.partition),
            _matching_stub,
            lambda s: s.PollBlockTask(request, timeout=timeout_s),
            retry_budget_s=0.0,  # the worker polls again; never hold a poll past its deadline
        )

    async def describe_task_queue(
        self, request: ms.DescribeTaskQueueRequest
    ) -> ms.DescribeTaskQueueResponse:
        tq = request.task_queue
        return await self._routed(
            self._key(request.namespace_id, tq.name, tq.kind, request.partition),
            _matching_stub,
            lambda s: s.DescribeTaskQueue(request, timeout=self._timeout_s),
        )

    async def update_task_queue_config(
        self, request: ms.UpdateTaskQueueConfigRequest
    ) -> ms.UpdateTaskQueueConfigResponse:
        """To the owner of the queue's root partition, which persists the config."""
        tq = request.task_queue
        return await self._routed(
            self._key(request.namespace_id, tq.name, tq.kind, 0),
            _matching_stub,
            lambda s: s.UpdateTaskQueueConfig(request, timeout=self._timeout_s),
        )

    async def apply_task_queue_config(
        self, request: ms.ApplyTaskQueueConfigRequest, *, timeout_s: float = 2.0
    ) -> None:
        """To the owner of one partition: a newer config is in force. Short and not retried
        long: the partition reads the config back itself soon anyway."""
        tq = request.task_queue
        await self._routed(
            self._key(request.namespace_id, tq.name, tq.kind, request.partition),
            _matching_stub,
            lambda s: s.ApplyTaskQueueConfig(request, timeout=timeout_s),
            retry_budget_s=timeout_s,
        )

    async def release_concurrency_slot(self, request: ms.ReleaseConcurrencySlotRequest) -> None:
        """To the owner of the queue's root partition, which keeps its slots."""
        tq = request.task_queue
        await self._routed(
            self._key(request.namespace_id, tq.name, tq.kind, 0),
            _matching_stub,
            lambda s: s.ReleaseConcurrencySlot(request, timeout=self._timeout_s),
        )

    async def cancel_outstanding_poll(self, request: ms.CancelOutstandingPollRequest) -> None:
        tq = request.task_queue
        with contextlib.suppress(ServiceError):  # best effort: the poll ends at its deadline
            await self._routed(
                self._key(request.namespace_id, tq.name, tq.kind, request.partition),
                _matching_stub,
                lambda s: s.CancelOutstandingPoll(request, timeout=self._timeout_s),
                retry_budget_s=0.0,
            )
