"""Validation of every public FlowService request, before anything is read or written.

Each `validate_<rpc>` collects every problem it finds and raises one `InvalidArgument` naming
them all, so a client fixes its request in one round trip. Field paths use proto field names,
with indices for repeated fields and quoted keys for maps: `run.run_id`, `flow.name`,
`input.payloads[0].metadata`, `memo.fields["k"]`, `statuses[1]`.

The frontend checks shape and size, and that every payload holds what its encoding says (the
rules, shared with the engine, are history/payloads.py's; what the engine reads must be one
JSON value). What needs state (does the flow exist, is the run open) or interpretation
(blueprint contents, the input against the flow's JSON Schema) is the engine's to check.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Final, TypeVar, cast

from google.protobuf import descriptor, duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from tideflow.api.v1 import (
    common_pb2,
    failure_pb2,
    flow_service_pb2,
    namespace_pb2,
)
from tideflow_server import queue_config
from tideflow_server.frontend.limits import RequestLimits
from tideflow_server.history.payloads import PayloadError, read_payload
from tideflow_server.rpc.errors import FieldViolation, InvalidArgument

__all__ = [
    "page_size_or_default",
    "validate",
    "validate_cancel_run",
    "validate_describe_flow",
    "validate_describe_namespace",
    "validate_describe_run",
    "validate_describe_task_queue",
    "validate_get_run_history",
    "validate_list_flows",
    "validate_list_namespaces",
    "validate_list_runs",
    "validate_poll_block_task",
    "validate_publish_event",
    "validate_record_block_heartbeat",
    "validate_register_flow",
    "validate_register_namespace",
    "validate_respond_block_canceled",
    "validate_respond_block_completed",
    "validate_respond_block_failed",
    "validate_signal_run",
    "validate_signal_with_start_run",
    "validate_start_run",
    "validate_terminate_run",
    "validate_update_namespace",
    "validated_request_types",
]

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


def validate_register_namespace(
    req: flow_service_pb2.RegisterNamespaceRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.description(req.description, "description")
    check.owner_email(req.owner_email, "owner_email")
    check.namespace_data(req.data.items(), "data")
    check.namespace_config(req.config, "config")
    check.done()


def validate_describe_namespace(
    req: flow_service_pb2.DescribeNamespaceRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.done()


def validate_list_namespaces(
    req: flow_service_pb2.ListNamespacesRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.page(req.page_size, req.next_page_token)
    check.done()


def _message_paths(message_type: descriptor.Descriptor, prefix: str) -> Iterable[str]:
    """`prefix` and every field path below it, down through Tideflow's own messages."""
    yield prefix
    for field in message_type.fields:
        path = f"{prefix}.{field.name}"
        sub = field.message_type
        if sub is not None and sub.full_name.startswith("tideflow."):
            yield from _message_paths(sub, path)
        else:
            yield path


_UPDATABLE_PATHS: Final = frozenset(
    (
        "info.description",
        "info.owner_email",
        "info.data",
        "info.state",
        *_message_paths(namespace_pb2.NamespaceConfig.DESCRIPTOR, "config"),
    )
)
_FIXED_PATHS: Final = frozenset(("info", "info.name", "info.id"))


def validate_update_namespace(
    req: flow_service_pb2.UpdateNamespaceRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    paths = list(req.update_mask.paths)
    accepted = [p for p in paths if p in _UPDATABLE_PATHS]
    if not paths:
        check.add("update_mask", 'required: name the fields to change, e.g. "info.description"')
    for i, path in enumerate(paths):
        if path in _FIXED_PATHS:
            check.add(
                f"update_mask.paths[{i}]",
                f'"{path}" cannot be updated: the namespace name and id never change; name the '
                'fields to change, e.g. "info.description"',
            )
        elif path not in _UPDATABLE_PATHS:
            check.add(
                f"update_mask.paths[{i}]",
                f'"{path}" is not an updatable field; one of {", ".join(sorted(_UPDATABLE_PATHS))}',
            )

    def masked(target: str) -> bool:
        # A path covers itself and every field below it ("config" covers "config.retention").
        return any(p == target or target.startswith(p + ".") for p in accepted)

    # Only the masked values are applied, so only they are checked.
    if masked("info.description"):
        check.description(req.info.description, "info.description")
    if masked("info.owner_email"):
        check.owner_email(req.info.owner_email, "info.owner_email")
    if masked("info.data"):
        check.namespace_data(req.info.data.items(), "info.data")
    if masked("info.state") and req.info.state not in _SETTABLE_NAMESPACE_STATES:
        check.add(
            "info.state",
            "must be NAMESPACE_STATE_REGISTERED or NAMESPACE_STATE_DEPRECATED",
        )
    if masked("config.retention"):
        check.retention(req.config.retention, "config.retention")
    if masked("config.rate_limits.requests_per_second"):
        check.requests_per_second(
            req.config.rate_limits.requests_per_second,
            "config.rate_limits.requests_per_second",
        )
    if masked("config.rate_limits.burst"):
        check.burst(req.config.rate_limits.burst, "config.rate_limits.burst")
    check.done()


# Flows.


def validate_register_flow(
    req: flow_service_pb2.RegisterFlowRequest, limits: RequestLimits
) -> None:
    """The envelope only: the engine validates the blueprint's contents and reports each error
    with its path."""
    check = _Checker(limits)
    check.namespace(req.namespace)
    if req.WhichOneof("definition") != "blueprint":
        check.add("blueprint", "required: the blueprint to register")
    else:
        # Every uint32 is a valid version; 0 asks the engine for the next one.
        check.flow_name(req.blueprint.name, "blueprint.name", required=True)
        check.size(req.blueprint, "blueprint", limits.max_blueprint_bytes)
    check.identity(req.identity)
    check.done()


def validate_describe_flow(
    req: flow_service_pb2.DescribeFlowRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.flow_name(req.name, "name", required=True)
    check.done()


def validate_list_flows(req: flow_service_pb2.ListFlowsRequest, limits: RequestLimits) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.page(req.page_size, req.next_page_token)
    check.flow_name(req.name, "name", required=False)
    check.done()


# Runs.


def _check_start(
    check: _Checker,
    req: flow_service_pb2.StartRunRequest | flow_service_pb2.SignalWithStartRunRequest,
) -> None:
    check.namespace(req.namespace)
    check.run_id(req.run_id, "run_id")
    check.flow_ref(req.flow)
    # An empty task_queue message overrides nothing.
    if req.HasField("task_queue") and req.task_queue.ByteSize() > 0:
        check.task_queue(req.task_queue, allow_sticky=False)
    check.json_payloads(req.input, "input")
    # 0 means no override, like an unset run_timeout.
    check.duration(req.run_timeout, "run_timeout", maximum=check.limits.max_run_timeout)
    check.identity(req.identity)
    check.request_id(req.request_id)
    check.enum(req, "run_id_reuse_policy", "run_id_reuse_policy", allow_unspecified=True)
    check.memo(req.memo)


def validate_start_run(req: flow_service_pb2.StartRunRequest, limits: RequestLimits) -> None:
    check = _Checker(limits)
    _check_start(check, req)
    check.done()


def validate_signal_run(req: flow_service_pb2.SignalRunRequest, limits: RequestLimits) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.run_ref(req.run)
    check.signal_name(req.signal_name)
    check.json_payloads(req.input, "input")
    check.identity(req.identity)
    check.request_id(req.request_id)
    check.done()


def validate_publish_event(
    req: flow_service_pb2.PublishEventRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.event_type(req.event_type)
    check.correlation_key(req.correlation_key)
    check.json_payloads(req.payload, "payload")
    check.request_id(req.event_id, "event_id")
    check.identity(req.identity)
    check.done()


def validate_signal_with_start_run(
    req: flow_service_pb2.SignalWithStartRunRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    _check_start(check, req)
    if req.run_id_reuse_policy == _TERMINATE_IF_RUNNING:
        check.add(
            "run_id_reuse_policy",
            "RUN_ID_REUSE_POLICY_TERMINATE_IF_RUNNING cannot be used here: SignalWithStartRun "
            "signals an open execution rather than replacing it",
        )
    check.signal_name(req.signal_name)
    check.json_payloads(req.signal_input, "signal_input")
    check.done()


def validate_cancel_run(req: flow_service_pb2.CancelRunRequest, limits: RequestLimits) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.run_ref(req.run)
    check.text(req.reason, "reason", limits.max_reason_length)
    check.identity(req.identity)
    check.request_id(req.request_id)
    check.done()


def validate_terminate_run(
    req: flow_service_pb2.TerminateRunRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.run_ref(req.run)
    check.text(req.reason, "reason", limits.max_reason_length)
    check.payloads(req.details, "details")
    check.identity(req.identity)
    check.done()


def validate_describe_run(req: flow_service_pb2.DescribeRunRequest, limits: RequestLimits) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.run_ref(req.run)
    check.done()


def validate_get_run_history(
    req: flow_service_pb2.GetRunHistoryRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.run_ref(req.run)
    check.page(req.page_size, req.next_page_token)
    check.enum(
        req, "history_event_filter_type", "history_event_filter_type", allow_unspecified=True
    )
    check.done()


def validate_list_runs(req: flow_service_pb2.ListRunsRequest, limits: RequestLimits) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.page(req.page_size, req.next_page_token)
    # An empty list means any status; UNSPECIFIED inside it matches nothing, so it is an error.
    check.enums(req, "statuses", "statuses", allow_unspecified=False)
    check.flow_name(req.flow_name, "flow_name", required=False)
    check.run_id(req.run_id, "run_id", required=False)
    has_min, has_max = req.HasField("start_time_min"), req.HasField("start_time_max")
    min_ok = has_min and check.timestamp(req.start_time_min, "start_time_min")
    max_ok = has_max and check.timestamp(req.start_time_max, "start_time_max")
    if min_ok and max_ok:
        low = (req.start_time_min.seconds, req.start_time_min.nanos)
        high = (req.start_time_max.seconds, req.start_time_max.nanos)
        if low > high:
            check.add(
                "start_time_max",
                f"{req.start_time_max.ToJsonString()} is before start_time_min "
                f"{req.start_time_min.ToJsonString()}",
            )
    check.done()


# Block tasks.


def validate_poll_block_task(
    req: flow_service_pb2.PollBlockTaskRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.task_queue(req.task_queue, allow_sticky=True)
    check.identity(req.identity)
    rate = req.max_tasks_per_second
    if not queue_config.rate_ok(rate):
        check.add(
            "max_tasks_per_second",
            f"is {rate}, must be 0 (no limit) or in [{queue_config.MIN_RATE_PER_SECOND:g}, "
            f"{queue_config.MAX_RATE_PER_SECOND:g}]",
        )
    if req.sticky_task_queue:
        if req.task_queue.kind == _STICKY:
            check.add("sticky_task_queue", "must be empty when polling a sticky queue itself")
        check.task_queue(
            common_pb2.TaskQueue(name=req.sticky_task_queue, kind=_STICKY),
            "sticky_task_queue",
            allow_sticky=True,
        )
    if len(req.warm_keys) > queue_config.MAX_WARM_KEYS:
        check.add(
            "warm_keys", f"has {len(req.warm_keys)} keys, at most {queue_config.MAX_WARM_KEYS}"
        )
    for i, key in enumerate(req.warm_keys):
        check.identity(key, f"warm_keys[{i}]")
    check.done()


MAX_EAGER_SLOTS = 100
"""Block tasks one completion may take by eager dispatch (a fan-out wider than this goes
through matching for the rest)."""


def validate_respond_block_completed(
    req: flow_service_pb2.RespondBlockCompletedRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.task_token(req.task_token)
    check.json_payloads(req.result, "result")
    check.identity(req.identity)
    if not 0 <= req.eager_slots <= MAX_EAGER_SLOTS:
        check.add("eager_slots", f"is {req.eager_slots}, must be between 0 and {MAX_EAGER_SLOTS}")
    if req.sticky_task_queue:
        check.task_queue(
            common_pb2.TaskQueue(name=req.sticky_task_queue, kind=_STICKY),
            "sticky_task_queue",
            allow_sticky=True,
        )
    check.done()


MAX_BATCH_COMPLETIONS = 100
"""Completions one RespondBlockCompletedBatch call may carry."""


def validate_respond_block_completed_batch(
    req: flow_service_pb2.RespondBlockCompletedBatchRequest, limits: RequestLimits
) -> None:
    """Every item as RespondBlockCompleted checks it, its fields named completions[i].…"""
    check = _Checker(limits)
    count = len(req.completions)
    if not 1 <= count <= MAX_BATCH_COMPLETIONS:
        check.add("completions", f"has {count} items, must have 1 to {MAX_BATCH_COMPLETIONS}")
    for i, item in enumerate(req.completions):
        try:
            validate_respond_block_completed(item, limits)
        except InvalidArgument as e:
            for v in e.violations:
                check.add(
                    f"completions[{i}].{v.field}" if v.field else f"completions[{i}]", v.description
                )
    check.done()


def validate_respond_block_failed(
    req: flow_service_pb2.RespondBlockFailedRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.task_token(req.task_token)
    check.failure(req.failure, "failure", present=req.HasField("failure"))
    check.payloads(req.last_heartbeat_details, "last_heartbeat_details")
    check.identity(req.identity)
    check.done()


def validate_respond_block_canceled(
    req: flow_service_pb2.RespondBlockCanceledRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.task_token(req.task_token)
    check.payloads(req.details, "details")
    check.identity(req.identity)
    check.done()


def validate_record_block_heartbeat(
    req: flow_service_pb2.RecordBlockHeartbeatRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.task_token(req.task_token)
    check.payloads(req.details, "details")
    check.identity(req.identity)
    check.done()


# Task queues.


def validate_describe_task_queue(
    req: flow_service_pb2.DescribeTaskQueueRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.task_queue(req.task_queue, allow_sticky=True)
    check.done()


def validate_update_task_queue_config(
    req: flow_service_pb2.UpdateTaskQueueConfigRequest, limits: RequestLimits
) -> None:
    check = _Checker(limits)
    check.namespace(req.namespace)
    check.task_queue(req.task_queue, allow_sticky=True)
    if req.task_queue.kind == _STICKY:
        check.add("task_queue.kind", "sticky queues belong to one worker and take no settings")
    check.identity(req.identity)
    for field, description in queue_config.check(req.config, req.update_mask.paths):
        check.add(field, description)
    check.done()


# One entry point for the handler, keyed by request type.

_M = TypeVar("_M", bound=Message)
_Validator = Callable[[Message, RequestLimits], None]
_VALIDATORS: dict[str, _Validator] = {}


def _register(request_type: type[_M], validator: Callable[[_M, RequestLimits], None]) -> None:
    def run(request: Message, limits: RequestLimits) -> None:
        if not isinstance(request, request_type):  # pragma: no cover - keyed by this type
            raise TypeError(f"expected {request_type.__name__}, got {type(request).__name__}")
        validator(request, limits)

    _VALIDATORS[request_type.DESCRIPTOR.full_name] = run


_register(flow_service_pb2.RegisterNamespaceRequest, validate_register_namespace)
_register(flow_service_pb2.DescribeNamespaceRequest, validate_describe_namespace)
_register(flow_service_pb2.ListNamespacesRequest, validate_list_namespaces)
_register(flow_service_pb2.UpdateNamespaceRequest, validate_update_namespace)
_register(flow_service_pb2.RegisterFlowRequest, validate_register_flow)
_register(flow_service_pb2.DescribeFlowRequest, validate_describe_flow)
_register(flow_service_pb2.ListFlowsRequest, validate_list_flows)
_register(flow_service_pb2.StartRunRequest, validate_start_run)
_register(flow_service_pb2.SignalRunRequest, validate_signal_run)
_register(flow_service_pb2.SignalWithStartRunRequest, validate_signal_with_start_run)
_register(flow_service_pb2.PublishEventRequest, validate_publish_event)
_register(flow_service_pb2.CancelRunRequest, validate_cancel_run)
_register(flow_service_pb2.TerminateRunRequest, validate_terminate_run)
_register(flow_service_pb2.DescribeRunRequest, validate_describe_run)
_register(flow_service_pb2.GetRunHistoryRequest, validate_get_run_history)
_register(flow_service_pb2.ListRunsRequest, validate_list_runs)
_register(flow_service_pb2.PollBlockTaskRequest, validate_poll_block_task)
_register(flow_service_pb2.RespondBlockCompletedRequest, validate_respond_block_completed)
_register(
    flow_service_pb2.RespondBlockCompletedBatchRequest, validate_respond_block_completed_batch
)
_register(flow_service_pb2.RespondBlockFailedRequest, validate_respond_block_failed)
_register(flow_service_pb2.RespondBlockCanceledRequest, validate_respond_block_canceled)
_register(flow_service_pb2.RecordBlockHeartbeatRequest, validate_record_block_heartbeat)
_register(flow_service_pb2.DescribeTaskQueueRequest, validate_describe_task_queue)
_register(flow_service_pb2.UpdateTaskQueueConfigRequest, validate_update_task_queue_config)


def validated_request_types() -> frozenset[str]:
    """Full proto names of the request messages `validate` knows."""
    return frozenset(_VALIDATORS)


def validate(request: Message, limits: RequestLimits) -> None:
    """Validates any public FlowService request; raises `InvalidArgument` naming every problem.
    A request type without a validator is a server bug (`LookupError`), never a silent pass."""
    name = request.DESCRIPTOR.full_name
    validator = _VALIDATORS.get(name)
    if validator is None:
        raise LookupError(f"no validator for {name}")
    validator(request, limits)
