"""Retry policies and timeouts as the builder takes them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from google.protobuf import duration_pb2

from tideflow.api.v1 import common_pb2


def duration(value: timedelta) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message


UNLIMITED = -1
"""`Retry(maximum_attempts=UNLIMITED)`: retry until schedule_to_close, if set, ends the block."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """`RetryPolicy`; unset fields take the blueprint's defaults, then the engine's (1 s
    initial interval, backoff 2.0, maximum interval 100 x initial, 10 attempts, jitter 0.2)."""

    initial_interval: timedelta | None = None
    backoff_coefficient: float = 0.0
    maximum_interval: timedelta | None = None
    maximum_attempts: int = 0
    """Attempts in all, the first included; 0 = not set, `UNLIMITED` (-1) = no limit."""
    jitter: float = 0.0
    non_retryable_error_types: tuple[str, ...] = ()

    def to_proto(self) -> common_pb2.RetryPolicy:
        message = common_pb2.RetryPolicy(
            backoff_coefficient=self.backoff_coefficient,
            maximum_attempts=self.maximum_attempts,
            jitter=self.jitter,
            non_retryable_error_types=list(self.non_retryable_error_types),
        )
        if self.initial_interval is not None:
            message.initial_interval.CopyFrom(duration(self.initial_interval))
        if self.maximum_interval is not None:
            message.maximum_interval.CopyFrom(duration(self.maximum_interval))
        return message


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """`BlockTimeouts`; unset fields take the blueprint's defaults."""

    schedule_to_start: timedelta | None = None
    start_to_close: timedelta | None = None
    schedule_to_close: timedelta | None = None
    heartbeat: timedelta | None = None

    def to_proto(self) -> common_pb2.BlockTimeouts:
        message = common_pb2.BlockTimeouts()
        for name in ("schedule_to_start", "start_to_close", "schedule_to_close", "heartbeat"):
            value: timedelta | None = getattr(self, name)
            if value is not None:
                getattr(message, name).CopyFrom(duration(value))
        return message
