"""`event`: wait for a published event of a type whose correlation key this run names.

```yaml
- id: paid
  needs: [invoice]
  event:
    event_type: payment.received
    correlation: "input.order_id"          # CEL giving the key, evaluated when the block starts
    accept: "event.payload.amount >= 10"   # CEL over the event; optional
    timeout: 86400s
    on_timeout: remind                     # a block that needs this one; optional
- id: remind
  needs: [paid]
  external: {block: notify@1}
```

Events are published to the namespace (`FlowService.PublishEvent`, `tidectl event publish`)
and kept for the server's retention (`events.retention_s`). When the block starts it computes
its key and waits (`commands.AwaitEvent`); the engine then offers it the kept events of its
type and key, oldest first, and every later one, until it takes one. Its output is the event:
`{"event_id", "event_type", "correlation_key", "payload", "publish_time"}` (the payload as
JSON, null when none; the time as RFC 3339 text). An event reaches a run at most once (by its
id), however often it is published or delivered.

The key must be a string (an integer is taken as its decimal text) of at most 255
characters; anything else fails the block. The timeout fails the block with a TimeoutError;
with `on_timeout` the failure routes the run there (a handled failure).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language import policy as _policy
from tideflow.blueprint.language.commands import (
    AwaitEvent,
    CancelTimer,
    Command,
    CompleteBlock,
    FailBlock,
    StartTimer,
)
from tideflow.blueprint.language.events import EventReceived, TimerFired
from tideflow.blueprint.language.kinds.base import BlockContext, Kind, Site, by_event_type
from tideflow.blueprint.language.model import JSON, BlockError
from tideflow.blueprint.language.templates import Expression, ExpressionError
from tideflow.blueprint.language.values import duration_text

MAX_EVENT_TYPE = 255
"""As the frontend's `max_event_type_length` default: a longer type could never be published."""
MAX_CORRELATION_KEY = 255
"""As the frontend's `max_correlation_key_length` default."""
TIMEOUT_ERROR = "TimeoutError"


@dataclass(frozen=True, slots=True)
class EventPlan:
    event_type: str
    correlation: Expression | None = None
    """None: the key ""."""
    accept: Expression | None = None
    timeout: timedelta | None = None
    on_timeout: str | None = None
    ends_run: bool = False


def timeout_timer(block_id: str) -> str:
    return f"{block_id}:timeout"


def check(site: Site) -> EventPlan:
    event = site.block.event
    path = f"{site.path}.event"
    if not event.event_type:
        site.report(f"{path}.event_type", "the event type is required")
    elif len(event.event_type) > MAX_EVENT_TYPE:
        site.report(f"{path}.event_type", f"is longer than {MAX_EVENT_TYPE} characters")
    correlation = None
    if event.correlation:
        correlation = site.expression(event.correlation, f"{path}.correlation")
    accept = None
    if event.accept:
        accept = site.condition(event.accept, f"{path}.accept", reads=frozenset({"event"}))
    timeout = None
    if event.HasField("timeout"):
        timeout = _positive(site, event.timeout, f"{path}.timeout")
    if event.on_timeout:
        if not event.HasField("timeout"):
            site.report(f"{path}.on_timeout", "needs a timeout")
        site.goto(event.on_timeout, f"{path}.on_timeout")
    return EventPlan(
        event_type=event.event_type,
        correlation=correlation,
        accept=accept,
        timeout=timeout,
        on_timeout=event.on_timeout or None,
    )


def _positive(site: Site, duration: Any, path: str) -> timedelta | None:
    if not _policy.check_duration(duration, path, site.report, bounded=not site.stored):
        return None
    if not duration.seconds and not duration.nanos:
        site.report(path, "must be more than 0s")
        return None
    value: timedelta = duration.ToTimedelta()
    return value


def correlation_key(plan: EventPlan, block: BlockContext) -> str:
    """The key the block waits for, from the run's data when it starts."""
    if plan.correlation is None:
        return ""
    value = plan.correlation.evaluate(block.env)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or len(value) > MAX_CORRELATION_KEY:
        raise ExpressionError(
            expression=plan.correlation.source,
            path=plan.correlation.path,
            message=(
                f"wants a correlation key (a string of at most {MAX_CORRELATION_KEY} "
                f"characters), got {value!r:.100}"
            ),
        )
    return value


def start(plan: EventPlan, block: BlockContext) -> Sequence[Command]:
    block_id = block.block_id
    commands: list[Command] = [AwaitEvent(block_id, plan.event_type, correlation_key(plan, block))]
    if plan.timeout is not None:
        commands.append(StartTimer(block_id, timeout_timer(block_id), after=plan.timeout))
    return commands


def output(event: EventReceived) -> JSON:
    """The block's output: the event as the run took it."""
    return {
        "event_id": event.published_id,
        "event_type": event.event_type,
        "correlation_key": event.correlation_key,
        "payload": event.payload,
        "publish_time": event.publish_time,
    }


def _event_received(
    plan: EventPlan, block: BlockContext, event: EventReceived
) -> Sequence[Command]:
    if event.event_type != plan.event_type:
        return ()
    taken = output(event)
    if plan.accept is not None and not plan.accept.evaluate_bool(block.env.bind({"event": taken})):
        return ()
    block_id = block.block_id
    cancels: list[Command] = []
    if plan.timeout is not None:
        cancels.append(CancelTimer(block_id, timeout_timer(block_id)))
    complete = CompleteBlock(
        block_id, blueprint_pb2.BLOCK_KIND_EVENT, output=taken, cause_event_id=event.event_id
    )
    return [*cancels, complete]


def _timer_fired(plan: EventPlan, block: BlockContext, event: TimerFired) -> Sequence[Command]:
    if event.timer_id != timeout_timer(block.block_id) or plan.timeout is None:
        return ()
    waited = duration_text(plan.timeout // timedelta(microseconds=1) * 1_000)
    error = BlockError(
        TIMEOUT_ERROR, f"event {plan.event_type} not received within {waited}", non_retryable=True
    )
    return [FailBlock(block.block_id, error, route=plan.on_timeout, cause_event_id=event.event_id)]


_HANDLERS: Mapping[type, Callable[[EventPlan, BlockContext, Any], Sequence[Command]]] = {
    EventReceived: _event_received,
    TimerFired: _timer_fired,
}


on_event = by_event_type(_HANDLERS)


KIND = Kind(
    name="event",
    field="event",
    kind=blueprint_pb2.BLOCK_KIND_EVENT,
    check=check,
    start=start,
    on_event=on_event,
)
