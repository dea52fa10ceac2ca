"""`google.protobuf.Value`s with no kind set, anywhere in a blueprint.

A client that builds `Value()` and never fills it in (Go's `&structpb.Value{}`, an empty
message in any language) sends a value that reads as null at run time. Nothing in a
blueprint means that (null is `null_value`), so registration reports each one with its path.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from tideflow.blueprint._language.templates import field_path


def unset_values(message: Message, path: str = "") -> Iterator[str]:
    """The path of every Value under `message` (inside lists and objects too) with no kind."""
    if isinstance(message, struct_pb2.Value):
        kind = message.WhichOneof("kind")
        if kind is None:
            yield path
        elif kind in ("struct_value", "list_value"):
            yield from unset_values(getattr(message, kind), path)
        return
    if isinstance(message, struct_pb2.Struct):
        for key in sorted(message.fields):
            yield from unset_values(message.fields[key], field_path(path, key))
        return
    if isinstance(message, struct_pb2.ListValue):
        for i, item in enumerate(message.values):
            yield from unset_values(item, field_path(path, i))
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
                    yield from unset_values(value[key], field_path(at, str(key)))
        elif field.is_repeated:
            for i, item in enumerate(value):
                yield from unset_values(item, field_path(at, i))
        else:
            yield from unset_values(value, at)
