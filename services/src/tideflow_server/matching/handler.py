"""gRPC face of the matching role: validate, call the engine. Errors map to statuses in the
interceptor chain (rpc/interceptors.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import grpc
import structlog

from tideflow.api.v1 import common_pb2, task_queue_pb2
from tideflow_server import queue_config
from tideflow_server.internal.v1 import matching_service_pb2, matching_service_pb2_grpc
from tideflow_server.matching.engine import MatchingEngine
from tideflow_server.rpc.deadlines import wait_budget
from tideflow_server.rpc.errors import FieldViolation, InvalidArgument, to_exchange_status
from tideflow_server.rpc.interceptors import service_error
from tideflow_server.rpc.streams import StreamServer

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Context = grpc.aio.ServicerContext[Any, Any]


def _required(violations: list[FieldViolation], field: str, value: str) -> None:
    if not value:
        violations.append(FieldViolation(field, "required"))


def _task_queue(
    violations: list[FieldViolation], prefix: str, task_queue: common_pb2.TaskQueue
) -> None:
    _required(violations, f"{prefix}task_queue.name", task_queue.name)


def _partition(violations: list[FieldViolation], partition: int) -> None:
    if partition < 0:
        violations.append(FieldViolation("partition", "must not be negative"))


def _check(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations)


def validate_add(request: matching_service_pb2.AddBlockTaskRequest) -> None:
    v: list[FieldViolation] = []
    _required(v, "namespace_id", request.namespace_id)
    _task_queue(v, "", request.task_queue)
    _partition(v, request.partition)
    _required(v, "run.run_id", request.run.run_id)
    _required(v, "run.execution_id", request.run.execution_id)
    if request.scheduled_event_id <= 0:
        v.append(FieldViolation("scheduled_event_id", "must be positive"))
    if request.attempt < 1:
        v.append(FieldViolation("attempt", "must be at least 1"))
    if request.schedule_to_start_timeout.ToNanoseconds() < 0:
        v.append(FieldViolation("schedule_to_start_timeout", "must not be negative"))
    _check(v)


def validate_poll(request: matching_service_pb2.PollBlockTaskRequest) -> None:
    v: list[FieldViolation] = []
    _required(v, "namespace_id", request.namespace_id)
    _required(v, "poller_id", request.poller_id)
    _task_queue(v, "request.", request.request.task_queue)
    _partition(v, request.partition)
    if not queue_config.rate_ok(request.request.max_tasks_per_second):
        v.append(
            FieldViolation(
                "request.max_tasks_per_second",
                f"must be 0 or in [{queue_config.MIN_RATE_PER_SECOND:g}, "
                f"{queue_config.MAX_RATE_PER_SECOND:g}]",
            )
        )
    _check(v)


def validate_describe(request: matching_service_pb2.DescribeTaskQueueRequest) -> None:
    v: list[FieldViolation] = []
    _required(v, "namespace_id", request.namespace_id)
    _task_queue(v, "", request.task_queue)
    _partition(v, request.partition)
    _check(v)


def _config(
    violations: list[FieldViolation], config: task_queue_pb2.TaskQueueConfig, mask: list[str]
) -> None:
    for field, description in queue_config.check(config, mask):
        violations.append(FieldViolation(field, description))


def validate_update_config(request: matching_service_pb2.UpdateTaskQueueConfigRequest) -> None:
    v: list[FieldViolation] = []
    _required(v, "namespace_id", request.namespace_id)
    _task_queue(v, "", request.task_queue)
    _config(v, request.config, list(request.update_mask.paths))
    _check(v)


def validate_apply_config(request: matching_service_pb2.ApplyTaskQueueConfigRequest) -> None:
    v: list[FieldViolation] = []
    _required(v, "namespace_id", request.namespace_id)
    _task_queue(v, "", request.task_queue)
    _partition(v, request.partition)
    if request.config_version <= 0:
        v.append(FieldViolation("config_version", "must be positive"))
    _config(v, request.config, [])
    _check(v)


def validate_release(request: matching_service_pb2.ReleaseConcurrencySlotRequest) -> None:
    v: list[FieldViolation] = []
    _required(v, "namespace_id", request.namespace_id)
    _task_queue(v, "", request.task_queue)
    slot = request.slot
    if slot.namespace_id != request.namespace_id:
        v.append(FieldViolation("slot.namespace_id", "must be the request's namespace_id"))
    _required(v, "slot.run_id", slot.run_id)
    _required(v, "slot.execution_id", slot.execution_id)
    if slot.scheduled_event_id <= 0:
        v.append(FieldViolation("slot.scheduled_event_id", "must be positive"))
    if slot.attempt < 1:
        v.append(FieldViolation("slot.attempt", "must be at least 1"))
    _check(v)


def validate_cancel(request: matching_service_pb2.CancelOutstandingPollRequest) -> None:
    v: list[FieldViolation] = []
    _required(v, "namespace_id", request.namespace_id)
    _required(v, "poller_id", request.poller_id)
    _check(v)


class MatchingHandler(matching_service_pb2_grpc.MatchingServiceServicer):
    def __init__(self, engine: MatchingEngine) -> None:
        self._engine = engine
        self.streams = StreamServer()

    async def AddBlockTask(
        self, request: matching_service_pb2.AddBlockTaskRequest, context: Context
    ) -> matching_service_pb2.AddBlockTaskResponse:
        validate_add(request)
        return await self._engine.add_block_task(request)

    async def AddBlockTaskStream(  # type: ignore[override]  # read and written through the context
        self,
        request_iterator: AsyncIterator[matching_service_pb2.AddBlockTaskStreamRequest],
        context: Context,
    ) -> None:
        async def answer(
            message: matching_service_pb2.AddBlockTaskStreamRequest,
        ) -> matching_service_pb2.AddBlockTaskStreamResponse:
            try:
                validate_add(message.request)
                added = await self._engine.add_block_task(message.request)
            except Exception as e:
                return matching_service_pb2.AddBlockTaskStreamResponse(
                    id=message.id, status=to_exchange_status(service_error(e))
                )
            return matching_service_pb2.AddBlockTaskStreamResponse(id=message.id, response=added)

        await self.streams.serve(context, answer)

    async def PollBlockTask(
        self, request: matching_service_pb2.PollBlockTaskRequest, context: Context
    ) -> matching_service_pb2.PollBlockTaskResponse:
        # A client that goes away cancels this coroutine; the engine frees the poll on the way
        # out, so no task is handed to a dead poll.
        validate_poll(request)
        remaining: float | None = context.time_remaining()
        deadline: float | None = None
        if remaining is not None:
            wait = wait_budget(remaining, remaining)
            if wait <= 0:
                return matching_service_pb2.PollBlockTaskResponse()
            deadline = asyncio.get_running_loop().time() + wait
        return await self._engine.poll_block_task(request, deadline=deadline)

    async def DescribeTaskQueue(
        self, request: matching_service_pb2.DescribeTaskQueueRequest, context: Context
    ) -> matching_service_pb2.DescribeTaskQueueResponse:
        validate_describe(request)
        return await self._engine.describe_task_queue(request)

    async def UpdateTaskQueueConfig(
        self, request: matching_service_pb2.UpdateTaskQueueConfigRequest, context: Context
    ) -> matching_service_pb2.UpdateTaskQueueConfigResponse:
        validate_update_config(request)
        return await self._engine.update_task_queue_config(request)

    async def ApplyTaskQueueConfig(
        self, request: matching_service_pb2.ApplyTaskQueueConfigRequest, context: Context
    ) -> matching_service_pb2.ApplyTaskQueueConfigResponse:
        validate_apply_config(request)
        self._engine.apply_task_queue_config(request)
        return matching_service_pb2.ApplyTaskQueueConfigResponse()

    async def ReleaseConcurrencySlot(
        self, request: matching_service_pb2.ReleaseConcurrencySlotRequest, context: Context
    ) -> matching_service_pb2.ReleaseConcurrencySlotResponse:
        validate_release(request)
        return await self._engine.release_concurrency_slot(request)

    async def CancelOutstandingPoll(
        self, request: matching_service_pb2.CancelOutstandingPollRequest, context: Context
    ) -> matching_service_pb2.CancelOutstandingPollResponse:
        validate_cancel(request)
        self._engine.cancel_outstanding_poll(request.poller_id)
        return matching_service_pb2.CancelOutstandingPollResponse()
