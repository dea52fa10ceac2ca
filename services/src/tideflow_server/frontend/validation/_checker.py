"""What every validator shares: one `_Checker` collecting a request's problems, and the rules
for the fields many requests carry (names, ids, payloads, durations, pages)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Final, cast

from google.protobuf import descriptor, duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from tideflow.api.v1 import (
    common_pb2,
    failure_pb2,
    namespace_pb2,
)
from tideflow_server.frontend.limits import RequestLimits
from tideflow_server.history.payloads import PayloadError, read_payload
from tideflow_server.rpc.errors import FieldViolation, InvalidArgument

# google.protobuf.Duration and Timestamp ranges, from their .proto documentation.
_MAX_DURATION_SECONDS: Final = 315_576_000_000
_MAX_NANOS: Final = 999_999_999
_MIN_TIMESTAMP_SECONDS: Final = -62_135_596_800  # 0001-01-01T00:00:00Z
_MAX_TIMESTAMP_SECONDS: Final = 253_402_300_799  # 9999-12-31T23:59:59Z

_STICKY: Final = common_pb2.TaskQueueKind.TASK_QUEUE_KIND_STICKY
_TERMINATE_IF_RUNNING: Final = common_pb2.RunIdReusePolicy.RUN_ID_REUSE_POLICY_TERMINATE_IF_RUNNING
_SETTABLE_NAMESPACE_STATES: Final = (
    namespace_pb2.NamespaceState.NAMESPACE_STATE_REGISTERED,
    namespace_pb2.NamespaceState.NAMESPACE_STATE_DEPRECATED,
)


_FAILURE_DETAILS: Final = {
    "application_failure_info": "details",
    "timeout_failure_info": "last_heartbeat_details",
    "canceled_failure_info": "details",
}
"""The Payloads field of each Failure.failure_info that has one."""


def page_size_or_default(page_size: int, limits: RequestLimits) -> int:
    """The page size a validated request asks for: 0 means the server default."""
    return page_size or limits.default_page_size


def _quote(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


def _seconds_text(seconds: int, nanos: int) -> str:
    """A Duration as its JSON mapping writes it: "3s", "-0.5s", "1.000000001s"."""
    sign = "-" if seconds < 0 or nanos < 0 else ""
    seconds, nanos = abs(seconds), abs(nanos)
    if nanos == 0:
        return f"{sign}{seconds}s"
    return f"{sign}{seconds}.{nanos:09d}".rstrip("0") + "s"


def _timedelta_text(value: timedelta) -> str:
    micros = value // timedelta(microseconds=1)
    return _seconds_text(micros // 1_000_000, (micros % 1_000_000) * 1000)


def _enum_type(message: Message, name: str) -> descriptor.EnumDescriptor:
    enum_type = message.DESCRIPTOR.fields_by_name[name].enum_type
    if enum_type is None:  # pragma: no cover - a programming error
        raise TypeError(f"{message.DESCRIPTOR.full_name}.{name} is not an enum field")
    # The C (upb) descriptor has the same interface as the Python one.
    return cast("descriptor.EnumDescriptor", enum_type)


class _Checker:
    """Collects the violations of one request."""

    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits
        self.violations: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(field, description))

    def done(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations)

    # Text.

    def _length(self, value: str, field: str, maximum: int) -> bool:
        if len(value) > maximum:
            self.add(field, f"is {len(value)} characters, over the limit of {maximum}")
            return False
        return True

    def _printable(self, value: str, field: str, *, required: bool, maximum: int) -> bool:
        if not value:
            if required:
                self.add(field, "required")
            return False
        if not self._length(value, field, maximum):
            return False
        if not value.isprintable():
            self.add(field, "must not contain control or other non-printable characters")
            return False
        return True

    def _pattern(
        self, value: str, field: str, *, pattern: str, maximum: int, required: bool, what: str
    ) -> None:
        if not value:
            if required:
                self.add(field, "required")
            return
        if self._length(value, field, maximum) and re.fullmatch(pattern, value) is None:
            self.add(field, f"must match {pattern} ({what})")

    def text(self, value: str, field: str, maximum: int) -> None:
        """Free text (reasons, descriptions): only its length is bounded."""
        self._length(value, field, maximum)

    # Identifiers.

    def namespace(self, value: str, field: str = "namespace") -> None:
        self._pattern(
            value,
            field,
            pattern=self.limits.namespace_pattern,
            maximum=self.limits.max_namespace_length,
            required=True,
            what="lowercase letters, digits, '.', '_' and '-', starting with a letter or digit",
        )

    def run_id(self, value: str, field: str, *, required: bool = True) -> None:
        self._printable(value, field, required=required, maximum=self.limits.max_run_id_length)

    def request_id(self, value: str, field: str = "request_id") -> None:
        self._printable(value, field, required=False, maximum=self.limits.max_request_id_length)

    def identity(self, value: str, field: str = "identity") -> None:
        self._printable(value, field, required=False, maximum=self.limits.max_identity_length)

    def signal_name(self, value: str, field: str = "signal_name") -> None:
        self._printable(value, field, required=True, maximum=self.limits.max_signal_name_length)

    def event_type(self, value: str, field: str = "event_type") -> None:
        self._printable(value, field, required=True, maximum=self.limits.max_event_type_length)

    def correlation_key(self, value: str, field: str = "correlation_key") -> None:
        self._printable(
            value, field, required=False, maximum=self.limits.max_correlation_key_length
        )

    def flow_name(self, value: str, field: str, *, required: bool) -> None:
        self._pattern(
            value,
            field,
            pattern=self.limits.flow_name_pattern,
            maximum=self.limits.max_flow_name_length,
            required=required,
            what="letters, digits, '_', '.' and '-', starting with a letter",
        )

    def execution_id(self, value: str, field: str) -> None:
        if not value:
            return  # the current execution
        try:
            canonical = str(uuid.UUID(value))
        except ValueError:
            canonical = ""
        if canonical != value:
            self.add(field, "must be a UUID in canonical form (8-4-4-4-12 lowercase hex digits)")

    def flow_ref(self, ref: common_pb2.FlowRef, field: str = "flow") -> None:
        # version 0 means the latest; every uint32 is a valid version.
        self.flow_name(ref.name, f"{field}.name", required=True)

    def run_ref(self, ref: common_pb2.RunRef, field: str = "run") -> None:
        self.run_id(ref.run_id, f"{field}.run_id")
        self.execution_id(ref.execution_id, f"{field}.execution_id")

    def task_queue(
        self, queue: common_pb2.TaskQueue, field: str = "task_queue", *, allow_sticky: bool
    ) -> None:
        self._pattern(
            queue.name,
            f"{field}.name",
            pattern=self.limits.task_queue_pattern,
            maximum=self.limits.max_task_queue_name_length,
            required=True,
            what="letters, digits, '.', '_', ':', '/' and '-', starting with a letter or digit",
        )
        if self.enum(queue, "kind", f"{field}.kind", allow_unspecified=True) and (
            queue.kind == _STICKY and not allow_sticky
        ):
            self.add(
                f"{field}.kind",
                "a run's task queue must be a normal queue; sticky queues belong to one worker",
            )

    def task_token(self, token: bytes, field: str = "task_token") -> None:
        if not token:
            self.add(field, "required: echo the task_token of the polled task")
        elif len(token) > self.limits.max_task_token_bytes:
            self.add(
                field,
                f"is {len(token)} bytes, over the limit of {self.limits.max_task_token_bytes} "
                "bytes; task tokens come from PollBlockTask unchanged",
            )

    # Enums.

    def _enum_value(
        self,
        enum_type: descriptor.EnumDescriptor,
        value: int,
        field: str,
        *,
        allow_unspecified: bool,
    ) -> bool:
        known = enum_type.values_by_number
        if value not in known:
            self.add(field, f"{value} is not a {enum_type.name} value")
            return False
        if value == 0 and not allow_unspecified:
            names = ", ".join(v.name for v in enum_type.values if v.number != 0)
            self.add(field, f"must be set to one of {names}")
            return False
        return True

    def enum(self, message: Message, name: str, field: str, *, allow_unspecified: bool) -> bool:
        """Checks the enum field `name` of `message`; True when its value is usable."""
        value: int = getattr(message, name)
        return self._enum_value(
            _enum_type(message, name), value, field, allow_unspecified=allow_unspecified
        )

    def enums(self, message: Message, name: str, field: str, *, allow_unspecified: bool) -> None:
        """Checks each value of the repeated enum field `name` of `message`."""
        enum_type = _enum_type(message, name)
        values: Iterable[int] = getattr(message, name)
        for i, value in enumerate(values):
            self._enum_value(enum_type, value, f"{field}[{i}]", allow_unspecified=allow_unspecified)

    # Durations and timestamps.

    def duration(
        self, value: duration_pb2.Duration, field: str, *, maximum: timedelta | None
    ) -> None:
        seconds, nanos = value.seconds, value.nanos
        if (
            abs(seconds) > _MAX_DURATION_SECONDS
            or abs(nanos) > _MAX_NANOS
            or (seconds > 0 > nanos)
            or (seconds < 0 < nanos)
        ):
            self.add(
                field,
                f"is not a valid duration (seconds={seconds}, nanos={nanos}): seconds within "
                f"±{_MAX_DURATION_SECONDS}, nanos within ±{_MAX_NANOS} and of the same sign",
            )
            return
        if seconds < 0 or nanos < 0:
            self.add(field, f"is {_seconds_text(seconds, nanos)}, must not be negative")
            return
        if maximum is not None and value.ToTimedelta() > maximum:
            self.add(
                field,
                f"is {_seconds_text(seconds, nanos)}, over the limit of {_timedelta_text(maximum)}",
            )

    def timestamp(self, value: timestamp_pb2.Timestamp, field: str) -> bool:
        if not (
            _MIN_TIMESTAMP_SECONDS <= value.seconds <= _MAX_TIMESTAMP_SECONDS
            and 0 <= value.nanos <= _MAX_NANOS
        ):
            self.add(
                field,
                f"is not a valid timestamp (seconds={value.seconds}, nanos={value.nanos}): "
                "between 0001-01-01 and 9999-12-31 UTC, nanos within 0..999999999",
            )
            return False
        return True

    # Pages.

    def page(
        self,
        page_size: int,
        next_page_token: bytes,
        *,
        size_field: str = "page_size",
        token_field: str = "next_page_token",
    ) -> None:
        if page_size < 0:
            self.add(size_field, f"is {page_size}, must not be negative (0 = the default)")
        elif page_size > self.limits.max_page_size:
            self.add(size_field, f"is {page_size}, over the limit of {self.limits.max_page_size}")
        if len(next_page_token) > self.limits.max_page_token_bytes:
            self.add(
                token_field,
                f"is {len(next_page_token)} bytes, over the limit of "
                f"{self.limits.max_page_token_bytes} bytes; pass the token a previous page "
                "returned, unchanged",
            )

    # Payloads (the rules are history/payloads.py's, which the engine applies too).

    def _payload(self, payload: common_pb2.Payload, field: str, *, engine_reads: bool) -> None:
        depth = self.limits.max_json_depth if engine_reads else None
        try:
            read_payload(payload, engine_reads=engine_reads, max_depth=depth)
        except PayloadError as e:
            self.add(f"{field}.{e.part}", e.description)

    def _each_payload(self, value: common_pb2.Payloads, field: str, *, engine_reads: bool) -> None:
        for i, payload in enumerate(value.payloads):
            self._payload(payload, f"{field}.payloads[{i}]", engine_reads=engine_reads)

    def size(self, message: Message, field: str, maximum: int) -> bool:
        size = message.ByteSize()
        if size > maximum:
            self.add(field, f"is {size} bytes, over the limit of {maximum} bytes")
            return False
        return True

    def payloads(self, value: common_pb2.Payloads, field: str) -> None:
        """Payloads the engine only stores and hands on (details): any well-formed encoding."""
        # Decoding waits for the size check: an oversized request is refused either way.
        if self.size(value, field, self.limits.max_payload_bytes):
            self._each_payload(value, field, engine_reads=False)

    def json_payloads(self, value: common_pb2.Payloads, field: str) -> None:
        """Payloads the engine reads (inputs, results): one JSON value at most."""
        if len(value.payloads) > 1:
            self.add(
                f"{field}.payloads",
                f"has {len(value.payloads)} payloads; the engine reads one JSON value here: "
                "send one payload (json/plain, or binary/null for no value), or none for null",
            )
        if self.size(value, field, self.limits.max_payload_bytes):
            self._each_payload(value, field, engine_reads=True)

    def memo(self, value: common_pb2.Memo, field: str = "memo") -> None:
        for key in sorted(value.fields):
            path = f"{field}.fields[{_quote(key)}]"
            if not key:
                self.add(path, "key must not be empty")
            elif len(key) > self.limits.max_map_key_length:
                self.add(
                    path,
                    f"key is {len(key)} characters, over the limit of "
                    f"{self.limits.max_map_key_length}",
                )
            self._payload(value.fields[key], path, engine_reads=False)
        self.size(value, field, self.limits.max_memo_bytes)

    def failure(self, value: failure_pb2.Failure, field: str, *, present: bool) -> None:
        if not present:
            self.add(field, "required: what went wrong")
            return
        if not self.size(value, field, self.limits.max_failure_bytes):
            return
        # The details of each failure in the cause chain. The chain is bounded: each cause is
        # one more level of nesting wherever the engine keeps the failure.
        failure, path, causes = value, field, 0
        while True:
            info = failure.WhichOneof("failure_info")
            if info is not None and info in _FAILURE_DETAILS:
                details = _FAILURE_DETAILS[info]
                given = getattr(getattr(failure, info), details)
                self._each_payload(given, f"{path}.{info}.{details}", engine_reads=False)
            if not failure.HasField("cause"):
                return
            causes += 1
            failure, path = failure.cause, f"{path}.cause"
            if causes > self.limits.max_failure_causes:
                self.add(
                    path,
                    f"is cause number {causes} of the chain, over the limit of "
                    f"{self.limits.max_failure_causes} causes under a failure",
                )
                return

    # Namespaces.

    def description(self, value: str, field: str) -> None:
        self.text(value, field, self.limits.max_description_length)

    def owner_email(self, value: str, field: str) -> None:
        if not value or not self._length(value, field, self.limits.max_email_length):
            return
        local, at, domain = value.partition("@")
        if not (at and local and domain and "@" not in domain) or any(
            c.isspace() or not c.isprintable() for c in value
        ):
            self.add(field, "must be an email address, name@domain")

    def namespace_data(self, data: Iterable[tuple[str, str]], field: str) -> None:
        total = 0
        for key, value in sorted(data):
            total += len(key.encode()) + len(value.encode())
            path = f"{field}[{_quote(key)}]"
            if not key:
                self.add(path, "key must not be empty")
            elif len(key) > self.limits.max_map_key_length:
                self.add(
                    path,
                    f"key is {len(key)} characters, over the limit of "
                    f"{self.limits.max_map_key_length}",
                )
        if total > self.limits.max_namespace_data_bytes:
            self.add(
                field,
                f"is {total} bytes, over the limit of {self.limits.max_namespace_data_bytes} bytes",
            )

    def retention(self, value: duration_pb2.Duration, field: str) -> None:
        self.duration(value, field, maximum=self.limits.max_retention)

    def requests_per_second(self, value: float, field: str) -> None:
        low, high = self.limits.min_namespace_rps, self.limits.max_namespace_rps
        if value != 0 and not low <= value <= high:  # NaN fails the range too
            self.add(field, f"is {value:g}, must be 0 (the server default) or {low:g} to {high:g}")

    def burst(self, value: int, field: str) -> None:
        if value > self.limits.max_namespace_burst:
            self.add(
                field,
                f"is {value}, over the limit of {self.limits.max_namespace_burst} "
                "(0 = the server default)",
            )

    def namespace_config(self, config: namespace_pb2.NamespaceConfig, field: str) -> None:
        # NamespaceLimits are unsigned: every other value is valid, 0 = the server's limit,
        # and one above it still leaves the server's.
        self.retention(config.retention, f"{field}.retention")
        self.requests_per_second(
            config.rate_limits.requests_per_second,
            f"{field}.rate_limits.requests_per_second",
        )
        self.burst(config.rate_limits.burst, f"{field}.rate_limits.burst")


# Namespaces.
