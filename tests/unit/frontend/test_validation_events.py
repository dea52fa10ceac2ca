"""PublishEvent's request checks: every field path, in one answer."""

from __future__ import annotations

from typing import Any

from tests.unit.frontend._support import LIMITS, description_of, fields_of, payloads
from tideflow.api.v1 import flow_service_pb2
from tideflow_server.frontend.limits import RequestLimits
from tideflow_server.frontend.validation import validate_publish_event


def publish(**fields: Any) -> flow_service_pb2.PublishEventRequest:
    given: dict[str, Any] = {
        "namespace": "default",
        "event_type": "payment.received",
        "correlation_key": "o-17",
        "payload": payloads(b'{"amount": 20}'),
    }
    return flow_service_pb2.PublishEventRequest(**{**given, **fields})


def test_a_well_formed_publish_is_accepted() -> None:
    validate_publish_event(publish(), LIMITS)
    validate_publish_event(publish(correlation_key="", payload=None, event_id="e-1"), LIMITS)


def test_every_bad_field_is_reported_with_its_path() -> None:
    request = publish(
        namespace="",
        event_type="",
        correlation_key="k" * 256,
        event_id="a\x1bb",
        identity="i" * 256,
        payload=payloads(b"{not json"),
    )
    assert fields_of(validate_publish_event, request) == [
        "namespace",
        "event_type",
        "correlation_key",
        "payload.payloads[0].data",
        "event_id",
        "identity",
    ]


def test_the_event_type_is_bounded_and_printable() -> None:
    assert fields_of(validate_publish_event, publish(event_type="t" * 256)) == ["event_type"]
    assert fields_of(validate_publish_event, publish(event_type="a\nb")) == ["event_type"]


def test_the_payload_size_is_bounded() -> None:
    limits = RequestLimits(max_payload_bytes=100)
    request = publish(payload=payloads(b'"' + b"x" * 200 + b'"'))
    assert "over the limit of 100 bytes" in description_of(
        validate_publish_event, request, "payload", limits
    )
