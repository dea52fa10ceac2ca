"""Opaque page tokens for keyset paging: JSON of the last row's sort key."""

from __future__ import annotations

import json
from typing import Any

from tideflow_server.persistence.errors import InvalidPageToken

_BIGINT = range(-(2**63), 2**63)


def encode(*key: Any) -> bytes:
    return json.dumps(list(key), separators=(",", ":")).encode()


def _fits(value: object, kind: type) -> bool:
    # A database would refuse a key of another type (or an integer past bigint) as an
    # internal error; a forged token is the caller's mistake.
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and value in _BIGINT
    return isinstance(value, kind)


def decode(token: bytes, *kinds: type) -> list[Any]:
    """The sort key in `token`, one value of each of `kinds`; InvalidPageToken for anything
    `encode` did not write."""
    try:
        key = json.loads(token)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise InvalidPageToken("page token is not one this server issued") from e
    if (
        not isinstance(key, list)
        or len(key) != len(kinds)
        or not all(_fits(v, k) for v, k in zip(key, kinds, strict=True))
    ):
        raise InvalidPageToken("page token is not one this server issued")
    return key
