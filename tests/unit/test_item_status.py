"""A batch item's status carries what a single call's status would: code, reason, and the
field violations of INVALID_ARGUMENT (a lone completion travels as a batch of one)."""

from __future__ import annotations

from tideflow_server.rpc.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    from_item_status,
    to_item_status,
)


def test_field_violations_survive_an_item_status() -> None:
    error = InvalidArgument(
        [FieldViolation("result", "too big for the step it causes")],
        reason="SIZE_LIMIT_EXCEEDED",
    )
    back = from_item_status(to_item_status(error))
    assert isinstance(back, InvalidArgument)
    assert back.violations == error.violations
    assert back.reason == "SIZE_LIMIT_EXCEEDED"


def test_other_errors_keep_code_reason_and_message() -> None:
    error = NotFound("gone", reason="BLOCK_TASK_NOT_FOUND", metadata={"k": "v"})
    back = from_item_status(to_item_status(error))
    assert isinstance(back, NotFound)
    assert (back.message, back.reason, back.metadata) == (
        "gone",
        "BLOCK_TASK_NOT_FOUND",
        {"k": "v"},
    )
