"""Issue 17, item 8: a status never echoes unbounded input. Clients refuse trailing metadata
over 8 KiB, so an error that quoted a 16 KB key reached them as RESOURCE_EXHAUSTED."""

from __future__ import annotations

from grpc_status import rpc_status

from tideflow_server.rpc.errors import (
    MAX_MESSAGE_BYTES,
    MAX_VIOLATION_DESCRIPTION_BYTES,
    MAX_VIOLATION_FIELD_BYTES,
    FieldViolation,
    InvalidArgument,
    NotFound,
)

_CLIENT_METADATA_LIMIT = 8 * 1024


def _trailer_bytes(error: InvalidArgument | NotFound) -> int:
    status = rpc_status.to_status(error.to_status())
    return len(status.details.encode()) + sum(
        len(key) + len(value) for key, value in status.trailing_metadata
    )


def test_a_huge_field_and_description_are_cut_and_say_how_long_they_were() -> None:
    key = "k" * 20_000
    error = InvalidArgument([FieldViolation(f'data["{key}"]', f"key {key} is too long")])
    [violation] = error.violations
    assert len(violation.field.encode()) <= MAX_VIOLATION_FIELD_BYTES
    assert len(violation.description.encode()) <= MAX_VIOLATION_DESCRIPTION_BYTES
    assert violation.field.startswith('data["kkk')
    assert violation.field.endswith("...(20008 characters)")
    assert len(error.message.encode()) <= MAX_MESSAGE_BYTES
    assert _trailer_bytes(error) < _CLIENT_METADATA_LIMIT


def test_many_violations_are_counted_past_the_bound() -> None:
    error = InvalidArgument([FieldViolation(f"f{i}", "é" * 400) for i in range(1000)])
    assert error.violations[-1].field == ""
    assert error.violations[-1].description.startswith("and ")
    assert error.violations[-1].description.endswith(" more violations")
    assert len(error.violations) < 20
    assert _trailer_bytes(error) < _CLIENT_METADATA_LIMIT


def test_any_error_message_is_cut() -> None:
    error = NotFound("run " + "x" * 100_000 + " not found")
    assert len(error.message.encode()) <= MAX_MESSAGE_BYTES
    assert _trailer_bytes(error) < _CLIENT_METADATA_LIMIT


def test_a_small_error_is_unchanged() -> None:
    violations = [FieldViolation("run.run_id", "required")]
    error = InvalidArgument(violations)
    assert error.violations == violations
    assert error.message == "run.run_id: required"
