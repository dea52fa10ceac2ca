"""The single entry point, and what a client receives."""

from __future__ import annotations

import pytest
from google.rpc import code_pb2, error_details_pb2

from tests.unit.frontend._support import LIMITS, payloads
from tideflow.api.v1 import common_pb2, flow_service_pb2, operator_service_pb2
from tideflow_server.frontend.limits import RequestLimits
from tideflow_server.frontend.validation import (
    page_size_or_default,
    validate,
    validated_request_types,
)
from tideflow_server.rpc.errors import FieldViolation, InvalidArgument


def test_every_public_request_has_a_validator() -> None:
    services = [
        flow_service_pb2.DESCRIPTOR.services_by_name["FlowService"],
        operator_service_pb2.DESCRIPTOR.services_by_name["OperatorService"],
    ]
    requests = {m.input_type.full_name for s in services for m in s.methods}
    assert requests == validated_request_types()


def test_validate_dispatches_on_the_request_type() -> None:
    validate(flow_service_pb2.DescribeNamespaceRequest(namespace="docs"), LIMITS)
    with pytest.raises(InvalidArgument) as raised:
        validate(flow_service_pb2.StartRunRequest(namespace="docs"), LIMITS)
    assert [v.field for v in raised.value.violations] == ["run_id", "flow.name"]


def test_validate_refuses_an_unknown_request_type() -> None:
    with pytest.raises(LookupError, match=r"tideflow\.api\.v1\.RunRef"):
        validate(common_pb2.RunRef(run_id="r"), LIMITS)


def test_invalid_argument_status_carries_a_bad_request_with_every_violation() -> None:
    request = flow_service_pb2.StartRunRequest(
        namespace="docs",
        run_id="r",
        flow=common_pb2.FlowRef(name="ingest"),
        input=payloads(b"x" * 300),
        identity="\x00",
    )
    with pytest.raises(InvalidArgument) as raised:
        validate(request, RequestLimits(max_payload_bytes=256))
    status = raised.value.to_status()
    assert status.code == code_pb2.INVALID_ARGUMENT
    bad_requests = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            bad_requests.append(bad)
    assert len(bad_requests) == 1
    reported = [FieldViolation(v.field, v.description) for v in bad_requests[0].field_violations]
    assert reported == raised.value.violations
    assert [v.field for v in reported] == ["input", "identity"]
    assert reported[0].description == (
        f"is {request.input.ByteSize()} bytes, over the limit of 256 bytes"
    )
    assert "input: is" in status.message


def test_page_size_zero_means_the_default() -> None:
    assert page_size_or_default(0, LIMITS) == 100
    assert page_size_or_default(7, LIMITS) == 7
    assert page_size_or_default(0, RequestLimits(default_page_size=20)) == 20
