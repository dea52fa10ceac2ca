"""Server statuses become typed SDK errors carrying the google.rpc details."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tideflow._converter import DefaultConverter, to_payloads
from tideflow.api.v1 import common_pb2, failure_pb2
from tideflow.errors import (
    ApplicationError,
    BlockFailedError,
    FailureError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RPCError,
    ServerFailureError,
    TimeoutFailureError,
    from_failure,
    from_grpc,
)
from tideflow_server.frontend.ratelimit import NamespaceRateLimiter
from tideflow_server.rpc.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    from_rpc_error,
)


def _aio_error(status: grpc.Status) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code=status.code,
        initial_metadata=grpc.aio.Metadata(),
        trailing_metadata=grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
        debug_error_string="",
    )


def test_invalid_argument_keeps_its_field_violations() -> None:
    server = InvalidArgument([FieldViolation("blocks[1].needs[0]", "unknown block 'x'")])
    error = from_grpc(_aio_error(rpc_status.to_status(server.to_status())))
    assert isinstance(error, InvalidArgumentError)
    assert [(v.field, v.description) for v in error.violations] == [
        ("blocks[1].needs[0]", "unknown block 'x'")
    ]


def test_reason_and_metadata_come_through() -> None:
    server = NotFound("run 'x' not found", reason="RUN_NOT_FOUND", metadata={"run_id": "x"})
    error = from_grpc(_aio_error(rpc_status.to_status(server.to_status())))
    assert isinstance(error, NotFoundError)
    assert (error.reason, error.metadata, error.message) == (
        "RUN_NOT_FOUND",
        {"run_id": "x"},
        "run 'x' not found",
    )


def test_a_status_without_details_is_still_typed() -> None:
    bare = grpc.aio.AioRpcError(
        code=grpc.StatusCode.DATA_LOSS,
        initial_metadata=grpc.aio.Metadata(),
        trailing_metadata=grpc.aio.Metadata(),
        details="gone",
        debug_error_string="",
    )
    error = from_grpc(bare)
    assert type(error) is RPCError and error.code == grpc.StatusCode.DATA_LOSS


def test_a_failure_chain_reads_as_exceptions_chained_by_cause() -> None:
    converter = DefaultConverter()
    worker = failure_pb2.Failure(message="disk on fire", source="go", stack_trace="main.go:7")
    worker.application_failure_info.type = "DiskError"
    worker.application_failure_info.details.CopyFrom(to_payloads(converter, {"disk": "sda"}, None))
    worker.application_failure_info.details.payloads.add(metadata={"encoding": b"zstd/x"})
    worker.cause.message = "late"
    worker.cause.timeout_failure_info.timeout_type = common_pb2.TIMEOUT_TYPE_HEARTBEAT
    run = failure_pb2.Failure(message="block 'boom' failed", source="tideflow")
    run.block_failure_info.block_id = "boom"
    run.block_failure_info.attempt = 3
    run.block_failure_info.retry_state = common_pb2.RETRY_STATE_NON_RETRYABLE_FAILURE
    run.cause.CopyFrom(worker)

    error = from_failure(run)
    assert isinstance(error, BlockFailedError)
    assert (error.block_id, error.attempt, error.retry_state) == (
        "boom",
        3,
        "NON_RETRYABLE_FAILURE",
    )
    assert (error.source, error.failure) == ("tideflow", run)
    application = error.__cause__
    assert isinstance(application, ApplicationError)
    assert (application.type, application.source, application.stack_trace) == (
        "DiskError",
        "go",
        "main.go:7",
    )
    # A payload the converter cannot read stays as it came.
    assert application.details[:2] == ({"disk": "sda"}, None)
    assert application.details[2] == worker.application_failure_info.details.payloads[2]
    timeout = application.__cause__
    assert isinstance(timeout, TimeoutFailureError) and timeout.timeout_type == "HEARTBEAT"
    assert timeout.__cause__ is None


def test_engine_failures_read_as_server_failure_errors() -> None:
    failure = failure_pb2.Failure(message="`input.n`: wants a bool", source="tideflow")
    failure.server_failure_info.type = "ExpressionError"
    failure.server_failure_info.non_retryable = True
    error = from_failure(failure)
    assert isinstance(error, ServerFailureError)
    assert (error.type, error.non_retryable, str(error)) == (
        "ExpressionError",
        True,
        "`input.n`: wants a bool",
    )
    plain = from_failure(failure_pb2.Failure(message="terminated", source="tideflow"))
    assert type(plain) is FailureError and plain.message == "terminated"


def test_a_rate_limit_refusal_carries_retry_info_next_to_error_info() -> None:
    limiter = NamespaceRateLimiter(default_rps=4, default_burst=1, clock=lambda: 0.0)
    limiter.check("docs")
    with pytest.raises(ResourceExhausted) as raised:
        limiter.check("docs")
    status = raised.value.to_status()
    retry = error_details_pb2.RetryInfo()
    info = error_details_pb2.ErrorInfo()
    assert [d.Unpack(info) for d in status.details] == [True, False]
    assert [d.Unpack(retry) for d in status.details] == [False, True]
    assert retry.retry_delay.ToMilliseconds() == 250
    assert (info.reason, info.metadata["retry_after_ms"]) == ("NAMESPACE_RATE_LIMITED", "250")
    # The SDK reads it, and so does the server's own client side.
    error = from_grpc(_aio_error(rpc_status.to_status(status)))
    assert isinstance(error, ResourceExhaustedError)
    assert error.retry_delay == timedelta(milliseconds=250)
    again = from_rpc_error(_aio_error(rpc_status.to_status(status)))
    assert isinstance(again, ResourceExhausted) and again.retry_after_ms == 250


def test_other_errors_carry_no_retry_delay() -> None:
    server = NotFound("gone", reason="RUN_NOT_FOUND")
    assert from_grpc(_aio_error(rpc_status.to_status(server.to_status()))).retry_delay is None
