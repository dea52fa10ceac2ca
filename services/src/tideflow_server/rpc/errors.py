"""Typed service errors and their gRPC statuses.

Every role raises these; one place turns them into a gRPC status carrying `google.rpc`
details (`BadRequest` field violations for INVALID_ARGUMENT, `ErrorInfo` with a machine
readable reason otherwise), and internal clients turn a status back into the same type, so a
matching host can tell "task already started" from "history unavailable" without parsing
messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar, Final, NoReturn, cast

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

# One type on both sides: the SDK's blueprint builder reports the violations registration does.
from tideflow.api.v1 import flow_service_pb2
from tideflow.errors import FieldViolation as FieldViolation  # noqa: PLC0414 (re-export)
from tideflow_server.internal.v1 import exchange_pb2

DOMAIN = "tideflow.io"
_DETAILS_KEY = "grpc-status-details-bin"
RETRY_AFTER_MS = "retry_after_ms"
"""ErrorInfo metadata key of a ResourceExhausted's wait, mirrored by its RetryInfo."""
Detail = error_details_pb2.ErrorInfo | error_details_pb2.BadRequest | error_details_pb2.RetryInfo

# A status travels in trailing metadata (the message percent-encoded, the details base64), and
# clients refuse metadata over 8 KiB by default: an error that echoes unbounded input would
# reach the caller as RESOURCE_EXHAUSTED instead of itself. These bounds keep every status
# well under that, whatever the request held.
MAX_MESSAGE_BYTES: Final = 1024
"""A status message, UTF-8 bytes (up to three times as many once percent-encoded)."""
MAX_VIOLATION_FIELD_BYTES: Final = 1024
"""Room for a map key at its length limit (255 characters) inside its path."""
MAX_VIOLATION_DESCRIPTION_BYTES: Final = 1024
MAX_VIOLATIONS_BYTES: Final = 3 * 1024
"""Field paths and descriptions of one status's violations together; past it the rest are
counted in one last violation."""


def clip(text: str, max_bytes: int) -> str:
    """`text`, cut to at most `max_bytes` UTF-8 bytes, saying how long it was."""
    encoded = text.encode("utf-8", "surrogatepass")  # a lone surrogate still has a size
    if len(encoded) <= max_bytes:
        return text
    note = f"...({len(text)} characters)"
    kept = encoded[: max(0, max_bytes - len(note))].decode("utf-8", "ignore")
    return kept + note


def _bounded(violations: Sequence[FieldViolation]) -> list[FieldViolation]:
    kept: list[FieldViolation] = []
    total = 0
    for i, v in enumerate(violations):
        clipped = FieldViolation(
            clip(v.field, MAX_VIOLATION_FIELD_BYTES),
            clip(v.description, MAX_VIOLATION_DESCRIPTION_BYTES),
        )
        total += len(f"{clipped.field}{clipped.description}".encode("utf-8", "surrogatepass"))
        if total > MAX_VIOLATIONS_BYTES:
            kept.append(FieldViolation("", f"and {len(violations) - i} more violations"))
            break
        kept.append(clipped)
    return kept


class ServiceError(Exception):
    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_reason: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        message = clip(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[Detail]:
        return [
            error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        ]

    def to_status(self) -> status_pb2.Status:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in self.details():
            status.details.add().Pack(detail)
        return status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: Sequence[FieldViolation] | str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(violations, str):
            violations = [FieldViolation("", violations)]
        self.violations = _bounded(violations)
        summary = "; ".join(
            f"{v.field}: {v.description}" if v.field else v.description for v in self.violations
        )
        super().__init__(summary, reason=reason, metadata=metadata)

    def details(self) -> list[Detail]:
        bad_request = error_details_pb2.BadRequest()
        for v in self.violations:
            bad_request.field_violations.add(field=v.field, description=v.description)
        return [bad_request, *super().details()]


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(ServiceError):
    """With `retry_after_ms` (a rate limit's wait), also in the ErrorInfo metadata as before,
    the status carries the standard `google.rpc.RetryInfo` too, so any gRPC client library
    can honour it."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        if retry_after_ms is not None:
            metadata = {**(metadata or {}), RETRY_AFTER_MS: str(retry_after_ms)}
        super().__init__(message, reason=reason, metadata=metadata)

    @property
    def retry_after_ms(self) -> int | None:
        given = self.metadata.get(RETRY_AFTER_MS)
        return int(given) if given is not None and given.isdigit() else None

    def details(self) -> list[Detail]:
        details = super().details()
        if (retry_after_ms := self.retry_after_ms) is not None:
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromMilliseconds(retry_after_ms)
            details.append(retry)
        return details


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unavailable(ServiceError):
    """Try again (another host may own the shard now, or a database is away)."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unimplemented(ServiceError):
    """The method is not served here (a generated servicer's default, an older peer)."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class Internal(ServiceError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


_BY_CODE: dict[grpc.StatusCode, type[ServiceError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        Unavailable,
        DeadlineExceeded,
        Unimplemented,
        Internal,
    )
}


async def abort(context: grpc.aio.ServicerContext[object, object], error: ServiceError) -> NoReturn:
    """End the call with `error`'s status and details."""
    status = rpc_status.to_status(error.to_status())
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def from_rpc_error(error: grpc.aio.AioRpcError) -> ServiceError:
    """The typed error a peer's status stands for (reason and field violations kept)."""
    code = error.code()
    message = error.details() or code.name
    reason: str | None = None
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    # Iterating aio metadata yields plain (key, value) tuples, whatever the stubs say.
    trailers = cast("Iterable[tuple[str, str | bytes]]", error.trailing_metadata() or ())
    for key, value in trailers:
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(info):
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Unpack(bad):
                violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return _typed(code, message, reason, metadata, violations)


def _typed(
    code: grpc.StatusCode,
    message: str,
    reason: str | None,
    metadata: Mapping[str, str],
    violations: Sequence[FieldViolation],
) -> ServiceError:
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(violations or message, reason=reason, metadata=metadata)
    cls = _BY_CODE.get(code)
    if cls is None:
        transient = code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED)
        cls = Unavailable if transient else Internal
    return cls(message, reason=reason, metadata=metadata)


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def to_exchange_status(error: ServiceError) -> exchange_pb2.ExchangeStatus:
    """`error` as one answer on a stream of exchanges: what its unary status would carry."""
    status = exchange_pb2.ExchangeStatus(
        code=error.code.value[0], message=error.message, reason=error.reason
    )
    status.metadata.update(error.metadata)
    if isinstance(error, InvalidArgument):
        for v in error.violations:
            status.violations.add(field=v.field, description=v.description)
    return status


def from_exchange_status(status: exchange_pb2.ExchangeStatus) -> ServiceError:
    """The typed error an answer on a stream of exchanges stands for (see from_rpc_error)."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return _typed(
        code,
        status.message or code.name,
        status.reason or None,
        dict(status.metadata),
        [FieldViolation(v.field, v.description) for v in status.violations],
    )


def from_item_status(status: flow_service_pb2.ItemStatus) -> ServiceError:
    """The typed error a batch item's status stands for (see to_item_status)."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return _typed(
        code,
        status.message or code.name,
        status.reason or None,
        dict(status.metadata),
        [FieldViolation(v.field, v.description) for v in status.violations],
    )


def to_item_status(error: ServiceError) -> flow_service_pb2.ItemStatus:
    """How one item of a batch call ended, as `error` would have ended a single call."""
    status = flow_service_pb2.ItemStatus(
        code=error.code.value[0],
        message=error.message,
        reason=error.reason,
        metadata=error.metadata,
    )
    if isinstance(error, InvalidArgument):
        for v in error.violations:
            status.violations.add(field=v.field, description=v.description)
    return status


assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == code_pb2.INVALID_ARGUMENT
