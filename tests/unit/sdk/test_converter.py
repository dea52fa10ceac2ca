"""Payload conversion: JSON by default, bytes through, None explicit, custom encodings refused."""

from __future__ import annotations

import pytest

from tideflow._converter import (
    ConversionError,
    DefaultConverter,
    check_engine_readable,
    from_payloads,
    to_payloads,
)
from tideflow.api.v1 import common_pb2


@pytest.mark.parametrize(
    "value", [None, 0, 3.5, "text", True, [1, "a", None], {"doc": {"pages": 3}}, b"\x00\xff"]
)
def test_values_round_trip(value: object) -> None:
    converter = DefaultConverter()
    assert converter.from_payload(converter.to_payload(value)) == value


def test_encodings_are_declared() -> None:
    converter = DefaultConverter()
    assert converter.to_payload({"a": 1}).metadata["encoding"] == b"json/plain"
    assert converter.to_payload(b"raw").metadata["encoding"] == b"binary/plain"
    assert converter.to_payload(None).metadata["encoding"] == b"binary/null"


def test_unencodable_and_unknown_encodings_are_clear_errors() -> None:
    converter = DefaultConverter()
    with pytest.raises(ConversionError, match="set"):
        converter.to_payload({1, 2})
    foreign = common_pb2.Payload(metadata={"encoding": b"proto/binary"}, data=b"x")
    with pytest.raises(ConversionError, match="proto/binary"):
        converter.from_payload(foreign)


def test_payloads_helpers_use_the_first_value() -> None:
    converter = DefaultConverter()
    payloads = to_payloads(converter, {"n": 1}, "second")
    assert len(payloads.payloads) == 2
    assert from_payloads(converter, payloads) == {"n": 1}
    assert from_payloads(converter, common_pb2.Payloads()) is None


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"x": [float("-inf")]}])
def test_non_finite_numbers_are_not_json(value: object) -> None:
    with pytest.raises(ConversionError, match="JSON"):
        DefaultConverter().to_payload(value)


def test_what_the_engine_reads_must_be_json_or_null() -> None:
    converter = DefaultConverter()
    for readable in ({"a": 1}, None):
        check_engine_readable(to_payloads(converter, readable), "a block's result")
    check_engine_readable(common_pb2.Payloads(), "a block's result")
    with pytest.raises(ConversionError, match="must be JSON or None"):
        check_engine_readable(to_payloads(converter, b"\x00"), "a block's result")
    with pytest.raises(ConversionError, match="one value, got 2"):
        check_engine_readable(to_payloads(converter, 1, 2), "a block's result")
