"""Payload conversion, public: how values become Payloads and back (json/plain, binary/null,
binary/plain), for code that speaks the generated stubs directly (a worker with its own poll
loop, such as the model worker) and for custom converters."""

from tideflow._converter import (
    ConversionError,
    DefaultConverter,
    PayloadConverter,
    check_engine_readable,
    from_payloads,
    to_payloads,
)

__all__ = [
    "ConversionError",
    "DefaultConverter",
    "PayloadConverter",
    "check_engine_readable",
    "from_payloads",
    "to_payloads",
]
