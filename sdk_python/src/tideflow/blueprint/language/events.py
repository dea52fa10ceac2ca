"""What reaches a block that started and waits (`decide.deliver` -> its kind's `on_event`).

Each is built from a recorded event (invariant 4): a timer that fired, a signal that arrived.
Later kinds add theirs here (an event of a type and key, a child run that closed).
"""

from __future__ import annotations

from dataclasses import dataclass

from tideflow.blueprint.language.model import JSON


@dataclass(frozen=True, slots=True)
class TimerFired:
    """The block's timer `timer_id` fired (its TIMER_FIRED is `event_id`)."""

    timer_id: str
    event_id: int = 0


@dataclass(frozen=True, slots=True)
class SignalReceived:
    """A signal the run received (RUN_SIGNALED `event_id`), offered to a block waiting for its
    name; the block takes it by consuming it (`commands.ConsumeSignal`), or leaves it."""

    event_id: int
    name: str
    input: JSON = None


@dataclass(frozen=True, slots=True)
class EventReceived:
    """A published event (FlowService.PublishEvent) offered to the event block waiting for its
    type and key (its EVENT_RECEIVED is `event_id`); the block takes it by completing, or
    leaves it."""

    event_id: int
    published_id: str
    """The event's own id in its namespace."""
    event_type: str
    correlation_key: str
    payload: JSON = None
    publish_time: str = ""
    """RFC 3339, as recorded."""
