"""JSON payloads: what blueprints pass between blocks, and how they travel.

A JSON value travels as one Payload with `encoding: json/plain` metadata; any SDK in any
language can read and write that. Inside mutable state, outputs are kept as
google.protobuf.Value so expressions can read them without decoding payloads again.
"""

from __future__ import annotations

import base64
import json
from typing import Any, cast

from google.protobuf import json_format, struct_pb2

from tideflow.api.v1 import common_pb2
from tideflow_server.history.interpreter import JSON

ENCODING = "encoding"
JSON_PLAIN = b"json/plain"
BINARY_PLAIN = b"binary/plain"
NULL = b"binary/null"


def to_payloads(value: JSON) -> common_pb2.Payloads:
    data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    return common_pb2.Payloads(
        payloads=[common_pb2.Payload(metadata={ENCODING: JSON_PLAIN}, data=data)]
    )


def from_payload(payload: common_pb2.Payload) -> JSON:
    encoding = payload.metadata.get(ENCODING, JSON_PLAIN)
    if encoding == NULL:
        return None
    if encoding == JSON_PLAIN:
        if not payload.data:
            return None
        return cast(JSON, json.loads(payload.data))
    # Bytes the blueprint cannot look into: expose them base64-encoded.
    return base64.b64encode(payload.data).decode()


def from_payloads(payloads: common_pb2.Payloads) -> JSON:
    """The blueprint view of payloads: the first payload's value (None when there is none)."""
    if not payloads.payloads:
        return None
    return from_payload(payloads.payloads[0])


def to_value(value: JSON) -> struct_pb2.Value:
    message = struct_pb2.Value()
    json_format.ParseDict(cast(Any, value), message)
    return message


def from_value(value: struct_pb2.Value) -> JSON:
    if not value.WhichOneof("kind"):
        return None
    return cast(JSON, json_format.MessageToDict(value))
