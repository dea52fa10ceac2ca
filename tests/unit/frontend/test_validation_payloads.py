"""Payload encodings: what the engine reads must be one JSON value; the rest must at least be
what its encoding says."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.unit.frontend._support import LIMITS, TOKEN, description_of, fields_of, payload
from tideflow.api.v1 import common_pb2, failure_pb2, flow_service_pb2
from tideflow_server.frontend.limits import RequestLimits
from tideflow_server.frontend.validation import (
    validate_record_block_heartbeat,
    validate_respond_block_completed,
    validate_respond_block_completed_batch,
    validate_respond_block_failed,
    validate_signal_run,
    validate_signal_with_start_run,
    validate_start_run,
)


def completed(*given: common_pb2.Payload) -> flow_service_pb2.RespondBlockCompletedRequest:
    return flow_service_pb2.RespondBlockCompletedRequest(
        namespace="docs", task_token=TOKEN, result=common_pb2.Payloads(payloads=given)
    )


def heartbeat(*given: common_pb2.Payload) -> flow_service_pb2.RecordBlockHeartbeatRequest:
    return flow_service_pb2.RecordBlockHeartbeatRequest(
        namespace="docs", task_token=TOKEN, details=common_pb2.Payloads(payloads=given)
    )


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"{not json", "is not JSON: Expecting property name"),
        (b"", "is empty"),
        (b'{"a": 1} trailing', "is not JSON: Extra data"),
        (b"NaN", "NaN is not a JSON number"),
        (b"[1, Infinity]", "Infinity is not a JSON number"),
        (b'{"x": -Infinity}', "-Infinity is not a JSON number"),
        (b"1e999", "the number 1e999 is out of range"),
        (b"9" * 400, "out of range"),
        (b"-" + b"9" * 5000, "out of range"),
        (b'"caf\xe9"', "is not UTF-8 (byte 4)"),
        ('{"a": 1}'.encode("utf-16"), "is not UTF-8"),
        (b'\xef\xbb\xbf{"a": 1}', "is not JSON"),
        (b'"\\ud800"', "unpaired surrogate"),
        (b'{"\\udc00": 1}', "unpaired surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, "nests arrays and objects"),
    ],
)
def test_result_that_is_not_json_is_refused_naming_its_data(data: bytes, said: str) -> None:
    description = description_of(
        validate_respond_block_completed, completed(payload(data)), "result.payloads[0].data"
    )
    assert said in description


@pytest.mark.parametrize(
    "data",
    [b"null", b"0", b"-1.5e308", b'"\\ud83d\\ude00 ok"', b'{"a": [1, 2.5, "x", true, null]}'],
)
def test_json_results_pass(data: bytes) -> None:
    validate_respond_block_completed(completed(payload(data)), LIMITS)


def test_binary_null_and_no_payload_are_null() -> None:
    validate_respond_block_completed(completed(payload(b"", b"binary/null")), LIMITS)
    validate_respond_block_completed(completed(), LIMITS)
    assert fields_of(
        validate_respond_block_completed, completed(payload(b"0", b"binary/null"))
    ) == ["result.payloads[0].data"]


@pytest.mark.parametrize(
    "encoding", [b"binary/plain", b"json/protobuf", b"binary/encrypted", b"JSON/PLAIN", b"x"]
)
def test_what_the_engine_reads_must_be_json(encoding: bytes) -> None:
    request = completed(payload(b"{}", encoding))
    field = 'result.payloads[0].metadata["encoding"]'
    assert 'the engine reads this payload: "json/plain"' in description_of(
        validate_respond_block_completed, request, field
    )


def test_the_engine_reads_one_payload() -> None:
    request = completed(payload(), payload())
    assert "has 2 payloads" in description_of(
        validate_respond_block_completed, request, "result.payloads"
    )


def test_every_input_the_engine_reads_is_checked() -> None:
    bad = common_pb2.Payloads(payloads=[payload(b"{not json")])
    start = flow_service_pb2.StartRunRequest(namespace="docs", run_id="r", input=bad)
    start.flow.name = "intake"
    assert fields_of(validate_start_run, start) == ["input.payloads[0].data"]
    signal = flow_service_pb2.SignalRunRequest(namespace="docs", signal_name="go", input=bad)
    signal.run.run_id = "r"
    assert fields_of(validate_signal_run, signal) == ["input.payloads[0].data"]
    both = flow_service_pb2.SignalWithStartRunRequest(
        namespace="docs", run_id="r", signal_name="go", input=bad, signal_input=bad
    )
    both.flow.name = "intake"
    assert fields_of(validate_signal_with_start_run, both) == [
        "input.payloads[0].data",
        "signal_input.payloads[0].data",
    ]


def test_batch_items_name_their_index() -> None:
    batch = flow_service_pb2.RespondBlockCompletedBatchRequest(
        completions=[completed(payload()), completed(payload(b"{not json"))]
    )
    assert fields_of(validate_respond_block_completed_batch, batch) == [
        "completions[1].result.payloads[0].data"
    ]


def test_json_nesting_is_bounded() -> None:
    validate_respond_block_completed(completed(payload(nested(24))), LIMITS)
    request = completed(payload(nested(25)))
    assert "more than 24 levels deep" in description_of(
        validate_respond_block_completed, request, "result.payloads[0].data"
    )
    shallow = RequestLimits(max_json_depth=2)
    validate_respond_block_completed(completed(payload(b'[[1], {"a": 2}]')), shallow)
    assert fields_of(
        validate_respond_block_completed, completed(payload(b'[{"a": []}]')), shallow
    ) == ["result.payloads[0].data"]
    # Brackets inside strings are no nesting.
    validate_respond_block_completed(completed(payload(b'"[[[[[{{{{"')), shallow)


def test_an_oversized_payload_is_not_decoded_too() -> None:
    request = completed(payload(b"{not json" * 100))
    limits = RequestLimits(max_payload_bytes=100)
    assert fields_of(validate_respond_block_completed, request, limits) == ["result"]


# Opaque payloads: details the engine stores and hands on.


@pytest.mark.parametrize(
    "encoding", [b"binary/plain", b"binary/protobuf", b"application/x-msgpack", b"json/snappy+enc"]
)
def test_opaque_payloads_take_any_encoding_name(encoding: bytes) -> None:
    validate_record_block_heartbeat(heartbeat(payload(b"\x00\xff", encoding)), LIMITS)


@pytest.mark.parametrize(
    "encoding",
    [b"plain", b"binary/", b"/plain", b"binary/plain; charset=x", b"bin ary/x", b"\xff/x"],
)
def test_opaque_payload_encodings_are_names(encoding: bytes) -> None:
    field = 'details.payloads[0].metadata["encoding"]'
    assert "is not an encoding name" in description_of(
        validate_record_block_heartbeat, heartbeat(payload(b"", encoding)), field
    )


def test_opaque_json_must_still_decode_and_null_be_empty() -> None:
    request = heartbeat(payload(b"{}"), payload(b"{not json"), payload(b"x", b"binary/null"))
    assert fields_of(validate_record_block_heartbeat, request) == [
        "details.payloads[1].data",
        "details.payloads[2].data",
    ]


def test_memo_payloads_follow_the_opaque_rules() -> None:
    request = flow_service_pb2.StartRunRequest(namespace="docs", run_id="r")
    request.flow.name = "intake"
    request.memo.fields["team"].CopyFrom(payload(b"{not json"))
    request.memo.fields["blob"].CopyFrom(payload(b"\x00", b"binary/plain"))
    assert fields_of(validate_start_run, request) == ['memo.fields["team"].data']


def test_failure_details_are_checked_down_the_cause_chain() -> None:
    failure = failure_pb2.Failure(message="boom")
    failure.application_failure_info.details.payloads.add().CopyFrom(payload(b"{not json"))
    failure.cause.timeout_failure_info.last_heartbeat_details.payloads.add().CopyFrom(
        payload(b"", b"binary plain")
    )
    failure.cause.cause.canceled_failure_info.details.payloads.add().CopyFrom(payload(b"{}"))
    failure.cause.cause.cause.application_failure_info.details.payloads.add()
    request = flow_service_pb2.RespondBlockFailedRequest(
        namespace="docs", task_token=TOKEN, failure=failure
    )
    assert fields_of(validate_respond_block_failed, request) == [
        "failure.application_failure_info.details.payloads[0].data",
        'failure.cause.timeout_failure_info.last_heartbeat_details.payloads[0].metadata["encoding"]',
        "failure.cause.cause.cause.application_failure_info.details.payloads[0].metadata",
    ]


# Issue 17, item 3: exactly the list the issue gave, in every field the engine reads.

_NOT_JSON_PLAIN = {
    "Infinity": b"Infinity",
    "NaN": b"NaN",
    "1e999": b"1e999",
    "minus": b"-",
    "lone surrogate": b'"\\ud800"',
    "invalid UTF-8": b'"\xff\xfe"',
    "5000 digits": b"1" * 5000,
    "nesting 50": b"[" * 50 + b"]" * 50,
    "nesting 3000": b"[" * 3000 + b"]" * 3000,
}


def _start(bad: common_pb2.Payloads) -> flow_service_pb2.StartRunRequest:
    request = flow_service_pb2.StartRunRequest(namespace="docs", run_id="r", input=bad)
    request.flow.name = "intake"
    return request


def _signal(bad: common_pb2.Payloads) -> flow_service_pb2.SignalRunRequest:
    request = flow_service_pb2.SignalRunRequest(namespace="docs", signal_name="go", input=bad)
    request.run.run_id = "r"
    return request


def _signal_with_start(
    bad: common_pb2.Payloads, field: str
) -> flow_service_pb2.SignalWithStartRunRequest:
    request = flow_service_pb2.SignalWithStartRunRequest(
        namespace="docs", run_id="r", signal_name="go"
    )
    request.flow.name = "intake"
    getattr(request, field).CopyFrom(bad)
    return request


_ENGINE_READ_FIELDS: dict[str, tuple[Callable[..., None], Callable[[common_pb2.Payloads], Any]]] = {
    "input": (validate_start_run, _start),
    "signal input": (validate_signal_run, _signal),
    "signal-with-start input": (
        validate_signal_with_start_run,
        lambda bad: _signal_with_start(bad, "input"),
    ),
    "signal-with-start signal_input": (
        validate_signal_with_start_run,
        lambda bad: _signal_with_start(bad, "signal_input"),
    ),
    "result": (
        validate_respond_block_completed,
        lambda bad: flow_service_pb2.RespondBlockCompletedRequest(
            namespace="docs", task_token=TOKEN, result=bad
        ),
    ),
    "batch result": (
        validate_respond_block_completed_batch,
        lambda bad: flow_service_pb2.RespondBlockCompletedBatchRequest(
            completions=[
                flow_service_pb2.RespondBlockCompletedRequest(
                    namespace="docs", task_token=TOKEN, result=bad
                )
            ]
        ),
    ),
}
_FIELD_PATHS = {
    "input": "input",
    "signal input": "input",
    "signal-with-start input": "input",
    "signal-with-start signal_input": "signal_input",
    "result": "result",
    "batch result": "completions[0].result",
}


@pytest.mark.parametrize("data", _NOT_JSON_PLAIN.values(), ids=_NOT_JSON_PLAIN.keys())
@pytest.mark.parametrize("where", _ENGINE_READ_FIELDS)
def test_data_that_is_not_json_plain_is_refused_in_every_field_the_engine_reads(
    where: str, data: bytes
) -> None:
    validator, request = _ENGINE_READ_FIELDS[where]
    bad = common_pb2.Payloads(payloads=[payload(data)])
    assert fields_of(validator, request(bad)) == [f"{_FIELD_PATHS[where]}.payloads[0].data"]
