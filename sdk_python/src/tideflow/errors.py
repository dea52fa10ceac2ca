"""Errors the SDK raises: every server status becomes a typed exception with its details."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.rpc import error_details_pb2, status_pb2


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class TideflowError(Exception):
    """Base of every SDK error."""


class RPCError(TideflowError):
    """The server answered with an error status. `reason` and `metadata` come from its
    google.rpc.ErrorInfo, `violations` from its BadRequest."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        violations: list[FieldViolation] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.violations = list(violations or [])

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
    for key, value in cast(Any, error.trailing_metadata() or ()):
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
            if detail.Unpack(info):
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Unpack(bad):
                violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
    cls = _BY_CODE.get(error.code(), RPCError)
    return cls(
        error.details() or error.code().name,
        code=error.code(),
        reason=reason,
        metadata=metadata,
        violations=violations,
    )


class ApplicationError(TideflowError):
    """Raised by a block to fail its attempt with a typed error. `non_retryable` stops
    retries whatever the block's retry policy says."""

    def __init__(
        self, message: str, *, type: str = "ApplicationError", non_retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type
        self.non_retryable = non_retryable


class RunFailedError(TideflowError):
    """A run ended without completing (failed, canceled, terminated, timed out)."""

    def __init__(self, message: str, *, status: str, failure_type: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.failure_type = failure_type
