"""History's second line: a payload the frontend should have refused is still
INVALID_ARGUMENT naming its field, never an internal error."""

from __future__ import annotations

import pytest

from tideflow.api.v1 import common_pb2
from tideflow_server.history.payloads import from_payloads, to_payloads
from tideflow_server.rpc.errors import InvalidArgument


def _payloads(*given: tuple[bytes, bytes]) -> common_pb2.Payloads:
    return common_pb2.Payloads(
        payloads=[common_pb2.Payload(metadata={"encoding": e}, data=d) for d, e in given]
    )


def test_json_and_null_are_read() -> None:
    assert from_payloads(to_payloads({"a": [1, 2.5, None]}), "input") == {"a": [1, 2.5, None]}
    assert from_payloads(_payloads((b"", b"binary/null")), "input") is None
    assert from_payloads(common_pb2.Payloads(), "input") is None


@pytest.mark.parametrize(
    ("given", "field"),
    [
        (_payloads((b"{not json", b"json/plain")), "result.payloads[0].data"),
        (_payloads((b"NaN", b"json/plain")), "result.payloads[0].data"),
        (_payloads((b"1e999", b"json/plain")), "result.payloads[0].data"),
        (_payloads((b"\x00", b"binary/plain")), 'result.payloads[0].metadata["encoding"]'),
        (_payloads((b"1", b"json/plain"), (b"2", b"json/plain")), "result.payloads"),
        # Deeper than the engine keeps (the frontend refuses past max_json_depth, 24).
        (_payloads((b"[" * 31 + b"]" * 31, b"json/plain")), "result.payloads[0].data"),
    ],
)
def test_anything_else_names_the_field(given: common_pb2.Payloads, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        from_payloads(given, "result")
    assert [v.field for v in raised.value.violations] == [field]
