"""A fake history and request builders for the matching tests."""

from __future__ import annotations

import asyncio
import time
import uuid

from google.protobuf import duration_pb2, timestamp_pb2

from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2
from tideflow_server.internal.v1 import (
    history_service_pb2,
    matching_service_pb2,
    records_pb2,
)
from tideflow_server.matching import MatchingEngine
from tideflow_server.persistence.records import TaskQueueKey
from tideflow_server.rpc.errors import ServiceError
from tideflow_server.tokens import parse_token

NAMESPACE = "ns-1"
QUEUE = "gpu-ocr"
KEY = TaskQueueKey(NAMESPACE, QUEUE, common_pb2.TASK_QUEUE_KIND_NORMAL, 0)
RUN = common_pb2.RunRef(run_id="invoice-7", execution_id="0b7c6a9e-exec")


class FakeClock:
    """Wall time the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


class FakeHistory:
    """Stands in for history's RecordBlockStarted: records every call, answers from the
    scheduled event id, and raises errors queued per event (or `down` for every call)."""

    def __init__(self) -> None:
        self.calls: list[history_service_pb2.RecordBlockStartedRequest] = []
        self.errors: dict[int, list[Exception]] = {}
        self.down: ServiceError | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    def fail(self, scheduled_event_id: int, *errors: Exception) -> None:
        self.errors.setdefault(scheduled_event_id, []).extend(errors)

    def called_for(self) -> list[int]:
        return [c.scheduled_event_id for c in self.calls]

    async def record_block_started(
        self, request: history_service_pb2.RecordBlockStartedRequest
    ) -> history_service_pb2.RecordBlockStartedResponse:
        self.calls.append(request)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        queued = self.errors.get(request.scheduled_event_id)
        if queued:
            raise queued.pop(0)
        if self.down is not None:
            raise self.down
        event_id = request.scheduled_event_id
        scheduled = history_pb2.HistoryEvent(
            event_id=event_id,
            event_time=_ts(1_000 + event_id),
            event_type=history_pb2.EVENT_TYPE_BLOCK_SCHEDULED,
            block_scheduled_event_attributes=history_pb2.BlockScheduledEventAttributes(
                block_id=f"block-{event_id}",
                block_type="ocr@1",
                input=common_pb2.Payloads(
                    payloads=[common_pb2.Payload(data=f'{{"page": {event_id}}}'.encode())]
                ),
                timeouts=common_pb2.BlockTimeouts(start_to_close=duration_pb2.Duration(seconds=30)),
                retry_policy=common_pb2.RetryPolicy(maximum_attempts=3),
            ),
        )
        return history_service_pb2.RecordBlockStartedResponse(
            scheduled_event=scheduled,
            started_time=_ts(2_000 + event_id),
            attempt=request.attempt,
            current_attempt_scheduled_time=_ts(1_500 + event_id),
            heartbeat_details=common_pb2.Payloads(payloads=[common_pb2.Payload(data=b"page 3")]),
            flow=common_pb2.FlowRef(name="invoices", version=2),
        )


def add_request(
    scheduled_event_id: int,
    *,
    priority: int = 0,
    schedule_to_start: float | None = None,
    preferred_worker: str = "",
    dispatch: records_pb2.TaskDispatch | None = None,
) -> matching_service_pb2.AddBlockTaskRequest:
    request = matching_service_pb2.AddBlockTaskRequest(
        namespace_id=NAMESPACE,
        task_queue=common_pb2.TaskQueue(name=QUEUE),
        run=RUN,
        block_id=f"block-{scheduled_event_id}",
        scheduled_event_id=scheduled_event_id,
        attempt=1,
        priority=priority,
        preferred_worker_identity=preferred_worker,
    )
    if dispatch is not None:
        request.dispatch.CopyFrom(dispatch)
    if schedule_to_start is not None:
        request.schedule_to_start_timeout.FromNanoseconds(int(schedule_to_start * 1e9))
    return request


def poll_request(
    *, identity: str = "worker-1", poller_id: str | None = None, rate: float = 0.0
) -> matching_service_pb2.PollBlockTaskRequest:
    return matching_service_pb2.PollBlockTaskRequest(
        namespace_id=NAMESPACE,
        poller_id=poller_id or uuid.uuid4().hex,
        request=flow_service_pb2.PollBlockTaskRequest(
            namespace="default",
            task_queue=common_pb2.TaskQueue(name=QUEUE),
            identity=identity,
            max_tasks_per_second=rate,
        ),
    )


async def poll(
    engine: MatchingEngine,
    *,
    identity: str = "worker-1",
    poller_id: str | None = None,
    rate: float = 0.0,
    within: float | None = None,
) -> flow_service_pb2.PollBlockTaskResponse:
    """`within`: the caller's deadline, in seconds from now."""
    deadline = None if within is None else asyncio.get_running_loop().time() + within
    request = poll_request(identity=identity, poller_id=poller_id, rate=rate)
    return (await engine.poll_block_task(request, deadline=deadline)).response


def scheduled_event_id(response: flow_service_pb2.PollBlockTaskResponse) -> int:
    assert response.task_token, "the poll came back empty"
    return parse_token(response.task_token).scheduled_event_id


def describe_request() -> matching_service_pb2.DescribeTaskQueueRequest:
    return matching_service_pb2.DescribeTaskQueueRequest(
        namespace_id=NAMESPACE, task_queue=common_pb2.TaskQueue(name=QUEUE)
    )
