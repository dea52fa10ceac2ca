"""Run requests: start, signal, signal-with-start, cancel, terminate, describe, history, list."""

from __future__ import annotations

from datetime import timedelta

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from tests.unit.frontend._support import (
    EXECUTION_ID,
    LIMITS,
    description_of,
    fields_of,
    json_text,
    payload,
    payloads,
    with_fields,
)
from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2
from tideflow_server.frontend.limits import RequestLimits
from tideflow_server.frontend.validation import (
    validate_cancel_run,
    validate_describe_run,
    validate_get_run_history,
    validate_list_runs,
    validate_signal_run,
    validate_signal_with_start_run,
    validate_start_run,
    validate_terminate_run,
)

Policy = common_pb2.RunIdReusePolicy
Kind = common_pb2.TaskQueueKind
Status = common_pb2.RunStatus


def start_run(**overrides: object) -> flow_service_pb2.StartRunRequest:
    request = flow_service_pb2.StartRunRequest(
        namespace="docs",
        run_id="invoice-42",
        flow=common_pb2.FlowRef(name="ingest", version=3),
        task_queue=common_pb2.TaskQueue(name="gpu-ocr", kind=Kind.TASK_QUEUE_KIND_NORMAL),
        input=payloads(b'{"doc": "s3://bucket/a.pdf"}'),
        run_timeout=duration_pb2.Duration(seconds=3600),
        identity="client@host",
        request_id="8d7c1f6e",
        run_id_reuse_policy=Policy.RUN_ID_REUSE_POLICY_REJECT_DUPLICATE,
        memo=common_pb2.Memo(fields={"team": payload(b'"ml"')}),
    )
    return with_fields(request, overrides)


def signal_with_start(**overrides: object) -> flow_service_pb2.SignalWithStartRunRequest:
    request = flow_service_pb2.SignalWithStartRunRequest(
        namespace="docs",
        run_id="invoice-42",
        flow=common_pb2.FlowRef(name="ingest"),
        input=payloads(b"{}"),
        signal_name="approve",
        signal_input=payloads(b"true"),
    )
    return with_fields(request, overrides)


def run_ref(run_id: str = "invoice-42", execution_id: str = "") -> common_pb2.RunRef:
    return common_pb2.RunRef(run_id=run_id, execution_id=execution_id)


# StartRun.


def test_start_run_accepts_a_well_formed_request() -> None:
    validate_start_run(start_run(), LIMITS)


def test_start_run_accepts_the_minimal_request() -> None:
    validate_start_run(
        flow_service_pb2.StartRunRequest(
            namespace="docs", run_id="r", flow=common_pb2.FlowRef(name="ingest")
        ),
        LIMITS,
    )


def test_start_run_requires_namespace_run_id_and_flow_name() -> None:
    assert fields_of(validate_start_run, flow_service_pb2.StartRunRequest()) == [
        "namespace",
        "run_id",
        "flow.name",
    ]


def test_start_run_reports_every_problem_at_once() -> None:
    request = start_run(namespace="Docs!", run_id="bad\nid", identity="x" * 256)
    request.flow.name = "9lives"
    request.task_queue.name = "-queue"
    request.input.payloads.add(data=b"no encoding")
    request.run_timeout.seconds = -5
    request.run_id_reuse_policy = 99  # type: ignore[assignment]
    request.memo.fields[""].CopyFrom(payload())
    assert fields_of(validate_start_run, request) == [
        "namespace",
        "run_id",
        "flow.name",
        "task_queue.name",
        "input.payloads",
        "input.payloads[1].metadata",
        "run_timeout",
        "identity",
        "run_id_reuse_policy",
        'memo.fields[""]',
    ]


@pytest.mark.parametrize(
    ("namespace", "ok"),
    [
        ("docs", True),
        ("0team.prod_eu-1", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("Docs", False),
        ("-docs", False),
        ("docs\n", False),
        ("dócs", False),
    ],
)
def test_namespace_shape(namespace: str, ok: bool) -> None:
    request = start_run(namespace=namespace)
    if ok:
        validate_start_run(request, LIMITS)
    else:
        assert fields_of(validate_start_run, request) == ["namespace"]


@pytest.mark.parametrize(
    ("run_id", "ok"),
    [
        ("invoice 42 / 2024", True),
        ("facture-éé", True),
        ("r" * 255, True),
        ("r" * 256, False),
        ("tab\there", False),
        ("nul\x00", False),
        ("zero\u200bwidth", False),
    ],
)
def test_run_id_is_printable_and_bounded(run_id: str, ok: bool) -> None:
    request = start_run(run_id=run_id)
    if ok:
        validate_start_run(request, LIMITS)
    else:
        assert fields_of(validate_start_run, request) == ["run_id"]


def test_run_id_length_error_names_length_and_limit() -> None:
    description = description_of(validate_start_run, start_run(run_id="r" * 300), "run_id")
    assert "300" in description
    assert "255" in description


@pytest.mark.parametrize("name", ["ingest", "Ingest.v2", "a_b-c", "x" * 128])
def test_flow_names_accepted(name: str) -> None:
    validate_start_run(start_run(flow=common_pb2.FlowRef(name=name)), LIMITS)


@pytest.mark.parametrize("name", ["2fast", "_x", "has space", "x" * 129, "a@1"])
def test_flow_names_rejected(name: str) -> None:
    request = start_run(flow=common_pb2.FlowRef(name=name))
    assert fields_of(validate_start_run, request) == ["flow.name"]


def test_oversized_input_reports_size_and_limit() -> None:
    limits = RequestLimits(max_payload_bytes=1024)
    request = start_run(input=payloads(json_text(2000)))
    size = request.input.ByteSize()
    description = description_of(validate_start_run, request, "input", limits)
    assert description == f"is {size} bytes, over the limit of 1024 bytes"


def terminate(details: common_pb2.Payloads) -> flow_service_pb2.TerminateRunRequest:
    return flow_service_pb2.TerminateRunRequest(namespace="docs", run=run_ref(), details=details)


def test_payload_limit_is_the_sum_of_the_payloads() -> None:
    limits = RequestLimits(max_payload_bytes=1024)
    validate_terminate_run(terminate(payloads(json_text(400), json_text(400))), limits)
    request = terminate(payloads(json_text(400), json_text(400), json_text(400)))
    assert fields_of(validate_terminate_run, request, limits) == ["details"]


def test_default_payload_limit_is_two_mebibytes() -> None:
    validate_start_run(start_run(input=payloads(json_text(2 * 1024 * 1024 - 64))), LIMITS)
    request = start_run(input=payloads(json_text(2 * 1024 * 1024)))
    assert "over the limit of 2097152 bytes" in description_of(validate_start_run, request, "input")


def test_payload_without_encoding_is_named_by_index() -> None:
    request = terminate(common_pb2.Payloads(payloads=[payload(), common_pb2.Payload()]))
    assert fields_of(validate_terminate_run, request) == ["details.payloads[1].metadata"]


def test_oversized_memo_reports_size_and_limit() -> None:
    request = start_run(memo=common_pb2.Memo(fields={"big": payload(b"m" * 40_000)}))
    description = description_of(validate_start_run, request, "memo")
    assert f"is {request.memo.ByteSize()} bytes" in description
    assert "32768 bytes" in description


def test_memo_keys_and_payloads_are_checked() -> None:
    memo = common_pb2.Memo(fields={"k" * 256: payload(), "ok": common_pb2.Payload()})
    assert fields_of(validate_start_run, start_run(memo=memo)) == [
        f'memo.fields["{"k" * 256}"]',
        'memo.fields["ok"].metadata',
    ]


def test_task_queue_override_is_optional_but_well_formed_when_set() -> None:
    request = start_run()
    request.ClearField("task_queue")
    validate_start_run(request, LIMITS)
    request.task_queue.CopyFrom(common_pb2.TaskQueue())  # present but empty: no override
    validate_start_run(request, LIMITS)
    request.task_queue.kind = Kind.TASK_QUEUE_KIND_NORMAL
    assert fields_of(validate_start_run, request) == ["task_queue.name"]


@pytest.mark.parametrize("name", ["cpu", "gpu-ocr", "host:123/x.y_z", "Q" * 255])
def test_task_queue_names_accepted(name: str) -> None:
    validate_start_run(start_run(task_queue=common_pb2.TaskQueue(name=name)), LIMITS)


@pytest.mark.parametrize("name", [":cpu", "gpu ocr", "q" * 256, "q\x7f"])
def test_task_queue_names_rejected(name: str) -> None:
    request = start_run(task_queue=common_pb2.TaskQueue(name=name))
    assert fields_of(validate_start_run, request) == ["task_queue.name"]


def test_start_run_rejects_a_sticky_or_unknown_queue_kind() -> None:
    sticky = start_run(task_queue=common_pb2.TaskQueue(name="q", kind=Kind.TASK_QUEUE_KIND_STICKY))
    assert fields_of(validate_start_run, sticky) == ["task_queue.kind"]
    unknown = start_run(task_queue=common_pb2.TaskQueue(name="q", kind=7))  # type: ignore[arg-type]
    assert description_of(validate_start_run, unknown, "task_queue.kind") == (
        "7 is not a TaskQueueKind value"
    )


def test_run_id_reuse_policy_unspecified_is_the_default() -> None:
    validate_start_run(
        start_run(run_id_reuse_policy=Policy.RUN_ID_REUSE_POLICY_UNSPECIFIED), LIMITS
    )


@pytest.mark.parametrize(
    ("seconds", "nanos", "message"),
    [
        (-1, 0, "is -1s, must not be negative"),
        (0, -5, "is -0.000000005s, must not be negative"),
        (1, -1, "is not a valid duration"),
        (0, 1_000_000_000, "is not a valid duration"),
        (315_576_000_001, 0, "is not a valid duration"),
        (3650 * 86400 + 1, 0, "is 315360001s, over the limit of 315360000s"),
    ],
)
def test_run_timeout_must_be_a_valid_bounded_duration(
    seconds: int, nanos: int, message: str
) -> None:
    request = start_run(run_timeout=duration_pb2.Duration(seconds=seconds, nanos=nanos))
    assert description_of(validate_start_run, request, "run_timeout").startswith(message)


def test_run_timeout_zero_and_maximum_are_accepted() -> None:
    validate_start_run(start_run(run_timeout=duration_pb2.Duration()), LIMITS)
    limit = duration_pb2.Duration()
    limit.FromTimedelta(timedelta(days=3650))
    validate_start_run(start_run(run_timeout=limit), LIMITS)


def test_request_id_is_bounded() -> None:
    assert fields_of(validate_start_run, start_run(request_id="q" * 256)) == ["request_id"]


# SignalRun.


def signal_run(**overrides: object) -> flow_service_pb2.SignalRunRequest:
    request = flow_service_pb2.SignalRunRequest(
        namespace="docs",
        run=run_ref(execution_id=EXECUTION_ID),
        signal_name="approve",
        input=payloads(b'{"by": "ana"}'),
        identity="ui",
        request_id="s-1",
    )
    return with_fields(request, overrides)


def test_signal_run_accepts_a_well_formed_request() -> None:
    validate_signal_run(signal_run(), LIMITS)
    validate_signal_run(signal_run(run=run_ref()), LIMITS)  # the current execution


def test_signal_run_requires_run_id_and_signal_name() -> None:
    assert fields_of(validate_signal_run, flow_service_pb2.SignalRunRequest(namespace="d")) == [
        "run.run_id",
        "signal_name",
    ]


@pytest.mark.parametrize(
    "execution_id",
    ["nope", EXECUTION_ID.upper(), EXECUTION_ID.replace("-", ""), " " + EXECUTION_ID],
)
def test_execution_id_must_be_a_canonical_uuid(execution_id: str) -> None:
    request = signal_run(run=run_ref(execution_id=execution_id))
    assert fields_of(validate_signal_run, request) == ["run.execution_id"]


def test_signal_name_is_bounded_and_printable() -> None:
    assert fields_of(validate_signal_run, signal_run(signal_name="s" * 256)) == ["signal_name"]
    assert fields_of(validate_signal_run, signal_run(signal_name="a\x1bb")) == ["signal_name"]


def test_signal_input_size_is_bounded() -> None:
    limits = RequestLimits(max_payload_bytes=100)
    request = signal_run(input=payloads(b"x" * 200))
    assert "over the limit of 100 bytes" in description_of(
        validate_signal_run, request, "input", limits
    )


# SignalWithStartRun.


def test_signal_with_start_accepts_a_well_formed_request() -> None:
    validate_signal_with_start_run(signal_with_start(), LIMITS)


def test_signal_with_start_checks_start_and_signal_fields() -> None:
    request = signal_with_start(run_id="", signal_name="")
    request.signal_input.payloads.add()
    assert fields_of(validate_signal_with_start_run, request) == [
        "run_id",
        "signal_name",
        "signal_input.payloads",
        "signal_input.payloads[1].metadata",
    ]


def test_signal_with_start_rejects_terminate_if_running() -> None:
    request = signal_with_start(run_id_reuse_policy=Policy.RUN_ID_REUSE_POLICY_TERMINATE_IF_RUNNING)
    assert fields_of(validate_signal_with_start_run, request) == ["run_id_reuse_policy"]


def test_signal_with_start_bounds_input_and_signal_input_separately() -> None:
    limits = RequestLimits(max_payload_bytes=200)
    request = signal_with_start(
        input=payloads(json_text(150)), signal_input=payloads(json_text(150))
    )
    validate_signal_with_start_run(request, limits)
    request = signal_with_start(
        input=payloads(json_text(250)), signal_input=payloads(json_text(250))
    )
    assert fields_of(validate_signal_with_start_run, request, limits) == ["input", "signal_input"]


# CancelRun, TerminateRun, DescribeRun.


def test_cancel_run_happy_path_and_failures() -> None:
    validate_cancel_run(
        flow_service_pb2.CancelRunRequest(
            namespace="docs", run=run_ref(), reason="customer asked", identity="ui", request_id="c"
        ),
        LIMITS,
    )
    bad = flow_service_pb2.CancelRunRequest(
        namespace="docs", run=run_ref(""), reason="r" * 1025, request_id="\x00"
    )
    assert fields_of(validate_cancel_run, bad) == ["run.run_id", "reason", "request_id"]
    assert "1025 characters, over the limit of 1024" in description_of(
        validate_cancel_run, bad, "reason"
    )


def test_terminate_run_happy_path_and_failures() -> None:
    validate_terminate_run(
        flow_service_pb2.TerminateRunRequest(
            namespace="docs", run=run_ref(), reason="stuck\nsee ticket", details=payloads(b"{}")
        ),
        LIMITS,
    )
    bad = flow_service_pb2.TerminateRunRequest(
        namespace="",
        run=run_ref(execution_id="x"),
        details=common_pb2.Payloads(payloads=[common_pb2.Payload()]),
    )
    assert fields_of(validate_terminate_run, bad) == [
        "namespace",
        "run.execution_id",
        "details.payloads[0].metadata",
    ]


def test_describe_run_happy_path_and_failures() -> None:
    validate_describe_run(
        flow_service_pb2.DescribeRunRequest(namespace="docs", run=run_ref()), LIMITS
    )
    assert fields_of(validate_describe_run, flow_service_pb2.DescribeRunRequest()) == [
        "namespace",
        "run.run_id",
    ]


# GetRunHistory.


def test_get_run_history_happy_path() -> None:
    validate_get_run_history(
        flow_service_pb2.GetRunHistoryRequest(
            namespace="docs",
            run=run_ref(execution_id=EXECUTION_ID),
            page_size=1000,
            next_page_token=b"t" * 4096,
            wait_new_event=True,
            history_event_filter_type=history_pb2.HISTORY_EVENT_FILTER_TYPE_CLOSE_EVENT,
        ),
        LIMITS,
    )


def test_get_run_history_failures() -> None:
    request = flow_service_pb2.GetRunHistoryRequest(
        namespace="docs",
        run=run_ref(),
        page_size=1001,
        next_page_token=b"t" * 4097,
        history_event_filter_type=5,  # type: ignore[arg-type]
    )
    assert fields_of(validate_get_run_history, request) == [
        "page_size",
        "next_page_token",
        "history_event_filter_type",
    ]
    assert description_of(validate_get_run_history, request, "page_size") == (
        "is 1001, over the limit of 1000"
    )


def test_negative_page_size_is_rejected() -> None:
    request = flow_service_pb2.GetRunHistoryRequest(namespace="d", run=run_ref(), page_size=-1)
    assert fields_of(validate_get_run_history, request) == ["page_size"]


# ListRuns.


def timestamp(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def test_list_runs_happy_path() -> None:
    validate_list_runs(
        flow_service_pb2.ListRunsRequest(
            namespace="docs",
            page_size=50,
            statuses=[Status.RUN_STATUS_RUNNING, Status.RUN_STATUS_FAILED],
            flow_name="ingest",
            start_time_min=timestamp(1_700_000_000),
            start_time_max=timestamp(1_700_000_000),
            run_id="invoice-42",
        ),
        LIMITS,
    )
    validate_list_runs(flow_service_pb2.ListRunsRequest(namespace="docs"), LIMITS)


def test_list_runs_rejects_unspecified_and_unknown_statuses_by_index() -> None:
    request = flow_service_pb2.ListRunsRequest(
        namespace="docs",
        statuses=[Status.RUN_STATUS_RUNNING, Status.RUN_STATUS_UNSPECIFIED, 42],  # type: ignore[list-item]
    )
    assert fields_of(validate_list_runs, request) == ["statuses[1]", "statuses[2]"]


def test_list_runs_time_range_must_be_ordered() -> None:
    request = flow_service_pb2.ListRunsRequest(
        namespace="docs",
        start_time_min=timestamp(1_700_000_000, 1),
        start_time_max=timestamp(1_700_000_000),
    )
    assert fields_of(validate_list_runs, request) == ["start_time_max"]
    assert "is before start_time_min" in description_of(
        validate_list_runs, request, "start_time_max"
    )


def test_list_runs_one_sided_time_range_is_fine() -> None:
    validate_list_runs(
        flow_service_pb2.ListRunsRequest(namespace="docs", start_time_max=timestamp(0)), LIMITS
    )


def test_list_runs_rejects_invalid_timestamps() -> None:
    request = flow_service_pb2.ListRunsRequest(
        namespace="docs",
        start_time_min=timestamp(0, -1),
        start_time_max=timestamp(253_402_300_800),
    )
    assert fields_of(validate_list_runs, request) == ["start_time_min", "start_time_max"]


def test_list_runs_filters_are_well_formed() -> None:
    request = flow_service_pb2.ListRunsRequest(
        namespace="docs", page_size=-3, flow_name="1x", run_id="\n"
    )
    assert fields_of(validate_list_runs, request) == ["page_size", "flow_name", "run_id"]
