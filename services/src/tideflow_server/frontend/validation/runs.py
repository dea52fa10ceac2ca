"""Run requests: start, signal, publish, cancel, terminate, describe, history, list."""

from __future__ import annotations

from tideflow.api.v1 import (
    flow_service_pb2,
)
from tideflow_server.frontend.limits import RequestLimits
from tideflow_server.frontend.validation._checker import (
    _TERMINATE_IF_RUNNING,
    _Checker,
)


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
