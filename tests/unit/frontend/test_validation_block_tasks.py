"""Worker requests: poll, respond, heartbeat; and DescribeTaskQueue."""

from __future__ import annotations

import math

import pytest

from tests.unit.frontend._support import LIMITS, TOKEN, description_of, fields_of, payloads
from tideflow.api.v1 import common_pb2, failure_pb2, flow_service_pb2
from tideflow_server.frontend.limits import RequestLimits
from tideflow_server.frontend.validation import (
    validate_describe_task_queue,
    validate_poll_block_task,
    validate_record_block_heartbeat,
    validate_respond_block_canceled,
    validate_respond_block_completed,
    validate_respond_block_failed,
)

Kind = common_pb2.TaskQueueKind


def queue(name: str = "gpu-ocr", kind: int = Kind.TASK_QUEUE_KIND_NORMAL) -> common_pb2.TaskQueue:
    return common_pb2.TaskQueue(name=name, kind=kind)  # type: ignore[arg-type]


# PollBlockTask.


def test_poll_accepts_normal_sticky_and_unspecified_queues() -> None:
    for kind in (Kind.TASK_QUEUE_KIND_UNSPECIFIED, Kind.TASK_QUEUE_KIND_NORMAL):
        validate_poll_block_task(
            flow_service_pb2.PollBlockTaskRequest(
                namespace="docs", task_queue=queue(kind=kind), identity="host:123"
            ),
            LIMITS,
        )
    validate_poll_block_task(
        flow_service_pb2.PollBlockTaskRequest(
            namespace="docs",
            task_queue=queue("host:123:5f1c", Kind.TASK_QUEUE_KIND_STICKY),
            max_tasks_per_second=25.5,
        ),
        LIMITS,
    )


def test_poll_requires_a_task_queue() -> None:
    assert fields_of(validate_poll_block_task, flow_service_pb2.PollBlockTaskRequest()) == [
        "namespace",
        "task_queue.name",
    ]


def test_poll_reports_every_problem() -> None:
    request = flow_service_pb2.PollBlockTaskRequest(
        namespace="docs",
        task_queue=queue("bad name", 9),
        identity="i" * 256,
        max_tasks_per_second=-1,
    )
    assert fields_of(validate_poll_block_task, request) == [
        "task_queue.name",
        "task_queue.kind",
        "identity",
        "max_tasks_per_second",
    ]


# 5e-324 split over partitions is 0, which no token bucket can hold (the fuzz test found it).
@pytest.mark.parametrize("rate", [math.nan, math.inf, -0.5, 5e-324, 0.0009, 100_001.0])
def test_poll_rate_is_none_or_a_representable_rate(rate: float) -> None:
    request = flow_service_pb2.PollBlockTaskRequest(
        namespace="docs", task_queue=queue(), max_tasks_per_second=rate
    )
    assert fields_of(validate_poll_block_task, request) == ["max_tasks_per_second"]


@pytest.mark.parametrize("rate", [0.0, 0.001, 100_000.0])
def test_poll_rates_at_the_bounds_are_taken(rate: float) -> None:
    validate_poll_block_task(
        flow_service_pb2.PollBlockTaskRequest(
            namespace="docs", task_queue=queue(), max_tasks_per_second=rate
        ),
        LIMITS,
    )


# Responses and heartbeats.


def test_respond_completed_happy_path() -> None:
    validate_respond_block_completed(
        flow_service_pb2.RespondBlockCompletedRequest(
            namespace="docs", task_token=TOKEN, result=payloads(b'{"label": "invoice"}')
        ),
        LIMITS,
    )


def test_task_token_is_required_and_bounded() -> None:
    missing = flow_service_pb2.RespondBlockCompletedRequest(namespace="docs")
    assert fields_of(validate_respond_block_completed, missing) == ["task_token"]
    huge = flow_service_pb2.RespondBlockCompletedRequest(namespace="docs", task_token=b"t" * 4097)
    assert description_of(validate_respond_block_completed, huge, "task_token").startswith(
        "is 4097 bytes, over the limit of 4096 bytes"
    )
    at_limit = flow_service_pb2.RespondBlockCompletedRequest(namespace="d", task_token=b"t" * 4096)
    validate_respond_block_completed(at_limit, LIMITS)


def test_oversized_result_reports_size_and_limit() -> None:
    limits = RequestLimits(max_payload_bytes=512)
    request = flow_service_pb2.RespondBlockCompletedRequest(
        namespace="docs", task_token=TOKEN, result=payloads(b"r" * 1000)
    )
    assert description_of(validate_respond_block_completed, request, "result", limits) == (
        f"is {request.result.ByteSize()} bytes, over the limit of 512 bytes"
    )


@pytest.mark.parametrize("slots", [-1, 101])
def test_eager_slots_must_be_within_bounds(slots: int) -> None:
    request = flow_service_pb2.RespondBlockCompletedRequest(
        namespace="docs", task_token=TOKEN, eager_slots=slots
    )
    assert description_of(validate_respond_block_completed, request, "eager_slots") == (
        f"is {slots}, must be between 0 and 100"
    )


def test_eager_slots_up_to_the_limit_are_accepted() -> None:
    for slots in (0, 1, 100):
        request = flow_service_pb2.RespondBlockCompletedRequest(
            namespace="docs", task_token=TOKEN, eager_slots=slots
        )
        validate_respond_block_completed(request, LIMITS)


def test_a_completions_sticky_queue_is_checked_as_a_queue_name() -> None:
    request = flow_service_pb2.RespondBlockCompletedRequest(
        namespace="docs", task_token=TOKEN, sticky_task_queue="-not a queue"
    )
    assert "sticky_task_queue.name" in fields_of(validate_respond_block_completed, request)
    request.sticky_task_queue = "gpu-box:42-7f3a"
    validate_respond_block_completed(request, LIMITS)


def failure(message: str = "ocr engine crashed") -> failure_pb2.Failure:
    return failure_pb2.Failure(
        message=message,
        source="python",
        application_failure_info=failure_pb2.ApplicationFailureInfo(type="OcrError"),
    )


def test_respond_failed_happy_path() -> None:
    validate_respond_block_failed(
        flow_service_pb2.RespondBlockFailedRequest(
            namespace="docs",
            task_token=TOKEN,
            failure=failure(),
            last_heartbeat_details=payloads(b'{"page": 3}'),
            identity="w1",
        ),
        LIMITS,
    )


def test_respond_failed_requires_a_failure_and_bounds_it() -> None:
    request = flow_service_pb2.RespondBlockFailedRequest(namespace="docs", task_token=TOKEN)
    assert fields_of(validate_respond_block_failed, request) == ["failure"]
    limits = RequestLimits(max_failure_bytes=100)
    request.failure.CopyFrom(failure("m" * 200))
    assert "over the limit of 100 bytes" in description_of(
        validate_respond_block_failed, request, "failure", limits
    )


def chain(causes: int) -> failure_pb2.Failure:
    """A failure with `causes` failures under it, one inside the other."""
    outer = inner = failure_pb2.Failure(message="0")
    for i in range(causes):
        inner = inner.cause
        inner.message = str(i + 1)
    return outer


def test_respond_failed_bounds_the_cause_chain() -> None:
    """Issue 17, item 6: 50 to 99 causes were accepted here and could not be parsed on the
    internal hop (INTERNAL). The default bound is 16 causes under the failure."""
    request = flow_service_pb2.RespondBlockFailedRequest(namespace="docs", task_token=TOKEN)
    request.failure.CopyFrom(chain(16))
    validate_respond_block_failed(request, LIMITS)
    for causes in (17, 60, 95):
        request.failure.CopyFrom(chain(causes))
        assert "over the limit of 16 causes" in description_of(
            validate_respond_block_failed, request, "failure" + ".cause" * 17
        )
    limits = RequestLimits(max_failure_causes=2)
    request.failure.CopyFrom(chain(3))
    assert fields_of(validate_respond_block_failed, request, limits) == [
        "failure.cause.cause.cause"
    ]


def test_respond_failed_reports_every_problem() -> None:
    request = flow_service_pb2.RespondBlockFailedRequest(
        namespace="", last_heartbeat_details=common_pb2.Payloads(payloads=[common_pb2.Payload()])
    )
    assert fields_of(validate_respond_block_failed, request) == [
        "namespace",
        "task_token",
        "failure",
        "last_heartbeat_details.payloads[0].metadata",
    ]


def test_respond_canceled() -> None:
    validate_respond_block_canceled(
        flow_service_pb2.RespondBlockCanceledRequest(
            namespace="docs", task_token=TOKEN, details=payloads(b"{}")
        ),
        LIMITS,
    )
    request = flow_service_pb2.RespondBlockCanceledRequest(namespace="docs", identity="\t")
    assert fields_of(validate_respond_block_canceled, request) == ["task_token", "identity"]


def test_record_heartbeat() -> None:
    validate_record_block_heartbeat(
        flow_service_pb2.RecordBlockHeartbeatRequest(
            namespace="docs", task_token=TOKEN, details=payloads(b'{"page": 9}')
        ),
        LIMITS,
    )
    limits = RequestLimits(max_payload_bytes=64)
    request = flow_service_pb2.RecordBlockHeartbeatRequest(
        namespace="docs", details=payloads(b"p" * 100)
    )
    assert fields_of(validate_record_block_heartbeat, request, limits) == [
        "task_token",
        "details",
    ]


# DescribeTaskQueue.


def test_describe_task_queue() -> None:
    validate_describe_task_queue(
        flow_service_pb2.DescribeTaskQueueRequest(namespace="docs", task_queue=queue()), LIMITS
    )
    validate_describe_task_queue(
        flow_service_pb2.DescribeTaskQueueRequest(
            namespace="docs", task_queue=queue("w:1", Kind.TASK_QUEUE_KIND_STICKY)
        ),
        LIMITS,
    )
    request = flow_service_pb2.DescribeTaskQueueRequest(namespace="docs")
    assert fields_of(validate_describe_task_queue, request) == ["task_queue.name"]
