"""Opaque page tokens for keyset paging: JSON of the last row's sort key."""

from __future__ import annotations

import json
from typing import Any

from tideflow_server.persistence.errors import InvalidPageToken


def encode(*key: Any) -> bytes:
    return json.dumps(list(key), separators=(",", ":")).encode()


def decode(token: bytes, arity: int) -> list[Any]:
    try:
        key = json.loads(token)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidPageToken("page token is not one this server issued") from e
    if not isinstance(key, list) or len(key) != arity:
        raise InvalidPageToken("page token is not one this server issued")
    return key
