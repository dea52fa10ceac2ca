"""How long a call may take, given its caller's deadline: the arithmetic every role shares.

A long poll that is still waiting when its caller's deadline passes answers nobody: the
caller sees DEADLINE_EXCEEDED and the answer (perhaps a task) is lost in flight. So a long
poll answers a margin before the deadline, and a call made on a caller's behalf gets a
timeout that ends a margin before the caller's own.
"""

from __future__ import annotations

from typing import Final

REPLY_MARGIN_S: Final = 1.0
"""How long before its caller's deadline a call answers, at most."""
MIN_CALL_TIMEOUT_S: Final = 0.1
"""The shortest timeout a call made on a caller's behalf gets, however near its deadline."""


def wait_budget(
    configured_s: float, remaining_s: float | None, *, margin_s: float = REPLY_MARGIN_S
) -> float:
    """How long a long poll may wait: `configured_s`, cut to end `margin_s` (at most a fifth
    of the time left) before the caller's deadline. 0 when there is no time to wait."""
    if remaining_s is None:
        return configured_s
    return max(0.0, min(configured_s, remaining_s - min(margin_s, remaining_s / 5)))


def call_timeout(expected_s: float, remaining_s: float | None) -> float:
    """The timeout of a call made on a caller's behalf that may take `expected_s`: cut to end
    a margin before the caller's deadline (`remaining_s`, None when it has none)."""
    if remaining_s is None:
        return expected_s
    return min(expected_s, max(MIN_CALL_TIMEOUT_S, remaining_s - REPLY_MARGIN_S))
