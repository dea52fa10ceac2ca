"""Hypothesis strategies for any protobuf message, built from its descriptor.

Every field may be left unset or take a value from its type's strategy: strings from empty to
huge and non-ASCII, integers at their type's extremes, enums with unknown numbers, bytes that
are garbage, floats with NaN and infinities, repeated and map fields, nested messages to a
bounded depth. The well-known types get shapes of their own (Durations and Timestamps out of
range, Struct/Value nested deeper than the server accepts, FieldMasks of real and made-up
paths), and so do Payloads (random encodings next to valid JSON). `hints` replaces the strategy
of fields by name, so most requests name a real namespace, run or flow and get past the first
lookup to the checks behind it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import (
    descriptor,
    duration_pb2,
    field_mask_pb2,
    message_factory,
    timestamp_pb2,
)
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.message import Message
from hypothesis import strategies as st

from tideflow.api.v1 import common_pb2

FD = descriptor.FieldDescriptor
Strategy = st.SearchStrategy[Any]
Hints = Mapping[str, Strategy]

MAX_DEPTH = 4
"""Nesting of ordinary messages; deeper ones are left empty."""

STRINGS: Strategy = st.one_of(
    st.sampled_from(["", " ", "a", "名前", "a\x00b", "${input.x}"]),
    st.sampled_from([300, 5_000, 70_000]).map(lambda n: "é" * n),  # over every length limit
    st.text(max_size=24),
)
BYTES: Strategy = st.one_of(
    st.sampled_from([b"", b"\x00", b"\xff" * 16, b"\x0a\xff\xff\xff\xff\x0f"]),
    st.sampled_from([5_000, 100_000]).map(lambda n: b"x" * n),
    st.binary(max_size=48),
)


def _int_range(field: FD) -> tuple[int, int]:
    signed32 = (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32)
    signed64 = (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64)
    if field.type in signed32:
        return -(2**31), 2**31 - 1
    if field.type in signed64:
        return -(2**63), 2**63 - 1
    if field.type in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return 0, 2**32 - 1
    return 0, 2**64 - 1


def _ints(field: FD) -> Strategy:
    low, high = _int_range(field)
    edges = sorted({low, high, 0, 1, max(low, -1), 1000, high - 1})
    return st.one_of(st.sampled_from(edges), st.integers(low, high), st.integers(0, 100))


def _enum(field: FD) -> Strategy:
    assert field.enum_type is not None
    known = [v.number for v in field.enum_type.values]
    return st.one_of(st.sampled_from(known), st.sampled_from([-1, 999, 2**31 - 1]))


FLOAT_EDGES = [0.0, -0.0, 5e-324, 1e-320, 1e-300, 1e-3, 1e300, 1.7e308]


def _floats(field: FD) -> Strategy:
    if field.type == FD.TYPE_FLOAT:
        small = [f for f in FLOAT_EDGES if abs(f) < 3e38]
        return st.one_of(st.sampled_from(small), st.floats(width=32))
    return st.one_of(st.sampled_from(FLOAT_EDGES), st.floats())


SCALARS: Mapping[int, Callable[[FD], Strategy]] = {
    FD.TYPE_STRING: lambda _: STRINGS,
    FD.TYPE_BYTES: lambda _: BYTES,
    FD.TYPE_BOOL: lambda _: st.booleans(),
    FD.TYPE_ENUM: _enum,
    FD.TYPE_FLOAT: _floats,
    FD.TYPE_DOUBLE: _floats,
    **{
        t: _ints
        for t in (
            FD.TYPE_INT32,
            FD.TYPE_SINT32,
            FD.TYPE_SFIXED32,
            FD.TYPE_INT64,
            FD.TYPE_SINT64,
            FD.TYPE_SFIXED64,
            FD.TYPE_UINT32,
            FD.TYPE_FIXED32,
            FD.TYPE_UINT64,
            FD.TYPE_FIXED64,
        )
    },
}

# -- well-known types and Payloads ------------------------------------------------------------

_SECONDS_EDGES = [0, 1, -1, 315_576_000_000, 315_576_000_001, -315_576_000_001, 2**62, -(2**62)]
_NANOS_EDGES = [0, 1, -1, 999_999_999, 1_000_000_000, -(2**31), 2**31 - 1]


def _seconds_and_nanos(
    cls: type[duration_pb2.Duration] | type[timestamp_pb2.Timestamp],
) -> Strategy:
    def build(seconds: int, nanos: int) -> Message:
        # Out-of-range values are the point: the raw fields, as a client in any language
        # can set them.
        return cls(seconds=seconds, nanos=nanos)

    return st.builds(
        build,
        st.one_of(st.sampled_from(_SECONDS_EDGES), st.integers(-(2**63), 2**63 - 1)),
        st.one_of(st.sampled_from(_NANOS_EDGES), st.integers(-(2**31), 2**31 - 1)),
    )


def _nested(depth: int) -> Any:
    """A JSON value nested `depth` levels deep (lists and objects in turn)."""
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


JSON: Strategy = st.one_of(
    st.recursive(
        st.none()
        | st.booleans()
        | st.floats()
        | st.integers(-(2**70), 2**70)
        | st.text(max_size=12),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=8,
    ),
    st.sampled_from([10, 20, 24, 25, 28]).map(_nested),
)


def _value(given: Any) -> _struct_pb2.Value:
    message = _struct_pb2.Value()
    if isinstance(given, dict):
        _fill_struct(message.struct_value, given)
    elif isinstance(given, list):
        _fill_list(message.list_value, given)
    elif given is None:
        message.null_value = _struct_pb2.NULL_VALUE
    elif isinstance(given, bool):
        message.bool_value = given
    elif isinstance(given, int | float):
        message.number_value = float(given)
    else:
        message.string_value = str(given)
    return message


def _fill_struct(target: _struct_pb2.Struct, given: dict[str, Any]) -> None:
    for key, item in given.items():
        target.fields[key].CopyFrom(_value(item))


def _fill_list(target: _struct_pb2.ListValue, given: list[Any]) -> None:
    for item in given:
        target.values.append(_value(item))


def _struct(given: Any) -> _struct_pb2.Struct:
    message = _struct_pb2.Struct()
    _fill_struct(message, given if isinstance(given, dict) else {"v": given})
    return message


def _list_value(given: Any) -> _struct_pb2.ListValue:
    message = _struct_pb2.ListValue()
    _fill_list(message, given if isinstance(given, list) else [given])
    return message


def _json_bytes(given: Any) -> bytes:
    try:
        return json.dumps(given).encode()
    except (ValueError, RecursionError):
        return b"null"


PAYLOAD_DATA: Strategy = st.one_of(
    JSON.map(_json_bytes),
    st.sampled_from([b"", b"NaN", b"Infinity", b"1e999", b"-", b'"\\ud800"', b"\xff\xfe"]),
    st.sampled_from([23, 24, 25, 49, 50, 99, 3_000]).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from([b"9" * 5_000, b'{"a":' * 60 + b"1" + b"}" * 60]),
    BYTES,
)
ENCODINGS: Strategy = st.one_of(
    st.sampled_from([b"json/plain", b"binary/null", b"binary/plain", b"", b"json", b"a/b/c"]),
    BYTES,
)


def _payload(encoding: bytes | None, data: bytes, extra: dict[str, bytes]) -> Message:
    message = common_pb2.Payload(metadata=extra, data=data)
    if encoding is not None:
        message.metadata["encoding"] = encoding
    return message


PAYLOAD: Strategy = st.builds(
    _payload,
    st.one_of(st.none(), ENCODINGS),
    PAYLOAD_DATA,
    st.dictionaries(st.text(max_size=8), BYTES, max_size=2),
)


FAILURE_CHAINS = [2, 16, 17, 30, 49, 50, 97, 98]
"""Lengths of `cause` chains, around the bounds that the edge and protobuf's parser set (a
client in Python cannot send one deeper inside a request: protobuf refuses to copy or parse
messages nested over 100 deep)."""


def _chain(top: Message, length: int) -> Message:
    """`top` with a chain of `length` plain causes below it."""
    chain = type(top)(message="cause")
    for _ in range(length - 1):
        outer = type(top)(message="cause")
        outer.cause.CopyFrom(chain)  # type: ignore[attr-defined]
        chain = outer
    # `top` is freshly generated and may hold a chain of its own: replace it rather than copy
    # it (a copy of a message nested past protobuf's limit fails in the client).
    top.ClearField("cause")
    top.cause.CopyFrom(chain)  # type: ignore[attr-defined]
    return top


def _well_known(
    message_type: descriptor.Descriptor, field_names: list[str], generic: Callable[[], Strategy]
) -> Strategy | None:
    """The strategies that replace (or add to) the generic one for a message type."""
    table: dict[str, Callable[[], Strategy]] = {
        "tideflow.api.v1.Failure": lambda: st.one_of(
            generic(),
            st.builds(_chain, generic(), st.sampled_from(FAILURE_CHAINS)),
        ),
        "google.protobuf.Duration": lambda: _seconds_and_nanos(duration_pb2.Duration),
        "google.protobuf.Timestamp": lambda: _seconds_and_nanos(timestamp_pb2.Timestamp),
        "google.protobuf.Value": lambda: JSON.map(_value),
        "google.protobuf.Struct": lambda: JSON.map(_struct),
        "google.protobuf.ListValue": lambda: JSON.map(_list_value),
        "google.protobuf.FieldMask": lambda: st.lists(
            st.one_of(st.sampled_from(field_names or ["x"]), STRINGS), max_size=4
        ).map(_field_mask),
        "tideflow.api.v1.Payload": lambda: PAYLOAD,
    }
    make = table.get(message_type.full_name)
    return make() if make is not None else None


def _field_mask(paths: list[str]) -> Message:
    return field_mask_pb2.FieldMask(paths=paths)


# -- messages ---------------------------------------------------------------------------------


def _field_names(message_type: descriptor.Descriptor, depth: int = 2) -> list[str]:
    """Dotted paths of a message's fields, for FieldMasks that name real fields."""
    names: list[str] = []
    for field in message_type.fields:
        names.append(field.name)
        if field.message_type is not None and depth > 0 and not _is_map(field):
            names += [f"{field.name}.{n}" for n in _field_names(field.message_type, depth - 1)]
    return names


def _is_map(field: FD) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _single(field: FD, depth: int, hints: Hints, masks: list[str]) -> Strategy:
    if field.name in hints:
        return hints[field.name]
    if field.message_type is None:
        return SCALARS[field.type](field)
    return message_strategy(field.message_type, hints=hints, depth=depth + 1, masks=masks)


def _entry(field: FD) -> tuple[FD, FD]:
    """The key and value fields of a map field."""
    assert field.message_type is not None
    fields = field.message_type.fields_by_name
    return fields["key"], fields["value"]


def _field(field: FD, depth: int, hints: Hints, masks: list[str]) -> Strategy:
    if _is_map(field):
        key, item = _entry(field)
        return st.dictionaries(
            _single(key, depth, hints, masks), _single(item, depth, hints, masks), max_size=3
        )
    one = _single(field, depth, hints, masks)
    if field.is_repeated:
        return st.lists(one, max_size=3)
    return one


def _assign(message: Message, field: FD, given: Any) -> None:
    target = getattr(message, field.name)
    if _is_map(field):
        for key, item in given.items():
            if _entry(field)[1].message_type is not None:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        if field.message_type is not None:
            for item in given:
                target.add().CopyFrom(item)
        else:
            target.extend(given)
    elif field.message_type is not None:
        target.CopyFrom(given)
    else:
        setattr(message, field.name, given)


def message_strategy(
    message_type: descriptor.Descriptor,
    *,
    hints: Hints | None = None,
    depth: int = 0,
    masks: list[str] | None = None,
) -> st.SearchStrategy[Message]:
    """Messages of `message_type`: any subset of its fields set (the last of a oneof wins)."""
    hints = hints or {}
    masks = _field_names(message_type) if masks is None else masks
    special = _well_known(
        message_type, masks, lambda: _generic(message_type, hints, max(depth, MAX_DEPTH), masks)
    )
    return special if special is not None else _generic(message_type, hints, depth, masks)


def _generic(
    message_type: descriptor.Descriptor, hints: Hints, depth: int, masks: list[str]
) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(message_type)
    if depth > MAX_DEPTH:
        return st.just(cls())
    # Fields are drawn lazily (deferred), so a recursive type (Failure.cause, Blueprint's
    # blocks) only builds the strategies of the depth it reaches.
    fields = {
        f.name: st.deferred(lambda f=f: _field(f, depth, hints, masks))  # type: ignore[misc]
        for f in message_type.fields
    }

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, given in values.items():
            _assign(message, message_type.fields_by_name[name], given)
        return message

    return st.fixed_dictionaries({}, optional=fields).map(build)
