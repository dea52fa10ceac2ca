"""tidectl's rendering of what DescribeRun returns."""

from __future__ import annotations

import pytest

from tideflow.cli import _render as render


@pytest.mark.parametrize(
    ("attempt", "maximum", "shown"),
    [(2, 10, "2/10"), (7, -1, "7/unlimited"), (3, 0, "3/unlimited")],
)
def test_attempts_read_unlimited_below_one(attempt: int, maximum: int, shown: str) -> None:
    assert render.attempts(attempt, maximum) == shown
