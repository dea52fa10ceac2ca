"""`google.protobuf.Value`s with no kind set, or nested too deep, anywhere in a blueprint.

A client that builds `Value()` and never fills it in (Go's `&structpb.Value{}`, an empty
message in any language) sends a value that reads as null at run time. Nothing in a
blueprint means that (null is `null_value`), so registration reports each one with its path.

Each level of arrays and objects in a Value is two or three protobuf message levels, and
protobuf decoders refuse messages nested more than 100 levels: a value nested much deeper
than MAX_VALUE_DEPTH would make the stored flow, or the state of its runs, unreadable.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from tideflow.blueprint.language.templates import field_path

MAX_VALUE_DEPTH = 24
"""Levels of arrays and objects in one Value of a blueprint (vars, inputs, outputs, schemas),
as the server's `max_json_depth` bounds the JSON a run reads (frontend/limits.py)."""

UNSET_VALUE = (
    "a google.protobuf.Value with no kind set; give it one (null is null_value), or leave the "
    "field out"
)
TOO_DEEP = f"nests arrays and objects more than {MAX_VALUE_DEPTH} levels deep"


def value_problems(message: Message, path: str = "", depth: int = 0) -> Iterator[tuple[str, str]]:
    """(path, problem) of every Value under `message` (inside lists and objects too) with no
    kind, or with lists and objects nested more than MAX_VALUE_DEPTH levels (`depth`: the
    levels above `message`)."""
    if isinstance(message, struct_pb2.Value):
        kind = message.WhichOneof("kind")
        if kind is None:
            yield path, UNSET_VALUE
        elif kind in ("struct_value", "list_value"):
            yield from value_problems(getattr(message, kind), path, depth)
        return
    if isinstance(message, struct_pb2.Struct | struct_pb2.ListValue) and depth >= MAX_VALUE_DEPTH:
        yield path, TOO_DEEP
        return
    if isinstance(message, struct_pb2.Struct):
        for key in sorted(message.fields):
            yield from value_problems(message.fields[key], field_path(path, key), depth + 1)
        return
    if isinstance(message, struct_pb2.ListValue):
        for i, item in enumerate(message.values):
            yield from value_problems(item, field_path(path, i), depth + 1)
        return
    # Any other message: the message-typed fields that are set, maps and lists included.
    for field, value in message.ListFields():
        entry = field.message_type
        if entry is None:
            continue
        at = field_path(path, field.name)
        if entry.GetOptions().map_entry:
            if entry.fields_by_name["value"].message_type is not None:
                for key in sorted(value):
                    yield from value_problems(value[key], field_path(at, str(key)))
        elif field.is_repeated:
            for i, item in enumerate(value):
                yield from value_problems(item, field_path(at, i))
        else:
            yield from value_problems(value, at)
