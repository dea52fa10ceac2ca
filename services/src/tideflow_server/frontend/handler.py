"""The public API: FlowService and OperatorService.

Every request is validated first (nothing invalid goes further), counted against its
namespace's rate limit, and then either served here (namespaces, flows, visibility: data
that is not sharded) or routed (run operations to the history host that owns the run's
shard, polls to the matching host that owns the task queue partition).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf.message import Message

from tideflow.api.v1 import (
    blueprint_pb2,
    flow_pb2,
    flow_service_pb2,
    flow_service_pb2_grpc,
    namespace_pb2,
    operator_service_pb2,
    operator_service_pb2_grpc,
    run_pb2,
)
from tideflow_server.config import EventsConfig, Settings
from tideflow_server.frontend import validation
from tideflow_server.frontend.events import EventPublisher
from tideflow_server.frontend.limits import DEFAULT_LIMITS, RequestLimits
from tideflow_server.frontend.ratelimit import NamespaceRateLimiter, overrides_from_config
from tideflow_server.frontend.task_queues import merge_described
from tideflow_server.history.handler import service_error
from tideflow_server.history.interpreter import Limits, compile_blueprint
from tideflow_server.internal.v1 import (
    history_service_pb2 as hs,
)
from tideflow_server.internal.v1 import (
    matching_service_pb2 as ms,
)
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.membership import Membership
from tideflow_server.namespaces import NamespaceCache
from tideflow_server.persistence import errors as store
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.persistence.records import VisibilityFilter, VisibilityRow
from tideflow_server.rpc.clients import HISTORY, HistoryClient, MatchingClient, shard_key
from tideflow_server.rpc.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ServiceError,
    abort,
    from_item_status,
    to_item_status,
)
from tideflow_server.taskqueue_configs import TaskQueueConfigs
from tideflow_server.tokens import parse_token

log = structlog.get_logger(__name__)
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]
SERVER_VERSION = "0.1.0"
POLL_MARGIN_S = 1.0
"""A poll answers this long before the caller's deadline, so the reply is not lost."""
ADMIN_COST = 0.0
"""Namespace administration (Describe and UpdateNamespace; Register and ListNamespaces name
no existing namespace) is not charged to the namespace's bucket: a limit set too low must
never block the call that fixes it."""


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


class _Base:
    def __init__(
        self,
        *,
        manager: PersistenceManager,
        namespaces: NamespaceCache,
        limiter: NamespaceRateLimiter,
        limits: RequestLimits = DEFAULT_LIMITS,
    ) -> None:
        self._manager = manager
        self._namespaces = namespaces
        self._limiter = limiter
        self._limits = limits

    async def _serve(
        self,
        context: Context,
        request: Message,
        serve: Callable[[], Awaitable[Resp]],
    ) -> Resp:
        try:
            validation.validate(request, self._limits)
            return await serve()
        except Exception as e:
            await abort(context, service_error(e))

    async def _namespace(
        self, name: str, request: Message, *, cost: float = 1.0
    ) -> records_pb2.NamespaceRecord:
        """The namespace `request` names, charged `cost` tokens, with `request` checked again
        under the namespace's own limits."""
        record = await self._charge(name, cost)
        self._within_namespace_limits(record, request)
        return record

    async def _charge(self, name: str, cost: float) -> records_pb2.NamespaceRecord:
        record = await self._namespaces.by_name(name)
        override = overrides_from_config(record.config.rate_limits)
        self._limiter.check(name, rps=override.rps, burst=override.burst, cost=cost)
        return record

    def _within_namespace_limits(
        self, record: records_pb2.NamespaceRecord, request: Message
    ) -> None:
        # The server's limits were checked before the namespace was known; a namespace's own
        # (NamespaceConfig.limits) can only be tighter, so most namespaces skip this.
        limits = self._limits.with_namespace_limits(record.config.limits)
        if limits is not self._limits:
            validation.validate(request, limits)


class FlowHandler(_Base, flow_service_pb2_grpc.FlowServiceServicer):
    def __init__(
        self,
        *,
        manager: PersistenceManager,
        namespaces: NamespaceCache,
        limiter: NamespaceRateLimiter,
        history: HistoryClient,
        matching: MatchingClient,
        long_poll_timeout_s: float,
        history_long_poll_timeout_s: float,
        wait_for_close_timeout_s: float,
        limits: RequestLimits = DEFAULT_LIMITS,
        blueprint_limits: Limits | None = None,
        events: EventsConfig | None = None,
        task_queues: TaskQueueConfigs | None = None,
    ) -> None:
        """The timeouts are the three long polls' (settings `matching.long_poll_timeout_s`,
        `history.long_poll_timeout_s`, `history.wait_for_close_timeout_s`): the frontend sizes
        its calls to matching and history by them. `blueprint_limits`: the `blueprint`
        settings registration checks (nesting depth, loop iterations)."""
        self._blueprint_limits = blueprint_limits
        super().__init__(manager=manager, namespaces=namespaces, limiter=limiter, limits=limits)
        self._history = history
        self._matching = matching
        self._long_poll_timeout_s = long_poll_timeout_s
        self._history_long_poll_timeout_s = history_long_poll_timeout_s
        self._wait_for_close_timeout_s = wait_for_close_timeout_s
        self._events = EventPublisher(manager.persistence.events, history, events or EventsConfig())
        self._task_queues = task_queues or TaskQueueConfigs(manager.persistence.tasks)

    # -- namespaces ----------------------------------------------------------------------

    async def RegisterNamespace(
        self, request: flow_service_pb2.RegisterNamespaceRequest, context: Context
    ) -> flow_service_pb2.RegisterNamespaceResponse:
        async def serve() -> flow_service_pb2.RegisterNamespaceResponse:
            record = records_pb2.NamespaceRecord()
            info = record.info
            info.name = request.namespace
            info.id = str(uuid.uuid4())
            info.state = namespace_pb2.NAMESPACE_STATE_REGISTERED
            info.description = request.description
            info.owner_email = request.owner_email
            info.data.update(request.data)
            record.config.CopyFrom(request.config)
            if not record.config.HasField("retention"):
                record.config.retention.FromSeconds(7 * 24 * 3600)
            record.create_time.GetCurrentTime()
            try:
                await self._manager.create_namespace(record)
            except store.AlreadyExists as e:
                raise AlreadyExists(
                    f"namespace {request.namespace!r} already exists",
                    reason="NAMESPACE_ALREADY_EXISTS",
                ) from e
            return flow_service_pb2.RegisterNamespaceResponse(info=info)

        return await self._serve(context, request, serve)

    async def DescribeNamespace(
        self, request: flow_service_pb2.DescribeNamespaceRequest, context: Context
    ) -> flow_service_pb2.DescribeNamespaceResponse:
        async def serve() -> flow_service_pb2.DescribeNamespaceResponse:
            record = await self._namespace(request.namespace, request, cost=ADMIN_COST)
            return flow_service_pb2.DescribeNamespaceResponse(
                info=record.info, config=record.config
            )

        return await self._serve(context, request, serve)

    async def ListNamespaces(
        self, request: flow_service_pb2.ListNamespacesRequest, context: Context
    ) -> flow_service_pb2.ListNamespacesResponse:
        async def serve() -> flow_service_pb2.ListNamespacesResponse:
            page = await self._manager.persistence.metadata.list_namespaces(
                page_size=validation.page_size_or_default(request.page_size, self._limits),
                page_token=request.next_page_token or None,
            )
            response = flow_service_pb2.ListNamespacesResponse(
                next_page_token=page.next_page_token or b""
            )
            for row in page.items:
                record = records_pb2.NamespaceRecord.FromString(row.data)
                response.namespaces.add(info=record.info, config=record.config)
            return response

        return await self._serve(context, request, serve)

    async def UpdateNamespace(
        self, request: flow_service_pb2.UpdateNamespaceRequest, context: Context
    ) -> flow_service_pb2.UpdateNamespaceResponse:
        async def serve() -> flow_service_pb2.UpdateNamespaceResponse:
            record = await self._namespace(request.namespace, request, cost=ADMIN_COST)
            updated = records_pb2.NamespaceRecord()
            updated.CopyFrom(record)
            source = records_pb2.NamespaceRecord(info=request.info, config=request.config)
            request.update_mask.MergeMessage(source, updated, replace_repeated_field=True)
            updated.info.name, updated.info.id = record.info.name, record.info.id
            updated.notification_version = record.notification_version + 1
            await self._manager.update_namespace(updated)
            self._namespaces.forget(updated)
            return flow_service_pb2.UpdateNamespaceResponse(
                info=updated.info, config=updated.config
            )

        return await self._serve(context, request, serve)

    # -- flows ---------------------------------------------------------------------------

    async def RegisterFlow(
        self, request: flow_service_pb2.RegisterFlowRequest, context: Context
    ) -> flow_service_pb2.RegisterFlowResponse:
        async def serve() -> flow_service_pb2.RegisterFlowResponse:
            record = await self._namespace(request.namespace, request)
            for _ in range(3):
                blueprint = blueprint_pb2.Blueprint()
                blueprint.CopyFrom(request.blueprint)
                if not blueprint.version:
                    # Version 0 asks for the next version of the flow.
                    try:
                        latest = await self._manager.get_flow(record.info.id, blueprint.name)
                        blueprint.version = latest.version + 1
                    except store.NotFound:
                        blueprint.version = 1
                # Every error, with its path.
                compile_blueprint(blueprint, limits=self._blueprint_limits)
                flow = flow_pb2.FlowDefinition(
                    namespace=request.namespace,
                    name=blueprint.name,
                    version=blueprint.version,
                    identity=request.identity,
                    blueprint=blueprint,
                )
                flow.create_time.GetCurrentTime()
                try:
                    await self._manager.create_flow(record.info.id, flow)
                except store.AlreadyExists as e:
                    if not request.blueprint.version:
                        continue  # another registration took that version: take the next
                    existing = await self._manager.get_flow(record.info.id, flow.name, flow.version)
                    if existing.blueprint == flow.blueprint:
                        return flow_service_pb2.RegisterFlowResponse(flow=existing, created=False)
                    raise AlreadyExists(
                        f"flow {flow.name}@{flow.version} is registered with a different "
                        "blueprint; flows are immutable, register a new version",
                        reason="FLOW_VERSION_EXISTS",
                    ) from e
                return flow_service_pb2.RegisterFlowResponse(flow=flow, created=True)
            raise AlreadyExists(f"flow {request.blueprint.name!r} is being registered concurrently")

        return await self._serve(context, request, serve)

    async def DescribeFlow(
        self, request: flow_service_pb2.DescribeFlowRequest, context: Context
    ) -> flow_service_pb2.DescribeFlowResponse:
        async def serve() -> flow_service_pb2.DescribeFlowResponse:
            record = await self._namespace(request.namespace, request)
            try:
                flow = await self._manager.get_flow(record.info.id, request.name, request.version)
            except store.NotFound as e:
                shown = f"{request.name}@{request.version}" if request.version else request.name
                raise NotFound(f"flow {shown} is not registered", reason="FLOW_NOT_FOUND") from e
            return flow_service_pb2.DescribeFlowResponse(flow=flow)

        return await self._serve(context, request, serve)

    async def ListFlows(
        self, request: flow_service_pb2.ListFlowsRequest, context: Context
    ) -> flow_service_pb2.ListFlowsResponse:
        async def serve() -> flow_service_pb2.ListFlowsResponse:
            record = await self._namespace(request.namespace, request)
            page = await self._manager.persistence.metadata.list_flows(
                record.info.id,
                name=request.name or None,
                page_size=validation.page_size_or_default(request.page_size, self._limits),
                page_token=request.next_page_token or None,
            )
            response = flow_service_pb2.ListFlowsResponse(
                next_page_token=page.next_page_token or b""
            )
            for row in page.items:
                response.flows.append(flow_pb2.FlowDefinition.FromString(row.data))
            return response

        return await self._serve(context, request, serve)

    # -- runs ----------------------------------------------------------------------------

    async def StartRun(
        self, request: flow_service_pb2.StartRunRequest, context: Context
    ) -> flow_service_pb2.StartRunResponse:
        async def serve() -> flow_service_pb2.StartRunResponse:
            record = await self._namespace(request.namespace, request)
            given = flow_service_pb2.StartRunRequest()
            given.CopyFrom(request)
            if not given.request_id:
                given.request_id = str(uuid.uuid4())
            forwarded = hs.StartRunRequest(namespace_id=record.info.id, request=given)
            timeout = None
            if given.wait_for_close:
                # History waits for the close at most this long, then answers without it,
                # so a caller's deadline ends in an answer rather than DEADLINE_EXCEEDED.
                wait_s = self._wait_for_close_timeout_s
                remaining = context.time_remaining()
                if remaining is not None:
                    wait_s = min(wait_s, max(0.0, remaining - 2 * POLL_MARGIN_S))
                forwarded.wait_timeout.FromTimedelta(timedelta(seconds=wait_s))
                timeout = wait_s + 5.0
                if remaining is not None:
                    timeout = min(timeout, max(0.1, remaining - POLL_MARGIN_S))
            response = await self._history.start_run(forwarded, timeout_s=timeout)
            return response.response

        return await self._serve(context, request, serve)

    async def SignalRun(
        self, request: flow_service_pb2.SignalRunRequest, context: Context
    ) -> flow_service_pb2.SignalRunResponse:
        async def serve() -> flow_service_pb2.SignalRunResponse:
            record = await self._namespace(request.namespace, request)
            response = await self._history.signal_run(
                hs.SignalRunRequest(namespace_id=record.info.id, request=request)
            )
            return response.response

        return await self._serve(context, request, serve)

    async def PublishEvent(
        self, request: flow_service_pb2.PublishEventRequest, context: Context
    ) -> flow_service_pb2.PublishEventResponse:
        async def serve() -> flow_service_pb2.PublishEventResponse:
            record = await self._namespace(request.namespace, request)
            return await self._events.publish(record.info.id, request)

        return await self._serve(context, request, serve)

    async def SignalWithStartRun(
        self, request: flow_service_pb2.SignalWithStartRunRequest, context: Context
    ) -> flow_service_pb2.SignalWithStartRunResponse:
        async def serve() -> flow_service_pb2.SignalWithStartRunResponse:
            record = await self._namespace(request.namespace, request)
            given = flow_service_pb2.SignalWithStartRunRequest()
            given.CopyFrom(request)
            if not given.request_id:
                given.request_id = str(uuid.uuid4())
            response = await self._history.signal_with_start_run(
                hs.SignalWithStartRunRequest(namespace_id=record.info.id, request=given)
            )
            return response.response

        return await self._serve(context, request, serve)

    async def CancelRun(
        self, request: flow_service_pb2.CancelRunRequest, context: Context
    ) -> flow_service_pb2.CancelRunResponse:
        async def serve() -> flow_service_pb2.CancelRunResponse:
            record = await self._namespace(request.namespace, request)
            response = await self._history.cancel_run(
                hs.CancelRunRequest(namespace_id=record.info.id, request=request)
            )
            return response.response

        return await self._serve(context, request, serve)

    async def TerminateRun(
        self, request: flow_service_pb2.TerminateRunRequest, context: Context
    ) -> flow_service_pb2.TerminateRunResponse:
        async def serve() -> flow_service_pb2.TerminateRunResponse:
            record = await self._namespace(request.namespace, request)
            response = await self._history.terminate_run(
                hs.TerminateRunRequest(namespace_id=record.info.id, request=request)
            )
            return response.response

        return await self._serve(context, request, serve)

    async def DescribeRun(
        self, request: flow_service_pb2.DescribeRunRequest, context: Context
    ) -> flow_service_pb2.DescribeRunResponse:
        async def serve() -> flow_service_pb2.DescribeRunResponse:
            record = await self._namespace(request.namespace, request)
            response = await self._history.describe_run(
                hs.DescribeRunRequest(namespace_id=record.info.id, request=request)
            )
            return response.response

        return await self._serve(context, request, serve)

    async def GetRunHistory(
        self, request: flow_service_pb2.GetRunHistoryRequest, context: Context
    ) -> flow_service_pb2.GetRunHistoryResponse:
        async def serve() -> flow_service_pb2.GetRunHistoryResponse:
            record = await self._namespace(request.namespace, request)
            remaining = context.time_remaining()
            timeout = self._history_long_poll_timeout_s + 5.0
            if remaining is not None:
                timeout = min(timeout, max(0.1, remaining - POLL_MARGIN_S))
            response = await self._history.get_run_history(
                hs.GetRunHistoryRequest(namespace_id=record.info.id, request=request),
                timeout_s=timeout,
            )
            return response.response

        return await self._serve(context, request, serve)

    async def ListRuns(
        self, request: flow_service_pb2.ListRunsRequest, context: Context
    ) -> flow_service_pb2.ListRunsResponse:
        async def serve() -> flow_service_pb2.ListRunsResponse:
            record = await self._namespace(request.namespace, request)
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
            page = await self._manager.persistence.visibility.list_runs(
                record.info.id,
                found,
                page_size=validation.page_size_or_default(request.page_size, self._limits),
                page_token=request.next_page_token or None,
            )
            return flow_service_pb2.ListRunsResponse(
                runs=[_run_info(r) for r in page.items],
                next_page_token=page.next_page_token or b"",
            )

        return await self._serve(context, request, serve)

    # -- block tasks ---------------------------------------------------------------------

    async def PollBlockTask(
        self, request: flow_service_pb2.PollBlockTaskRequest, context: Context
    ) -> flow_service_pb2.PollBlockTaskResponse:
        async def serve() -> flow_service_pb2.PollBlockTaskResponse:
            record = await self._namespace(request.namespace, request, cost=0.0)
            remaining = context.time_remaining()
            timeout = self._long_poll_timeout_s + POLL_MARGIN_S
            if remaining is not None:
                timeout = min(timeout, max(0.1, remaining - POLL_MARGIN_S))
            namespace_id = record.info.id
            response = await self._matching.poll_block_task(
                ms.PollBlockTaskRequest(
                    namespace_id=namespace_id,
                    poller_id=str(uuid.uuid4()),
                    request=request,
                    partition=await self._task_queues.poll_partition(
                        namespace_id, request.task_queue
                    ),
                ),
                timeout_s=timeout,
            )
            return response.response

        return await self._serve(context, request, serve)

    async def _forward_token(
        self,
        context: Context,
        request: Message,
        namespace: str,
        task_token: bytes,
        call: Callable[[str, str], Awaitable[Resp]],
    ) -> Resp:
        """A worker's call: routed to the shard of the run its task token names."""

        async def serve() -> Resp:
            record = await self._namespace(namespace, request)
            return await call(record.info.id, parse_token(task_token).run_id)

        return await self._serve(context, request, serve)

    async def RespondBlockCompleted(
        self, request: flow_service_pb2.RespondBlockCompletedRequest, context: Context
    ) -> flow_service_pb2.RespondBlockCompletedResponse:
        async def call(
            namespace_id: str, run_id: str
        ) -> flow_service_pb2.RespondBlockCompletedResponse:
            # A batch of one: it travels on the history host's completion stream.
            (result,) = await self._history.respond_block_completed_batch(
                [(namespace_id, request, run_id)]
            )
            if result.status.code != 0:
                raise from_item_status(result.status)
            return result.response

        return await self._forward_token(
            context, request, request.namespace, request.task_token, call
        )

    async def RespondBlockCompletedBatch(
        self, request: flow_service_pb2.RespondBlockCompletedBatchRequest, context: Context
    ) -> flow_service_pb2.RespondBlockCompletedBatchResponse:
        async def serve() -> flow_service_pb2.RespondBlockCompletedBatchResponse:
            run_ids: list[str] = []
            bad_tokens: list[FieldViolation] = []
            for i, item in enumerate(request.completions):
                try:
                    run_ids.append(
                        parse_token(item.task_token, f"completions[{i}].task_token").run_id
                    )
                except InvalidArgument as e:
                    bad_tokens.extend(e.violations)
            if bad_tokens:
                raise InvalidArgument(bad_tokens)
            # One token per namespace the call names, not per item: the blocks have run, and
            # refusing their results only wastes the work (see RespondBlockCompletedBatch).
            namespaces: dict[str, records_pb2.NamespaceRecord | ServiceError] = {}
            for name in dict.fromkeys(item.namespace for item in request.completions):
                try:
                    namespaces[name] = await self._charge(name, 1.0)
                except Exception as e:
                    namespaces[name] = service_error(e)
            response = flow_service_pb2.RespondBlockCompletedBatchResponse()
            forwarded: list[flow_service_pb2.RespondBlockCompletedResult] = []
            items: list[tuple[str, flow_service_pb2.RespondBlockCompletedRequest, str]] = []
            for item, run_id in zip(request.completions, run_ids, strict=True):
                result = response.results.add()
                record = namespaces[item.namespace]
                try:
                    if isinstance(record, ServiceError):
                        raise record
                    # An item over its namespace's own limits is answered as a single call.
                    self._within_namespace_limits(record, item)
                except ServiceError as e:
                    result.status.CopyFrom(to_item_status(e))
                    continue
                forwarded.append(result)
                items.append((record.info.id, item, run_id))
            answers = await self._history.respond_block_completed_batch(items)
            for result, answer in zip(forwarded, answers, strict=True):
                result.CopyFrom(answer)
            return response

        return await self._serve(context, request, serve)

    async def RespondBlockFailed(
        self, request: flow_service_pb2.RespondBlockFailedRequest, context: Context
    ) -> flow_service_pb2.RespondBlockFailedResponse:
        async def call(
            namespace_id: str, run_id: str
        ) -> flow_service_pb2.RespondBlockFailedResponse:
            wrapped = hs.RespondBlockFailedRequest(namespace_id=namespace_id, request=request)
            return (await self._history.respond_block_failed(wrapped, run_id=run_id)).response

        return await self._forward_token(
            context, request, request.namespace, request.task_token, call
        )

    async def RespondBlockCanceled(
        self, request: flow_service_pb2.RespondBlockCanceledRequest, context: Context
    ) -> flow_service_pb2.RespondBlockCanceledResponse:
        async def call(
            namespace_id: str, run_id: str
        ) -> flow_service_pb2.RespondBlockCanceledResponse:
            wrapped = hs.RespondBlockCanceledRequest(namespace_id=namespace_id, request=request)
            return (await self._history.respond_block_canceled(wrapped, run_id=run_id)).response

        return await self._forward_token(
            context, request, request.namespace, request.task_token, call
        )

    async def RecordBlockHeartbeat(
        self, request: flow_service_pb2.RecordBlockHeartbeatRequest, context: Context
    ) -> flow_service_pb2.RecordBlockHeartbeatResponse:
        async def call(
            namespace_id: str, run_id: str
        ) -> flow_service_pb2.RecordBlockHeartbeatResponse:
            wrapped = hs.RecordBlockHeartbeatRequest(namespace_id=namespace_id, request=request)
            return (await self._history.record_block_heartbeat(wrapped, run_id=run_id)).response

        return await self._forward_token(
            context, request, request.namespace, request.task_token, call
        )

    async def DescribeTaskQueue(
        self, request: flow_service_pb2.DescribeTaskQueueRequest, context: Context
    ) -> flow_service_pb2.DescribeTaskQueueResponse:
        async def serve() -> flow_service_pb2.DescribeTaskQueueResponse:
            record = await self._namespace(request.namespace, request)
            namespace_id = record.info.id
            queue = await self._task_queues.get(namespace_id, request.task_queue)
            described = await asyncio.gather(
                *(
                    self._matching.describe_task_queue(
                        ms.DescribeTaskQueueRequest(
                            namespace_id=namespace_id,
                            task_queue=request.task_queue,
                            partition=partition,
                        )
                    )
                    for partition in range(queue.read_partitions)
                )
            )
            return merge_described(described)

        return await self._serve(context, request, serve)

    async def UpdateTaskQueueConfig(
        self, request: flow_service_pb2.UpdateTaskQueueConfigRequest, context: Context
    ) -> flow_service_pb2.UpdateTaskQueueConfigResponse:
        async def serve() -> flow_service_pb2.UpdateTaskQueueConfigResponse:
            record = await self._namespace(request.namespace, request, cost=ADMIN_COST)
            updated = await self._matching.update_task_queue_config(
                ms.UpdateTaskQueueConfigRequest(
                    namespace_id=record.info.id,
                    task_queue=request.task_queue,
                    config=request.config,
                    update_mask=request.update_mask,
                    identity=request.identity,
                )
            )
            return flow_service_pb2.UpdateTaskQueueConfigResponse(config=updated.config)

        return await self._serve(context, request, serve)


class OperatorHandler(_Base, operator_service_pb2_grpc.OperatorServiceServicer):
    def __init__(
        self,
        *,
        manager: PersistenceManager,
        namespaces: NamespaceCache,
        limiter: NamespaceRateLimiter,
        membership: Membership,
        settings: Settings,
        shard_count: int,
    ) -> None:
        super().__init__(manager=manager, namespaces=namespaces, limiter=limiter)
        self._membership = membership
        self._settings = settings
        self._shard_count = shard_count

    async def _operate(self, context: Context, serve: Callable[[], Awaitable[Resp]]) -> Resp:
        try:
            return await serve()
        except Exception as e:
            await abort(context, service_error(e))

    async def GetClusterInfo(
        self, request: operator_service_pb2.GetClusterInfoRequest, context: Context
    ) -> operator_service_pb2.GetClusterInfoResponse:
        backend = self._manager.persistence.backend
        return operator_service_pb2.GetClusterInfoResponse(
            cluster_name=self._settings.cluster.name,
            server_version=SERVER_VERSION,
            history_shard_count=self._shard_count,
            persistence_backend=backend,
            visibility_backend=backend,
        )

    async def ListShards(
        self, request: operator_service_pb2.ListShardsRequest, context: Context
    ) -> operator_service_pb2.ListShardsResponse:
        async def serve() -> operator_service_pb2.ListShardsResponse:
            response = operator_service_pb2.ListShardsResponse()
            for shard_id in range(1, self._shard_count + 1):
                owner = self._membership.owner(HISTORY, shard_key(shard_id))
                try:
                    row = await self._manager.persistence.shards.get_shard(shard_id)
                    range_id = row.range_id
                except store.NotFound:
                    range_id = 0
                response.shards.add(
                    shard_id=shard_id,
                    owner_host=owner.host_id if owner else "",
                    range_id=range_id,
                )
            return response

        return await self._operate(context, serve)

    async def ListClusterMembers(
        self, request: operator_service_pb2.ListClusterMembersRequest, context: Context
    ) -> operator_service_pb2.ListClusterMembersResponse:
        async def serve() -> operator_service_pb2.ListClusterMembersResponse:
            rows = await self._manager.persistence.cluster.list_members(
                now_ms=int(time.time() * 1000), role=request.role or None
            )
            response = operator_service_pb2.ListClusterMembersResponse()
            for row in rows:
                member = response.members.add(
                    role=row.role, host_id=row.host_id, rpc_address=row.rpc_address
                )
                member.session_start_time.FromMilliseconds(row.session_start_ms)
                member.last_heartbeat_time.FromMilliseconds(row.last_heartbeat_ms)
            return response

        return await self._operate(context, serve)
