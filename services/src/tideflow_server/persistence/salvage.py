"""What can still be read of a stored record that no longer parses as a whole.

A record can become unreadable while every byte of it is intact: protobuf decoders refuse
messages nested more than 100 levels, and a value accepted before a bound existed may nest
deeper once stored. `salvage` keeps every field that parses on its own, going down into
singular message fields, and drops the rest, so an operator can still act on the record
(TerminateRun closes such a run).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, TypeVar

from google.protobuf.message import DecodeError, Message

M = TypeVar("M", bound=Message)

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_FIXED_SIZES: Final = {_FIXED64: 8, _FIXED32: 4}


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise DecodeError("truncated varint")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if byte < 0x80:
            return value, at


def _fields(data: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """Each top-level field: (number, its bytes with the tag, the value of a length-delimited
    field, else b"")."""
    at = 0
    while at < len(data):
        start = at
        tag, at = _varint(data, at)
        wire_type = tag & 7
        value = b""
        if wire_type == _VARINT:
            _, at = _varint(data, at)
        elif wire_type in _FIXED_SIZES:
            at += _FIXED_SIZES[wire_type]
        elif wire_type == _LENGTH_DELIMITED:
            size, at = _varint(data, at)
            value, at = data[at : at + size], at + size
        else:  # groups: not in proto3 records
            raise DecodeError(f"wire type {wire_type}")
        if at > len(data):
            raise DecodeError("truncated field")
        yield tag >> 3, data[start:at], value


def salvage(message_type: type[M], data: bytes) -> tuple[M, list[str]]:
    """The fields of `data` that parse, and the paths of those that do not (dropped)."""
    message = message_type()
    dropped: list[str] = []
    try:
        fields = list(_fields(data))
    except DecodeError:
        return message, ["(the rest: corrupt)"]
    by_number = message.DESCRIPTOR.fields_by_number
    for number, raw, value in fields:
        try:
            message.MergeFromString(raw)
            continue
        except DecodeError:
            pass
        field = by_number.get(number)
        name = field.name if field is not None else str(number)
        if field is None or field.message_type is None or field.is_repeated:
            dropped.append(name)  # one entry of a repeated field or map, or a scalar
            continue
        part, lost = salvage(type(getattr(message, name)), value)
        getattr(message, name).MergeFrom(part)
        dropped.extend(f"{name}.{path}" for path in lost)
    return message, dropped
