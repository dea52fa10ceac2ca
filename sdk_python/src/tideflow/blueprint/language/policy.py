"""Retry policies and timeouts of external blocks: checks, effective values, and the delay
between attempts. This module owns the engine's defaults; the server records the effective
policy (every field filled in) when it schedules a block, and retries by that record.

A block's own fields override the blueprint's defaults field by field; the engine's defaults
fill what neither sets. Presence follows the proto: a retry interval counts as set when the
message field is present (`"0s"` is a valid initial interval), a number when it is non-zero,
a timeout when it is non-zero ("Unset (zero) fields take the blueprint's defaults").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta

from google.protobuf import duration_pb2

from tideflow.api.v1 import common_pb2
from tideflow.blueprint.language.values import duration_text

ENGINE_INITIAL_INTERVAL = duration_pb2.Duration(seconds=1)
ENGINE_BACKOFF_COEFFICIENT = 2.0
ENGINE_MAXIMUM_INTERVAL_FACTOR = 100
"""The default maximum interval is this many initial intervals."""
ENGINE_MAXIMUM_ATTEMPTS = 10
"""Attempts in all when neither the block nor the blueprint sets maximum_attempts. With the
other defaults the retries wait 1, 2, 4 ... 64 s, then 100 s twice (less jitter): about five
minutes, enough to ride out a worker restart or a short outage of what the block calls, while
a block that can never succeed fails its run in minutes instead of retrying for ever."""
UNLIMITED_ATTEMPTS = -1
"""maximum_attempts that retries without limit (then schedule_to_close bounds the block)."""
ENGINE_JITTER = 0.2

_TIMEOUT_FIELDS = ("schedule_to_start", "start_to_close", "schedule_to_close", "heartbeat")

Report = Callable[[str, str], None]
"""(field path, description)"""


def nanos(duration: duration_pb2.Duration) -> int:
    return duration.seconds * 1_000_000_000 + duration.nanos


MAX_TIMEOUT = timedelta(days=3650)
"""The longest timeout a blueprint may set (a block's, and `run_timeout`): ten years, as a
start request's own run_timeout. Every deadline must stay a date the engine can write."""
MAX_RETRY_INTERVAL = timedelta(days=365)
"""The longest retry interval (initial and maximum). The default maximum interval is 100
initial intervals, so a retry is never due more than a century ahead."""

_MAX_PROTO_SECONDS = 315_576_000_000
"""google.protobuf.Duration's range: about 10,000 years either way."""


def _duration_problem(duration: duration_pb2.Duration, maximum: timedelta | None) -> str | None:
    seconds, nanos_part = duration.seconds, duration.nanos
    if (
        abs(seconds) > _MAX_PROTO_SECONDS
        or abs(nanos_part) >= 1_000_000_000
        or seconds * nanos_part < 0  # seconds and nanos must agree in sign
    ):
        return (
            f"is not a valid duration (seconds={seconds}, nanos={nanos_part}): seconds within "
            f"±{_MAX_PROTO_SECONDS}, nanos within ±999999999 and of the same sign"
        )
    if seconds < 0 or nanos_part < 0:
        return f"must not be negative, got {duration_text(nanos(duration))}"
    limit = None if maximum is None else maximum // timedelta(microseconds=1) * 1_000
    if limit is not None and nanos(duration) > limit:
        return f"is {duration_text(nanos(duration))}, over the limit of {duration_text(limit)}"
    return None


def check_run_timeout(
    duration: duration_pb2.Duration, path: str, report: Report, *, bounded: bool = True
) -> None:
    """`bounded`: check the maximum too (see check_retry)."""
    if problem := _duration_problem(duration, MAX_TIMEOUT if bounded else None):
        report(path, problem)


def check_duration(
    duration: duration_pb2.Duration, path: str, report: Report, *, bounded: bool = True
) -> bool:
    """A duration a block waits for (a `wait`, a signal's timeout or escalation): valid, not
    negative and, `bounded`, at most MAX_TIMEOUT. True when it is fine."""
    problem = _duration_problem(duration, MAX_TIMEOUT if bounded else None)
    if problem:
        report(path, problem)
    return problem is None


def effective_retry(*policies: common_pb2.RetryPolicy | None) -> common_pb2.RetryPolicy:
    """Every field from the first policy that sets it (the block's, then the blueprint's),
    else the engine's default."""
    given = [p for p in policies if p is not None]
    result = common_pb2.RetryPolicy()
    initial = next(
        (p.initial_interval for p in given if p.HasField("initial_interval")),
        ENGINE_INITIAL_INTERVAL,
    )
    result.initial_interval.CopyFrom(initial)
    maximum = next((p.maximum_interval for p in given if p.HasField("maximum_interval")), None)
    if maximum is None:
        # Kept within Duration's range: an invalid initial interval is check_retry's to
        # report, and must not break the registration that reports it.
        default = max(nanos(initial), 0) * ENGINE_MAXIMUM_INTERVAL_FACTOR
        result.maximum_interval.FromNanoseconds(min(default, _MAX_PROTO_SECONDS * 1_000_000_000))
    else:
        result.maximum_interval.CopyFrom(maximum)
    result.backoff_coefficient = next(
        (p.backoff_coefficient for p in given if p.backoff_coefficient),
        ENGINE_BACKOFF_COEFFICIENT,
    )
    result.maximum_attempts = next(
        (p.maximum_attempts for p in given if p.maximum_attempts), ENGINE_MAXIMUM_ATTEMPTS
    )
    result.jitter = next((p.jitter for p in given if p.jitter), ENGINE_JITTER)
    result.non_retryable_error_types.extend(
        next((p.non_retryable_error_types for p in given if p.non_retryable_error_types), [])
    )
    return result


def attempts_exhausted(policy: common_pb2.RetryPolicy, attempt: int) -> bool:
    """Whether `attempt` is the last one an effective policy allows. Any maximum below 1 is
    unlimited: -1, and the 0 that servers recorded as "unlimited" before the default became
    bounded (the policy in a pending block is the one in effect when it was scheduled)."""
    return 0 < policy.maximum_attempts <= attempt


def retry_delay(policy: common_pb2.RetryPolicy, attempt: int) -> timedelta:
    """How long after failed attempt `attempt` (from 1) the next one starts, before jitter:
    initial_interval x backoff_coefficient^(attempt - 1), at most maximum_interval. `policy`
    is an effective one; a field an older record lacks takes the engine's default."""
    effective = effective_retry(policy)
    initial = nanos(effective.initial_interval)
    maximum = nanos(effective.maximum_interval)
    try:
        grown = initial * effective.backoff_coefficient ** (attempt - 1)
    except OverflowError:  # thousands of attempts of an unlimited policy
        grown = math.inf
    return timedelta(microseconds=min(grown, maximum) / 1_000)


def effective_timeouts(*timeouts: common_pb2.BlockTimeouts | None) -> common_pb2.BlockTimeouts:
    given = [t for t in timeouts if t is not None]
    result = common_pb2.BlockTimeouts()
    for name in _TIMEOUT_FIELDS:
        value = next((getattr(t, name) for t in given if nanos(getattr(t, name))), None)
        if value is not None:
            getattr(result, name).CopyFrom(value)
    return result


def check_retry(
    policy: common_pb2.RetryPolicy, path: str, report: Report, *, bounded: bool = True
) -> bool:
    """Report what is wrong with one policy on its own; True when nothing is. `bounded`:
    check the maxima too, which came after flows were first registered (a stored version
    is loaded again without them)."""
    ok = True

    def bad(field: str, description: str) -> None:
        nonlocal ok
        ok = False
        report(f"{path}.{field}", description)

    for field in ("initial_interval", "maximum_interval"):
        if policy.HasField(field) and (
            problem := _duration_problem(
                getattr(policy, field), MAX_RETRY_INTERVAL if bounded else None
            )
        ):
            bad(field, problem)
    coefficient = policy.backoff_coefficient
    if coefficient and not (math.isfinite(coefficient) and coefficient >= 1):
        bad("backoff_coefficient", f"must be >= 1 (0 means the default), got {coefficient}")
    if policy.maximum_attempts < UNLIMITED_ATTEMPTS:
        bad(
            "maximum_attempts",
            f"must be >= 1, 0 (not set: the default) or {UNLIMITED_ATTEMPTS} (unlimited), "
            f"got {policy.maximum_attempts}",
        )
    if not 0 <= policy.jitter <= 1:  # NaN fails too
        bad("jitter", f"must be between 0 and 1, got {policy.jitter}")
    for i, error_type in enumerate(policy.non_retryable_error_types):
        if not error_type:
            bad(f"non_retryable_error_types[{i}]", "must not be empty")
    return ok


def check_interval_order(
    own: common_pb2.RetryPolicy, effective: common_pb2.RetryPolicy, path: str, report: Report
) -> None:
    """The effective maximum interval must not be shorter than the effective initial one.
    Reported where `own` sets one of them (the other may come from the defaults)."""
    initial, maximum = nanos(effective.initial_interval), nanos(effective.maximum_interval)
    if maximum >= initial:
        return
    if own.HasField("maximum_interval"):
        field = "maximum_interval"
    elif own.HasField("initial_interval"):
        field = "initial_interval"
    else:
        return
    report(
        f"{path}.{field}",
        f"maximum_interval ({duration_text(maximum)}) is shorter than initial_interval "
        f"({duration_text(initial)})",
    )


def check_timeouts(
    timeouts: common_pb2.BlockTimeouts, path: str, report: Report, *, bounded: bool = True
) -> None:
    """`bounded`: check the maximum too (see check_retry)."""
    for name in _TIMEOUT_FIELDS:
        if problem := _duration_problem(getattr(timeouts, name), MAX_TIMEOUT if bounded else None):
            report(f"{path}.{name}", problem)


def bounds_the_block(timeouts: common_pb2.BlockTimeouts) -> bool:
    """At least one of start_to_close and schedule_to_close is set."""
    return nanos(timeouts.start_to_close) > 0 or nanos(timeouts.schedule_to_close) > 0
