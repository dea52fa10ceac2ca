"""FlowService's run calls: start, signal, publish events, cancel, terminate (routed to the
history host that owns the run's shard), describe, read history, and list (visibility)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import grpc

from tideflow.api.v1 import flow_service_pb2, run_pb2
from tideflow_server.frontend import validation
from tideflow_server.frontend.base import Frontend
from tideflow_server.internal.v1 import history_service_pb2 as hs
from tideflow_server.persistence.records import VisibilityFilter, VisibilityRow
from tideflow_server.rpc.deadlines import REPLY_MARGIN_S, call_timeout

Context = grpc.aio.ServicerContext[Any, Any]
HISTORY_SLACK_S = 5.0
"""What a call to history may take beyond the wait it was asked for."""


def _run_info(row: VisibilityRow) -> run_pb2.RunInfo:
    info = run_pb2.RunInfo(status=row.status, history_length=row.history_length)  # type: ignore[arg-type]
    info.run.run_id = row.run_id
    info.run.execution_id = row.execution_id
    info.flow.name = row.flow_name
    info.flow.version = row.flow_version
    info.start_time.FromMilliseconds(row.start_time_ms)
    if row.close_time_ms is not None:
        info.close_time.FromMilliseconds(row.close_time_ms)
    info.task_queue.name = row.task_queue
    if row.memo:
        info.memo.ParseFromString(row.memo)
    return info


class Runs:
    _f: Frontend

    async def StartRun(
        self, request: flow_service_pb2.StartRunRequest, context: Context
    ) -> flow_service_pb2.StartRunResponse:
        record = await self._f.namespace(request.namespace)
        given = flow_service_pb2.StartRunRequest()
        given.CopyFrom(request)
        if not given.request_id:
            given.request_id = str(uuid.uuid4())
        forwarded = hs.StartRunRequest(namespace_id=record.info.id, request=given)
        timeout = None
        if given.wait_for_close:
            # History waits for the close at most this long, then answers without it, so a
            # caller's deadline ends in an answer rather than DEADLINE_EXCEEDED.
            remaining = context.time_remaining()
            wait_s = self._f.timeouts.wait_for_close_s
            if remaining is not None:
                wait_s = min(wait_s, max(0.0, remaining - 2 * REPLY_MARGIN_S))
            forwarded.wait_timeout.FromTimedelta(timedelta(seconds=wait_s))
            timeout = call_timeout(wait_s + HISTORY_SLACK_S, remaining)
        response = await self._f.history.start_run(forwarded, timeout_s=timeout)
        return response.response

    async def SignalRun(
        self, request: flow_service_pb2.SignalRunRequest, context: Context
    ) -> flow_service_pb2.SignalRunResponse:
        record = await self._f.namespace(request.namespace)
        response = await self._f.history.signal_run(
            hs.SignalRunRequest(namespace_id=record.info.id, request=request)
        )
        return response.response

    async def PublishEvent(
        self, request: flow_service_pb2.PublishEventRequest, context: Context
    ) -> flow_service_pb2.PublishEventResponse:
        record = await self._f.namespace(request.namespace)
        return await self._f.events.publish(record.info.id, request)

    async def SignalWithStartRun(
        self, request: flow_service_pb2.SignalWithStartRunRequest, context: Context
    ) -> flow_service_pb2.SignalWithStartRunResponse:
        record = await self._f.namespace(request.namespace)
        given = flow_service_pb2.SignalWithStartRunRequest()
        given.CopyFrom(request)
        if not given.request_id:
            given.request_id = str(uuid.uuid4())
        response = await self._f.history.signal_with_start_run(
            hs.SignalWithStartRunRequest(namespace_id=record.info.id, request=given)
        )
        return response.response

    async def CancelRun(
        self, request: flow_service_pb2.CancelRunRequest, context: Context
    ) -> flow_service_pb2.CancelRunResponse:
        record = await self._f.namespace(request.namespace)
        response = await self._f.history.cancel_run(
            hs.CancelRunRequest(namespace_id=record.info.id, request=request)
        )
        return response.response

    async def TerminateRun(
        self, request: flow_service_pb2.TerminateRunRequest, context: Context
    ) -> flow_service_pb2.TerminateRunResponse:
        record = await self._f.namespace(request.namespace)
        response = await self._f.history.terminate_run(
            hs.TerminateRunRequest(namespace_id=record.info.id, request=request)
        )
        return response.response

    async def DescribeRun(
        self, request: flow_service_pb2.DescribeRunRequest, context: Context
    ) -> flow_service_pb2.DescribeRunResponse:
        record = await self._f.namespace(request.namespace)
        response = await self._f.history.describe_run(
            hs.DescribeRunRequest(namespace_id=record.info.id, request=request)
        )
        return response.response

    async def GetRunHistory(
        self, request: flow_service_pb2.GetRunHistoryRequest, context: Context
    ) -> flow_service_pb2.GetRunHistoryResponse:
        record = await self._f.namespace(request.namespace)
        response = await self._f.history.get_run_history(
            hs.GetRunHistoryRequest(namespace_id=record.info.id, request=request),
            timeout_s=call_timeout(
                self._f.timeouts.history_long_poll_s + HISTORY_SLACK_S, context.time_remaining()
            ),
        )
        return response.response

    async def ListRuns(
        self, request: flow_service_pb2.ListRunsRequest, context: Context
    ) -> flow_service_pb2.ListRunsResponse:
        record = await self._f.namespace(request.namespace)
        found = VisibilityFilter(
            statuses=frozenset(request.statuses),
            flow_name=request.flow_name or None,
            run_id=request.run_id or None,
            start_time_min_ms=(
                request.start_time_min.ToMilliseconds()
                if request.HasField("start_time_min")
                else None
            ),
            start_time_max_ms=(
                request.start_time_max.ToMilliseconds()
                if request.HasField("start_time_max")
                else None
            ),
        )
        page = await self._f.manager.persistence.visibility.list_runs(
            record.info.id,
            found,
            page_size=validation.page_size_or_default(request.page_size, self._f.limits),
            page_token=request.next_page_token or None,
        )
        return flow_service_pb2.ListRunsResponse(
            runs=[_run_info(r) for r in page.items],
            next_page_token=page.next_page_token or b"",
        )
