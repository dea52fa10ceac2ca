"""JSON values as blueprints see them, and their conversions.

Two rules keep decisions deterministic and expressions unsurprising:

- Objects come out with their keys sorted. Protobuf maps (`Struct`, `map<string, Value>`)
  and CEL maps both iterate in an order that changes from process to process, so insertion
  order carries nothing worth keeping.
- A number with no fractional part (within +-2**53, where doubles are exact) is an `int`.
  `google.protobuf.Value` keeps every number as a double, and CEL refuses to mix `int` and
  `double` (`${input.count + 1}` fails on `3.0`), so integral numbers are read as integers
  wherever they come from. The price: an expression mixing a number from the data with a
  fractional literal should convert it, `double(input.ratio) * 0.5`, since `ratio` may be whole.
"""

from __future__ import annotations

import base64
import datetime
import math
from collections.abc import Mapping

from google.protobuf import struct_pb2

from tideflow.blueprint.language.model import JSON

_EXACT = 2**53


class NotJSON(ValueError):
    """A value has no JSON form (a non-finite number, an unknown type)."""


def _number(value: float) -> int | float:
    if not math.isfinite(value):
        raise NotJSON(f"{value} is not a JSON number")
    if value.is_integer() and -_EXACT <= value <= _EXACT:
        return int(value)
    return value


def value_to_json(value: struct_pb2.Value) -> JSON:
    """A `google.protobuf.Value` as plain JSON (an unset value reads as null)."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return _number(value.number_value)
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_json(value.struct_value)
    if kind == "list_value":
        return [value_to_json(item) for item in value.list_value.values]
    return None


def struct_to_json(struct: struct_pb2.Struct) -> dict[str, JSON]:
    return {key: value_to_json(struct.fields[key]) for key in sorted(struct.fields)}


def json_to_value(value: JSON) -> struct_pb2.Value:
    """Plain JSON as a `google.protobuf.Value` (integers become doubles, as JSON allows)."""
    message = struct_pb2.Value()
    _fill(message, value)
    return message


def json_to_struct(value: Mapping[str, JSON]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    for key in sorted(value):
        _fill(message.fields[key], value[key])
    return message


def _fill(message: struct_pb2.Value, value: JSON) -> None:
    if value is None:
        message.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise NotJSON(f"{value} is not a JSON number")
        message.number_value = float(value)
    elif isinstance(value, str):
        message.string_value = value
    elif isinstance(value, list):
        items = message.list_value
        items.Clear()
        for item in value:
            _fill(items.values.add(), item)
    elif isinstance(value, dict):
        fields = message.struct_value
        fields.Clear()
        for key in sorted(value):
            _fill(fields.fields[key], value[key])
    else:  # pragma: no cover - JSON is closed, but callers may cheat with Any
        raise NotJSON(f"{type(value).__name__} is not JSON")


def normalize(value: JSON) -> JSON:
    """`value` with integral doubles read as integers and object keys sorted."""
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, list):
        return [normalize(item) for item in value]
    if isinstance(value, dict):
        return {key: normalize(value[key]) for key in sorted(value)}
    return value


def from_cel(value: object) -> JSON:
    """A CEL result as plain JSON: bytes become base64 text, timestamps RFC 3339 text,
    durations `"<seconds>s"` text (the proto JSON forms), map keys text."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime.datetime):
        return _timestamp(value)
    if isinstance(value, datetime.timedelta):
        return _duration(value)
    if isinstance(value, list | tuple):
        return [from_cel(item) for item in value]
    if isinstance(value, dict):
        items = {_key(key): from_cel(item) for key, item in value.items()}
        return {key: items[key] for key in sorted(items)}
    optional = _optional(value)
    if optional is not _ABSENT:
        return from_cel(optional)
    raise NotJSON(f"a CEL {type(value).__name__} has no JSON form")


_ABSENT = object()


def _optional(value: object) -> object:
    """The content of a CEL optional (None when empty), or _ABSENT for anything else."""
    has_value = getattr(value, "has_value", None)
    get = getattr(value, "value", None)
    if callable(has_value) and callable(get):
        return get() if has_value() else None
    return _ABSENT


def _key(key: object) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return str(key)
    raise NotJSON(f"a map key of type {type(key).__name__} has no JSON form")


def _timestamp(value: datetime.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    value = value.astimezone(datetime.UTC)
    text = value.replace(tzinfo=None).isoformat(timespec="microseconds")
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0")
    return f"{whole}.{fraction}Z" if fraction else f"{whole}Z"


def _duration(value: datetime.timedelta) -> str:
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    return duration_text(micros * 1_000)


def duration_text(nanos: int) -> str:
    """A duration in the proto JSON form: `"1.5s"`, `"-2s"`, `"0.000001s"`."""
    sign = "-" if nanos < 0 else ""
    seconds, rest = divmod(abs(nanos), 1_000_000_000)
    if not rest:
        return f"{sign}{seconds}s"
    return f"{sign}{seconds}.{rest:09d}".rstrip("0") + "s"
