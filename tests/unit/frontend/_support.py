"""Helpers for the frontend unit tests: well-formed values and violation lookups."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
from google.protobuf.message import Message

from tideflow.api.v1 import common_pb2
from tideflow_server.frontend.limits import RequestLimits
from tideflow_server.rpc.errors import FieldViolation, InvalidArgument

LIMITS = RequestLimits()
EXECUTION_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
TOKEN = b"\x0a\x05token"

M = TypeVar("M", bound=Message)
Validator = Callable[[M, RequestLimits], None]


def payload(data: bytes = b'{"doc": 1}', encoding: bytes = b"json/plain") -> common_pb2.Payload:
    return common_pb2.Payload(metadata={"encoding": encoding}, data=data)


def payloads(*data: bytes) -> common_pb2.Payloads:
    return common_pb2.Payloads(payloads=[payload(d) for d in data])


def json_text(size: int) -> bytes:
    """A JSON string of `size` bytes, quotes included."""
    return b'"' + b"x" * (size - 2) + b'"'


def violations_of(
    validator: Validator[M], request: M, limits: RequestLimits = LIMITS
) -> list[FieldViolation]:
    with pytest.raises(InvalidArgument) as raised:
        validator(request, limits)
    return raised.value.violations


def fields_of(validator: Validator[M], request: M, limits: RequestLimits = LIMITS) -> list[str]:
    """The violated field paths, in the order the validator reported them."""
    return [v.field for v in violations_of(validator, request, limits)]


def description_of(
    validator: Validator[M], request: M, field: str, limits: RequestLimits = LIMITS
) -> str:
    found = [v.description for v in violations_of(validator, request, limits) if v.field == field]
    assert len(found) == 1, f"expected one violation of {field}, got {found}"
    return found[0]


def with_fields(request: M, overrides: dict[str, object]) -> M:
    """`request` with some fields replaced (message fields are copied in, as protobuf wants)."""
    for name, value in overrides.items():
        if isinstance(value, Message):
            getattr(request, name).CopyFrom(value)
        elif isinstance(value, dict):
            field = getattr(request, name)
            field.clear()
            field.update(value)
        else:
            setattr(request, name, value)
    return request
