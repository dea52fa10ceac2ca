"""Payload conversion: how Python values travel as `Payload`s.

JSON by default (`encoding: json/plain`, no NaN or Infinity), bytes passed through
(`binary/plain`), `None` as `binary/null`. A custom converter implements `PayloadConverter`
and is given to the Client or Worker. What the engine reads (a run's input, a block's result,
a signal's input) must be JSON or null: the server refuses other encodings there.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from tideflow.api.v1 import common_pb2

ENCODING = "encoding"
JSON_PLAIN = b"json/plain"
BINARY_PLAIN = b"binary/plain"
BINARY_NULL = b"binary/null"


class PayloadConverter(Protocol):
    def to_payload(self, value: Any) -> common_pb2.Payload: ...

    def from_payload(self, payload: common_pb2.Payload) -> Any: ...


class ConversionError(ValueError):
    """A value that cannot be encoded, or a payload in an encoding nobody here reads."""


class DefaultConverter:
    """None, bytes, and anything `json.dumps` takes."""

    def to_payload(self, value: Any) -> common_pb2.Payload:
        if value is None:
            return common_pb2.Payload(metadata={ENCODING: BINARY_NULL})
        if isinstance(value, bytes | bytearray | memoryview):
            return common_pb2.Payload(metadata={ENCODING: BINARY_PLAIN}, data=bytes(value))
        try:
            data = json.dumps(
                value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode()
        except (TypeError, ValueError) as e:
            raise ConversionError(f"cannot encode {type(value).__name__} as JSON: {e}") from e
        return common_pb2.Payload(metadata={ENCODING: JSON_PLAIN}, data=data)

    def from_payload(self, payload: common_pb2.Payload) -> Any:
        encoding = payload.metadata.get(ENCODING, JSON_PLAIN)
        if encoding == BINARY_NULL:
            return None
        if encoding == BINARY_PLAIN:
            return payload.data
        if encoding == JSON_PLAIN:
            return json.loads(payload.data) if payload.data else None
        raise ConversionError(f"no converter for payload encoding {encoding!r}")


def to_payloads(converter: PayloadConverter, *values: Any) -> common_pb2.Payloads:
    return common_pb2.Payloads(payloads=[converter.to_payload(v) for v in values])


def from_payloads(converter: PayloadConverter, payloads: common_pb2.Payloads) -> Any:
    """The first payload's value; None when there is none (what blueprints pass around)."""
    if not payloads.payloads:
        return None
    return converter.from_payload(payloads.payloads[0])


def check_engine_readable(payloads: common_pb2.Payloads, what: str) -> None:
    """Raise ConversionError unless the engine can read `payloads` (one JSON value or null),
    so that a value the server would refuse fails here, with its reason."""
    if len(payloads.payloads) > 1:
        raise ConversionError(f"{what} is one value, got {len(payloads.payloads)}")
    for payload in payloads.payloads:
        encoding = payload.metadata.get(ENCODING, b"")
        if encoding not in (JSON_PLAIN, BINARY_NULL):
            shown = encoding.decode(errors="replace")
            raise ConversionError(
                f"{what} must be JSON or None (the engine reads it), not {shown!r} payload data"
            )
