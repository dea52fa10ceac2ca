"""Errors the SDK raises: every server status becomes a typed exception with its details."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import grpc
from google.rpc import error_details_pb2, status_pb2

from tideflow._converter import ConversionError, DefaultConverter, PayloadConverter
from tideflow.api.v1 import common_pb2, failure_pb2


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class TideflowError(Exception):
    """Base of every SDK error."""


class RPCError(TideflowError):
    """The server answered with an error status. `reason` and `metadata` come from its
    google.rpc.ErrorInfo, `violations` from its BadRequest, `retry_delay` (how long to wait
    before trying again, e.g. under a namespace's rate limit) from its RetryInfo."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        violations: list[FieldViolation] | None = None,
        retry_delay: timedelta | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.violations = list(violations or [])
        self.retry_delay = retry_delay

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgumentError(RPCError): ...


class NotFoundError(RPCError): ...


class AlreadyExistsError(RPCError): ...


class FailedPreconditionError(RPCError): ...


class ResourceExhaustedError(RPCError): ...


class UnavailableError(RPCError):
    """The server could not be reached or is restarting; worth retrying."""


class DeadlineExceededError(RPCError): ...


class PermissionDeniedError(RPCError): ...


class UnauthenticatedError(RPCError): ...


_BY_CODE: dict[grpc.StatusCode, type[RPCError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def from_grpc(error: grpc.aio.AioRpcError) -> RPCError:
    """The typed error for a failed call, with the server's details."""
    reason, metadata, violations = "", {}, []
    retry_delay: timedelta | None = None
    for key, value in cast(Any, error.trailing_metadata() or ()):
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
            retry = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Unpack(bad):
                violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif detail.Unpack(retry):
                retry_delay = retry.retry_delay.ToTimedelta()
    cls = _BY_CODE.get(error.code(), RPCError)
    return cls(
        error.details() or error.code().name,
        code=error.code(),
        reason=reason,
        metadata=metadata,
        violations=violations,
        retry_delay=retry_delay,
    )


class FailureError(TideflowError):
    """An error as a `Failure` carries it, in any language. Failures the server recorded (a
    run's, a block's) are raised as these, read by `from_failure`: `failure` is the message
    itself, and `__cause__` the failure it wraps, read the same way."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.source = ""
        """Who produced it: "tideflow" for the engine, else the worker's SDK ("python",
        "go"...). Empty for an error raised here."""
        self.stack_trace = ""
        self.failure: failure_pb2.Failure | None = None
        """The Failure this error was read from; None for an error raised here."""


class ApplicationError(FailureError):
    """Raised by a block to fail its attempt with a typed error. `details` travel with it
    (encoded by the worker's converter); `non_retryable` stops retries whatever the block's
    retry policy says. Read back from a Failure (`from_failure`), it is a worker's error."""

    def __init__(
        self,
        message: str,
        *details: Any,
        type: str = "ApplicationError",
        non_retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.details = details
        self.type = type
        self.non_retryable = non_retryable


class BlockFailedError(FailureError):
    """A block failed for good (retries exhausted, non-retryable, timed out, or a system
    block's error): where it happened. Its `__cause__` says why. A system block sets only
    `block_id`."""

    def __init__(
        self,
        message: str,
        *,
        block_id: str,
        block_type: str = "",
        attempt: int = 0,
        scheduled_event_id: int = 0,
        started_event_id: int = 0,
        identity: str = "",
        retry_state: str = "",
    ) -> None:
        super().__init__(message)
        self.block_id = block_id
        self.block_type = block_type
        self.attempt = attempt
        self.scheduled_event_id = scheduled_event_id
        self.started_event_id = started_event_id
        self.identity = identity
        """The worker that ran the last attempt."""
        self.retry_state = retry_state
        """Why no further attempt was made, a RetryState name: "MAXIMUM_ATTEMPTS_REACHED"."""


class TimeoutFailureError(FailureError):
    """A block attempt (or the block) timed out; `timeout_type` is a TimeoutType name:
    "START_TO_CLOSE", "HEARTBEAT"..."""

    def __init__(
        self, message: str, *, timeout_type: str, last_heartbeat_details: tuple[Any, ...] = ()
    ) -> None:
        super().__init__(message)
        self.timeout_type = timeout_type
        self.last_heartbeat_details = last_heartbeat_details


class ServerFailureError(FailureError):
    """An engine-side error: what only fails at run time, such as an expression that failed
    on the run's data (`type` "ExpressionError") or a result that breaks the output schema
    ("OutputSchemaViolation")."""

    def __init__(self, message: str, *, type: str = "", non_retryable: bool = True) -> None:
        super().__init__(message)
        self.type = type
        self.non_retryable = non_retryable


class CanceledFailureError(FailureError):
    def __init__(self, message: str, *, details: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.details = details


def _decoded(converter: PayloadConverter, payloads: common_pb2.Payloads) -> tuple[Any, ...]:
    """The values of `payloads`; one the converter cannot read stays a Payload."""
    values: list[Any] = []
    for payload in payloads.payloads:
        try:
            values.append(converter.from_payload(payload))
        except ConversionError:
            values.append(payload)
    return tuple(values)


def _application(failure: failure_pb2.Failure, converter: PayloadConverter) -> FailureError:
    info = failure.application_failure_info
    return ApplicationError(
        failure.message,
        *_decoded(converter, info.details),
        type=info.type,
        non_retryable=info.non_retryable,
    )


def _block(failure: failure_pb2.Failure, converter: PayloadConverter) -> FailureError:
    info = failure.block_failure_info
    return BlockFailedError(
        failure.message,
        block_id=info.block_id,
        block_type=info.block_type,
        attempt=info.attempt,
        scheduled_event_id=info.scheduled_event_id,
        started_event_id=info.started_event_id,
        identity=info.identity,
        retry_state=common_pb2.RetryState.Name(info.retry_state).removeprefix("RETRY_STATE_"),
    )


def _timeout(failure: failure_pb2.Failure, converter: PayloadConverter) -> FailureError:
    info = failure.timeout_failure_info
    return TimeoutFailureError(
        failure.message,
        timeout_type=common_pb2.TimeoutType.Name(info.timeout_type).removeprefix("TIMEOUT_TYPE_"),
        last_heartbeat_details=_decoded(converter, info.last_heartbeat_details),
    )


def _server(failure: failure_pb2.Failure, converter: PayloadConverter) -> FailureError:
    info = failure.server_failure_info
    return ServerFailureError(failure.message, type=info.type, non_retryable=info.non_retryable)


def _canceled(failure: failure_pb2.Failure, converter: PayloadConverter) -> FailureError:
    details = _decoded(converter, failure.canceled_failure_info.details)
    return CanceledFailureError(failure.message, details=details)


_READERS: dict[str, Callable[[failure_pb2.Failure, PayloadConverter], FailureError]] = {
    "application_failure_info": _application,
    "block_failure_info": _block,
    "timeout_failure_info": _timeout,
    "server_failure_info": _server,
    "canceled_failure_info": _canceled,
}
"""By `Failure.failure_info`; any other kind is a plain FailureError."""


def from_failure(
    failure: failure_pb2.Failure, converter: PayloadConverter | None = None
) -> FailureError:
    """The error a Failure stands for, with its cause chain as `__cause__`; details are
    decoded with `converter` (the default: JSON, bytes and None)."""
    converter = converter or DefaultConverter()
    kind = failure.WhichOneof("failure_info")
    read = _READERS.get(kind) if kind else None
    error = read(failure, converter) if read else FailureError(failure.message)
    error.source, error.stack_trace, error.failure = failure.source, failure.stack_trace, failure
    if failure.HasField("cause"):
        error.__cause__ = from_failure(failure.cause, converter)
    return error


class RunFailedError(TideflowError):
    """A run ended without completing (failed, canceled, terminated, timed out). For a
    failed run, `failure` is RUN_FAILED's failure and `__cause__` reads it (`from_failure`):
    for a block's failure, a BlockFailedError whose cause is what the block raised."""

    def __init__(
        self,
        message: str,
        *,
        status: str,
        failure_type: str = "",
        failure: failure_pb2.Failure | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.failure_type = failure_type
        """The first application error type along the failure's cause chain."""
        self.failure = failure
