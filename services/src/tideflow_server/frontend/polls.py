"""FlowService's worker calls: poll block tasks (from the matching host that owns the task
queue partition), and answer and heartbeat them (on the history host that owns the run the
task token names)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from tideflow.api.v1 import flow_service_pb2
from tideflow_server.frontend.base import Frontend
from tideflow_server.internal.v1 import history_service_pb2 as hs
from tideflow_server.internal.v1 import matching_service_pb2 as ms
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.rpc.deadlines import REPLY_MARGIN_S, call_timeout
from tideflow_server.rpc.errors import (
    FieldViolation,
    InvalidArgument,
    ServiceError,
    from_item_status,
    to_item_status,
)
from tideflow_server.rpc.interceptors import service_error
from tideflow_server.tokens import parse_token

Context = grpc.aio.ServicerContext[Any, Any]
Resp = TypeVar("Resp")


class Polls:
    _f: Frontend

    async def PollBlockTask(
        self, request: flow_service_pb2.PollBlockTaskRequest, context: Context
    ) -> flow_service_pb2.PollBlockTaskResponse:
        record = await self._f.namespace(request.namespace)
        namespace_id = record.info.id
        response = await self._f.matching.poll_block_task(
            ms.PollBlockTaskRequest(
                namespace_id=namespace_id,
                poller_id=str(uuid.uuid4()),
                request=request,
                partition=await self._f.task_queues.poll_partition(
                    namespace_id, request.task_queue
                ),
            ),
            timeout_s=call_timeout(
                self._f.timeouts.long_poll_s + REPLY_MARGIN_S, context.time_remaining()
            ),
        )
        self._f.token_keys.sign_task(response.response)
        return response.response

    async def _on_token(
        self, namespace: str, task_token: bytes, call: Callable[[str, str], Awaitable[Resp]]
    ) -> Resp:
        """A worker's call: routed to the shard of the run its task token names, once the token
        is known to be this cluster's, for this namespace."""
        record = await self._f.namespace(namespace)
        token = self._f.token_keys.verify(task_token, namespace_id=record.info.id)
        return await call(record.info.id, token.run_id)

    async def RespondBlockCompleted(
        self, request: flow_service_pb2.RespondBlockCompletedRequest, context: Context
    ) -> flow_service_pb2.RespondBlockCompletedResponse:
        async def call(
            namespace_id: str, run_id: str
        ) -> flow_service_pb2.RespondBlockCompletedResponse:
            # A batch of one: it travels on the history host's completion stream.
            (result,) = await self._f.history.respond_block_completed_batch(
                [(namespace_id, request, run_id)], from_batch=False
            )
            if result.status.code != 0:
                raise from_item_status(result.status)
            for task in result.response.next_tasks:
                self._f.token_keys.sign_task(task)
            return result.response

        return await self._on_token(request.namespace, request.task_token, call)

    async def RespondBlockCompletedBatch(
        self, request: flow_service_pb2.RespondBlockCompletedBatchRequest, context: Context
    ) -> flow_service_pb2.RespondBlockCompletedBatchResponse:
        bad_tokens: list[FieldViolation] = []
        for i, item in enumerate(request.completions):
            try:
                parse_token(item.task_token, f"completions[{i}].task_token")
            except InvalidArgument as e:
                bad_tokens.extend(e.violations)
        if bad_tokens:
            raise InvalidArgument(bad_tokens)
        # One token per namespace the call names, not per item, and charged here rather than
        # in the chain: the blocks have run, and refusing their results only wastes the work,
        # so an item of a namespace over its limit is answered alone (see the proto).
        namespaces: dict[str, records_pb2.NamespaceRecord | ServiceError] = {}
        for name in dict.fromkeys(item.namespace for item in request.completions):
            try:
                namespaces[name] = await self._f.charge(name, 1.0)
            except Exception as e:
                namespaces[name] = service_error(e)
        response = flow_service_pb2.RespondBlockCompletedBatchResponse()
        forwarded: list[flow_service_pb2.RespondBlockCompletedResult] = []
        items: list[tuple[str, flow_service_pb2.RespondBlockCompletedRequest, str]] = []
        for i, item in enumerate(request.completions):
            result = response.results.add()
            record = namespaces[item.namespace]
            try:
                if isinstance(record, ServiceError):
                    raise record
                token = self._f.token_keys.verify(
                    item.task_token,
                    namespace_id=record.info.id,
                    field=f"completions[{i}].task_token",
                )
                # An item over its namespace's own limits is answered as a single call.
                self._f.within_namespace_limits(record, item)
            except ServiceError as e:
                result.status.CopyFrom(to_item_status(e))
                continue
            forwarded.append(result)
            items.append((record.info.id, item, token.run_id))
        answers = await self._f.history.respond_block_completed_batch(items)
        for result, answer in zip(forwarded, answers, strict=True):
            for task in answer.response.next_tasks:
                self._f.token_keys.sign_task(task)
            result.CopyFrom(answer)
        return response

    async def RespondBlockFailed(
        self, request: flow_service_pb2.RespondBlockFailedRequest, context: Context
    ) -> flow_service_pb2.RespondBlockFailedResponse:
        async def call(
            namespace_id: str, run_id: str
        ) -> flow_service_pb2.RespondBlockFailedResponse:
            wrapped = hs.RespondBlockFailedRequest(namespace_id=namespace_id, request=request)
            return (await self._f.history.respond_block_failed(wrapped, run_id=run_id)).response

        return await self._on_token(request.namespace, request.task_token, call)

    async def RespondBlockCanceled(
        self, request: flow_service_pb2.RespondBlockCanceledRequest, context: Context
    ) -> flow_service_pb2.RespondBlockCanceledResponse:
        async def call(
            namespace_id: str, run_id: str
        ) -> flow_service_pb2.RespondBlockCanceledResponse:
            wrapped = hs.RespondBlockCanceledRequest(namespace_id=namespace_id, request=request)
            return (await self._f.history.respond_block_canceled(wrapped, run_id=run_id)).response

        return await self._on_token(request.namespace, request.task_token, call)

    async def RecordBlockHeartbeat(
        self, request: flow_service_pb2.RecordBlockHeartbeatRequest, context: Context
    ) -> flow_service_pb2.RecordBlockHeartbeatResponse:
        async def call(
            namespace_id: str, run_id: str
        ) -> flow_service_pb2.RecordBlockHeartbeatResponse:
            wrapped = hs.RecordBlockHeartbeatRequest(namespace_id=namespace_id, request=request)
            return (await self._f.history.record_block_heartbeat(wrapped, run_id=run_id)).response

        return await self._on_token(request.namespace, request.task_token, call)
