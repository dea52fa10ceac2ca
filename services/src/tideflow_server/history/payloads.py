"""JSON payloads: what blueprints pass between blocks, how they travel, and the encoding rules.

A JSON value travels as one Payload with `encoding: json/plain` metadata; any SDK in any
language can read and write that. Inside mutable state, outputs are kept as
google.protobuf.Value so expressions can read them without decoding payloads again.

The rules live here once. The frontend checks every payload of a request with `read_payload`
before anything else happens; history reads the payloads it interprets (run input, block
results) with `from_payloads`, which refuses the same things, as a second line: nothing
malformed should get that far, and what does is still INVALID_ARGUMENT, never INTERNAL.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final, NoReturn, cast

from google.protobuf import json_format, struct_pb2

from tideflow.api.v1 import common_pb2
from tideflow_server.history.interpreter import JSON
from tideflow_server.rpc.errors import FieldViolation, InvalidArgument

ENCODING = "encoding"
JSON_PLAIN = b"json/plain"
BINARY_PLAIN = b"binary/plain"
NULL = b"binary/null"

ENCODING_FIELD: Final = 'metadata["encoding"]'
"""Where, under a payload, its encoding is (a field path suffix)."""

# A media-type-like name, `type/subtype`, of RFC 6838's restricted-name characters.
_ENCODING_NAME: Final = re.compile(
    rb"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)
# `\ud800`..`\udfff`: only a valid pair of these escapes stands for a character.
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
_LARGEST_INT_DIGITS: Final = 309
"""Integers with fewer digits always fit a double (the largest is about 1.8e308)."""


class PayloadError(ValueError):
    """A payload that breaks the rules. `part` is the field under the payload that is wrong
    (`data`, `metadata`, `metadata["encoding"]`)."""

    def __init__(self, part: str, description: str) -> None:
        super().__init__(f"{part}: {description}")
        self.part = part
        self.description = description


def _no_constant(text: str) -> NoReturn:
    raise PayloadError("data", f"{text} is not a JSON number (json/plain has no NaN or Infinity)")


def _out_of_range(text: str) -> NoReturn:
    shown = text if len(text) <= 24 else f"{text[:20]}...({len(text)} characters)"
    raise PayloadError(
        "data", f"the number {shown} is out of range: JSON numbers are read as doubles"
    )


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        _out_of_range(text)
    return value


def _int(text: str) -> int:
    # Every value becomes a google.protobuf.Value, whose numbers are doubles.
    if len(text.lstrip("-")) >= _LARGEST_INT_DIGITS and math.isinf(float(text)):
        _out_of_range(text)
    return int(text)


# Built once: json.loads with hooks would build a decoder per call.
_DECODER: Final = json.JSONDecoder(parse_float=_float, parse_int=_int, parse_constant=_no_constant)


def decode_json(data: bytes) -> JSON:
    """The JSON value of json/plain `data`: UTF-8 (never the UTF-16/32 that json.loads would
    guess), one value, numbers that fit a double, strings of whole Unicode characters."""
    if not data:
        raise PayloadError(
            "data", 'is empty: json/plain data is one JSON value ("binary/null" means none)'
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PayloadError("data", f"is not UTF-8 (byte {e.start}): json/plain is UTF-8") from None
    try:
        value = cast(JSON, _DECODER.decode(text))
    except json.JSONDecodeError as e:
        raise PayloadError("data", f"is not JSON: {e}") from None
    except RecursionError:
        raise PayloadError("data", "nests arrays and objects too deeply") from None
    if _SURROGATE_ESCAPE.search(text) is not None:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise PayloadError(
                "data",
                "has a string with an unpaired surrogate escape (\\ud800-\\udfff); "
                "strings must be whole Unicode characters",
            ) from None
    return value


MAX_STATE_DEPTH: Final = 30
"""Levels of arrays and objects in a value the engine keeps as google.protobuf.Value (run
input, block outputs, variables). The run's state holds such a value four messages down and
each level costs up to three more, so 30 levels stay under the 100 that protobuf decoders
read back; inputs and results are bounded lower (`max_json_depth`), leaving room for what
blueprints wrap around them."""


def nesting_exceeds(data: bytes, value: JSON, limit: int) -> bool:
    """Whether `value` (decoded from `data`) nests arrays and objects deeper than `limit`."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # too few brackets to get there: nothing to walk
    return value_nesting_exceeds(value, limit)


def value_nesting_exceeds(value: JSON, limit: int) -> bool:
    """Whether `value` nests arrays and objects deeper than `limit`."""
    if not isinstance(value, list | dict):
        return False
    pending: list[tuple[list[JSON] | dict[str, JSON], int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        pending.extend((child, depth + 1) for child in children if isinstance(child, list | dict))
    return False


def read_payload(
    payload: common_pb2.Payload, *, engine_reads: bool, max_depth: int | None = None
) -> JSON:
    """The value of `payload` (None for binary/null, and for an opaque payload, which is not
    looked into beyond its encoding); PayloadError when it breaks the rules.

    Every payload: an `encoding` of the form type/subtype; json/plain data that decodes;
    binary/null data that is empty. A payload the engine reads (`engine_reads`) must be
    json/plain or binary/null, and json/plain nests at most `max_depth` levels."""
    encoding = payload.metadata.get(ENCODING)
    if not encoding:
        raise PayloadError(
            "metadata",
            'must set the "encoding" key, e.g. "json/plain", "binary/plain" or "binary/null"',
        )
    if encoding == JSON_PLAIN:
        value = decode_json(payload.data)
        if max_depth is not None and nesting_exceeds(payload.data, value, max_depth):
            raise PayloadError(
                "data", f"nests arrays and objects more than {max_depth} levels deep"
            )
        return value if engine_reads else None
    if encoding == NULL:
        if payload.data:
            raise PayloadError("data", "must be empty: binary/null stands for no value")
        return None
    shown = encoding.decode("utf-8", "backslashreplace")[:64]
    if engine_reads:
        raise PayloadError(
            ENCODING_FIELD,
            f'is "{shown}"; the engine reads this payload: "json/plain", or "binary/null" for '
            "no value (a codec's encoding must be undone before it reaches the engine)",
        )
    if _ENCODING_NAME.fullmatch(encoding) is None:
        raise PayloadError(
            ENCODING_FIELD, f'"{shown}" is not an encoding name: type/subtype, e.g. "binary/plain"'
        )
    return None


def to_payloads(value: JSON) -> common_pb2.Payloads:
    data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    return common_pb2.Payloads(
        payloads=[common_pb2.Payload(metadata={ENCODING: JSON_PLAIN}, data=data)]
    )


def from_payloads(payloads: common_pb2.Payloads, field: str) -> JSON:
    """The blueprint view of `payloads`, named `field` in the request: its one payload's value
    (None when there is none); INVALID_ARGUMENT naming the field for anything else."""
    if not payloads.payloads:
        return None
    if len(payloads.payloads) > 1:
        raise InvalidArgument(
            [FieldViolation(f"{field}.payloads", "the engine reads one JSON value here")]
        )
    try:
        return read_payload(payloads.payloads[0], engine_reads=True, max_depth=MAX_STATE_DEPTH)
    except PayloadError as e:
        raise InvalidArgument(
            [FieldViolation(f"{field}.payloads[0].{e.part}", e.description)]
        ) from None


def to_value(value: JSON) -> struct_pb2.Value:
    message = struct_pb2.Value()
    json_format.ParseDict(cast(Any, value), message)
    return message


def from_value(value: struct_pb2.Value) -> JSON:
    if not value.WhichOneof("kind"):
        return None
    return cast(JSON, json_format.MessageToDict(value))
