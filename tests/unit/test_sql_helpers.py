"""Pure helpers of the SQL layer."""

from __future__ import annotations

import pytest

from tideflow_server.persistence import InvalidPageToken
from tideflow_server.persistence.postgres._database import _numbered, _rowcount
from tideflow_server.persistence.sql import _paging


def test_placeholders_are_numbered_for_postgres() -> None:
    assert _numbered("SELECT a FROM t WHERE b = ? AND (c, d) > (?, ?)") == (
        "SELECT a FROM t WHERE b = $1 AND (c, d) > ($2, $3)"
    )


@pytest.mark.parametrize(
    ("tag", "count"), [("UPDATE 1", 1), ("DELETE 0", 0), ("INSERT 0 1", 1), ("CREATE TABLE", 0)]
)
def test_rowcount_from_command_tag(tag: str, count: int) -> None:
    assert _rowcount(tag) == count


def test_page_tokens_round_trip_and_reject_foreign_ones() -> None:
    assert _paging.decode(_paging.encode(1_000, "exec-1"), int, str) == [1_000, "exec-1"]
    for bad in (b"not json", b"{}", _paging.encode(1), b"\xff\xfe", b"[" * 5000 + b"]" * 5000):
        with pytest.raises(InvalidPageToken):
            _paging.decode(bad, int, str)


@pytest.mark.parametrize(
    "key", [("exec-1", 1_000), (1.5, "exec-1"), (True, "exec-1"), (2**63, "exec-1"), (1, None)]
)
def test_page_tokens_with_keys_of_the_wrong_type_are_foreign(key: tuple[object, ...]) -> None:
    # A database would refuse these keys with an internal error.
    with pytest.raises(InvalidPageToken):
        _paging.decode(_paging.encode(*key), int, str)
