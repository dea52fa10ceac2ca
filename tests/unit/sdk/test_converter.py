"""Payload conversion: JSON by default, bytes through, None explicit, custom encodings refused."""

from __future__ import annotations

import pytest

from tideflow._converter import ConversionError, DefaultConverter, from_payloads, to_payloads
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
