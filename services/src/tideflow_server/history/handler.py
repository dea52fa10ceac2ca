"""The HistoryService servicer: route each request to the shard that owns its run and run the
use case. Errors map to statuses in the interceptor chain (rpc/interceptors.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from tideflow.api.v1 import flow_service_pb2
from tideflow_server import observability
from tideflow_server.history.api import (
    cancel_run,
    deliver_event,
    describe_run,
    get_run_history,
    record_block_heartbeat,
    record_block_started,
    record_child_run_closed,
    respond_block_canceled,
    respond_block_completed,
    respond_block_failed,
    signal_run,
    signal_with_start_run,
    start_run,
    terminate_run,
)
from tideflow_server.history.shard.context import ShardContext
from tideflow_server.history.shard.controller import ShardController
from tideflow_server.internal.v1 import history_service_pb2 as hs
from tideflow_server.internal.v1 import history_service_pb2_grpc
from tideflow_server.rpc.clients import shard_for
from tideflow_server.rpc.deadlines import wait_budget
from tideflow_server.rpc.errors import InvalidArgument, to_exchange_status, to_item_status
from tideflow_server.rpc.interceptors import service_error
from tideflow_server.rpc.streams import StreamServer
from tideflow_server.tokens import parse_token

Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]


class HistoryHandler(history_service_pb2_grpc.HistoryServiceServicer):
    def __init__(self, controller: ShardController, shard_count: int) -> None:
        self._controller = controller
        self._shard_count = shard_count
        self.streams = StreamServer()

    def _shard(self, namespace_id: str, run_id: str) -> ShardContext:
        if not namespace_id or not run_id:
            raise InvalidArgument("namespace_id and run_id are required")
        return self._controller.get(shard_for(namespace_id, run_id, self._shard_count))

    async def _serve(
        self,
        namespace_id: str,
        run_id: str,
        invoke: Callable[[ShardContext], Awaitable[Resp]],
    ) -> Resp:
        return await invoke(self._shard(namespace_id, run_id))

    async def _on_token(
        self,
        namespace_id: str,
        task_token: bytes,
        invoke: Callable[[ShardContext], Awaitable[Resp]],
    ) -> Resp:
        """A worker's call: the run (and so the shard) comes from its task token."""
        return await invoke(self._shard(namespace_id, parse_token(task_token).run_id))

    async def StartRun(self, request: hs.StartRunRequest, context: Context) -> hs.StartRunResponse:
        return await self._serve(
            request.namespace_id,
            request.request.run_id,
            lambda shard: start_run.invoke(shard, request),
        )

    async def SignalRun(
        self, request: hs.SignalRunRequest, context: Context
    ) -> hs.SignalRunResponse:
        return await self._serve(
            request.namespace_id,
            request.request.run.run_id,
            lambda shard: signal_run.invoke(shard, request),
        )

    async def SignalWithStartRun(
        self, request: hs.SignalWithStartRunRequest, context: Context
    ) -> hs.SignalWithStartRunResponse:
        return await self._serve(
            request.namespace_id,
            request.request.run_id,
            lambda shard: signal_with_start_run.invoke(shard, request),
        )

    async def CancelRun(
        self, request: hs.CancelRunRequest, context: Context
    ) -> hs.CancelRunResponse:
        return await self._serve(
            request.namespace_id,
            request.request.run.run_id,
            lambda shard: cancel_run.invoke(shard, request),
        )

    async def TerminateRun(
        self, request: hs.TerminateRunRequest, context: Context
    ) -> hs.TerminateRunResponse:
        return await self._serve(
            request.namespace_id,
            request.request.run.run_id,
            lambda shard: terminate_run.invoke(shard, request),
        )

    async def DescribeRun(
        self, request: hs.DescribeRunRequest, context: Context
    ) -> hs.DescribeRunResponse:
        return await self._serve(
            request.namespace_id,
            request.request.run.run_id,
            lambda shard: describe_run.invoke(shard, request),
        )

    async def RecordChildRunClosed(
        self, request: hs.RecordChildRunClosedRequest, context: Context
    ) -> hs.RecordChildRunClosedResponse:
        return await self._serve(
            request.namespace_id,
            request.parent.run_id,
            lambda shard: record_child_run_closed.invoke(shard, request),
        )

    async def DeliverEvent(
        self, request: hs.DeliverEventRequest, context: Context
    ) -> hs.DeliverEventResponse:
        return await self._serve(
            request.namespace_id,
            request.run.run_id,
            lambda shard: deliver_event.invoke(shard, request),
        )

    async def GetRunHistory(
        self, request: hs.GetRunHistoryRequest, context: Context
    ) -> hs.GetRunHistoryResponse:
        remaining = context.time_remaining()
        return await self._serve(
            request.namespace_id,
            request.request.run.run_id,
            lambda shard: get_run_history.invoke(
                shard, request, timeout_s=wait_budget(shard.config.long_poll_timeout_s, remaining)
            ),
        )

    async def RecordBlockStarted(
        self, request: hs.RecordBlockStartedRequest, context: Context
    ) -> hs.RecordBlockStartedResponse:
        return await self._serve(
            request.namespace_id,
            request.run.run_id,
            lambda shard: record_block_started.invoke(shard, request),
        )

    async def RecordBlockHeartbeat(
        self, request: hs.RecordBlockHeartbeatRequest, context: Context
    ) -> hs.RecordBlockHeartbeatResponse:
        return await self._on_token(
            request.namespace_id,
            request.request.task_token,
            lambda shard: record_block_heartbeat.invoke(shard, request),
        )

    async def RespondBlockCompleted(
        self, request: hs.RespondBlockCompletedRequest, context: Context
    ) -> hs.RespondBlockCompletedResponse:
        return await self._on_token(
            request.namespace_id,
            request.request.task_token,
            lambda shard: respond_block_completed.invoke(shard, request),
        )

    async def RespondBlockCompletedBatch(
        self, request: hs.RespondBlockCompletedBatchRequest, context: Context
    ) -> hs.RespondBlockCompletedBatchResponse:
        return await self._complete(request)

    async def RespondBlockCompletedStream(  # type: ignore[override]  # read and written through the context
        self,
        request_iterator: AsyncIterator[hs.RespondBlockCompletedStreamRequest],
        context: Context,
    ) -> None:
        async def answer(
            message: hs.RespondBlockCompletedStreamRequest,
        ) -> hs.RespondBlockCompletedStreamResponse:
            try:
                completed = await self._complete(message.request)
            except Exception as e:
                return hs.RespondBlockCompletedStreamResponse(
                    id=message.id, status=to_exchange_status(service_error(e))
                )
            return hs.RespondBlockCompletedStreamResponse(id=message.id, response=completed)

        await self.streams.serve(context, answer)

    async def _complete(
        self, request: hs.RespondBlockCompletedBatchRequest
    ) -> hs.RespondBlockCompletedBatchResponse:
        """Each item as RespondBlockCompleted, concurrently; an item's error is its result."""

        async def one(
            item: hs.RespondBlockCompletedRequest,
        ) -> flow_service_pb2.RespondBlockCompletedResult:
            try:
                with observability.attached(item.trace_context):
                    answer = await self._on_token(
                        item.namespace_id,
                        item.request.task_token,
                        lambda shard: respond_block_completed.invoke(shard, item),
                    )
            except Exception as e:
                return flow_service_pb2.RespondBlockCompletedResult(
                    status=to_item_status(service_error(e))
                )
            return flow_service_pb2.RespondBlockCompletedResult(response=answer.response)

        results = await asyncio.gather(*(one(item) for item in request.items))
        return hs.RespondBlockCompletedBatchResponse(results=results)

    async def RespondBlockFailed(
        self, request: hs.RespondBlockFailedRequest, context: Context
    ) -> hs.RespondBlockFailedResponse:
        return await self._on_token(
            request.namespace_id,
            request.request.task_token,
            lambda shard: respond_block_failed.invoke(shard, request),
        )

    async def RespondBlockCanceled(
        self, request: hs.RespondBlockCanceledRequest, context: Context
    ) -> hs.RespondBlockCanceledResponse:
        return await self._on_token(
            request.namespace_id,
            request.request.task_token,
            lambda shard: respond_block_canceled.invoke(shard, request),
        )

    async def DescribeShard(
        self, request: hs.DescribeShardRequest, context: Context
    ) -> hs.DescribeShardResponse:
        shard = self._controller.get(request.shard_id)
        return hs.DescribeShardResponse(shard_info=shard.lease.info, host_id=shard.lease.owner)

    async def CloseShard(
        self, request: hs.CloseShardRequest, context: Context
    ) -> hs.CloseShardResponse:
        await self._controller.close_shard(request.shard_id)
        return hs.CloseShardResponse()
