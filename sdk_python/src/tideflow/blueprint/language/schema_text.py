"""JSON Schema errors in JSON's words.

jsonschema writes the values in its messages with Python's `repr`: `None is not of type
'string'`, `True is not one of ['a', None]`. Blueprint authors and API clients think in JSON,
so the values are rewritten as JSON (`null is not of type "string"`), and a long value is
cut short: an error travels in a gRPC trailer, which has a size limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from jsonschema.exceptions import ValidationError

_LONGEST = 120
"""Characters of one value shown in a message."""
_MOST_ITEMS = 100
"""Items of a list or object looked for in a message, past which it is not worth it."""
_ITEMS_OF_THE_INSTANCE = frozenset({"additionalProperties", "unevaluatedProperties"})
"""Keywords whose message names items of the failing value (the unexpected keys)."""


def json_text(value: object) -> str:
    """`value` as JSON, cut to `_LONGEST` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = str(value)
    return text if len(text) <= _LONGEST else f"{text[: _LONGEST - 3]}..."


def _shown_values(error: ValidationError) -> Iterator[object]:
    """What jsonschema may have written into the message: the failing value, the keyword's
    argument, and items of those (a missing property, an allowed value, an unexpected key)."""
    yield error.instance
    yield error.validator_value
    containers = [error.validator_value]
    if error.validator in _ITEMS_OF_THE_INSTANCE:
        containers.append(error.instance)
    for value in containers:
        if isinstance(value, list | dict) and len(value) <= _MOST_ITEMS:
            yield from value


def schema_message(error: ValidationError) -> str:
    """`error.message` with every value as JSON."""
    swaps: dict[str, str] = {}
    for value in _shown_values(error):
        old, new = repr(value), json_text(value)
        if old != new:
            swaps[old] = new
    # Longest first, each through a placeholder (a NUL never appears in a repr), so that a
    # value inside another is rewritten with it and nothing is rewritten twice; a long value
    # goes first, which also makes the message short before the rest is looked for.
    message, placed = error.message, list[str]()
    for old in sorted(swaps, key=len, reverse=True):
        if old in message:
            message = message.replace(old, f"\0{len(placed)}\0")
            placed.append(swaps[old])
    for i, new in enumerate(placed):
        message = message.replace(f"\0{i}\0", new)
    return message
