"""`wait`: wait for a duration, or until a time, on the durable timer queue.

```yaml
- id: cool_off
  needs: [notify]
  wait: {duration: 3600s}
- id: until_due
  wait: {until_expr: "input.due_at"}   # CEL giving a timestamp (RFC 3339 text)
```

Starting it arms one timer (`commands.StartTimer`); a time already past fires at once. The
block is RUNNING until the timer fires, then completes with a null output. A wait costs a
timer row and nothing else while it waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language import policy as _policy
from tideflow.blueprint.language.commands import Command, CompleteBlock, StartTimer
from tideflow.blueprint.language.events import TimerFired
from tideflow.blueprint.language.kinds.base import BlockContext, Kind, Site
from tideflow.blueprint.language.templates import Expression, ExpressionError

MAX_TIMESTAMP_SECONDS = 253_402_300_799
"""9999-12-31T23:59:59Z, the last time a google.protobuf.Timestamp holds."""


@dataclass(frozen=True, slots=True)
class WaitPlan:
    after: timedelta | None = None
    at: datetime | None = None
    until: Expression | None = None
    """CEL giving the time to wait until, evaluated when the block starts."""
    ends_run: bool = False


def timer_id(block_id: str) -> str:
    return f"{block_id}:wait"


def check(site: Site) -> WaitPlan | None:
    wait = site.block.wait
    path = f"{site.path}.wait"
    target = wait.WhichOneof("target")
    if target == "duration":
        if _policy.check_duration(
            wait.duration, f"{path}.duration", site.report, bounded=not site.stored
        ):
            return WaitPlan(after=wait.duration.ToTimedelta())
    elif target == "until":
        if 0 < wait.until.seconds <= MAX_TIMESTAMP_SECONDS and 0 <= wait.until.nanos < 10**9:
            return WaitPlan(at=wait.until.ToDatetime(tzinfo=UTC))
        site.report(f"{path}.until", "is not a time between 1970 and 9999")
    elif target == "until_expr":
        until = site.expression(wait.until_expr, f"{path}.until_expr")
        if until is not None:
            return WaitPlan(until=until)
        if not wait.until_expr:
            site.report(f"{path}.until_expr", "the CEL expression is required")
    else:
        site.report(path, "set duration, until or until_expr")
    return None


def start(plan: WaitPlan, block: BlockContext) -> Sequence[Command]:
    at = plan.at if plan.until is None else _deadline(plan.until, block)
    return [StartTimer(block.block_id, timer_id(block.block_id), after=plan.after, at=at)]


def _deadline(until: Expression, block: BlockContext) -> datetime:
    """`until_expr`'s time: CEL timestamps reach JSON as RFC 3339 text."""
    value = until.evaluate(block.env)
    try:
        if not isinstance(value, str):
            raise ValueError
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ExpressionError(
            expression=until.source,
            path=until.path,
            message=f"wants a timestamp (RFC 3339 text), got {value!r:.100}",
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def on_event(plan: WaitPlan, block: BlockContext, event: object) -> Sequence[Command]:
    if not isinstance(event, TimerFired) or event.timer_id != timer_id(block.block_id):
        return ()
    return [
        CompleteBlock(block.block_id, blueprint_pb2.BLOCK_KIND_WAIT, cause_event_id=event.event_id)
    ]


KIND = Kind(
    name="wait",
    field="wait",
    kind=blueprint_pb2.BLOCK_KIND_WAIT,
    check=check,
    start=start,
    on_event=on_event,
)
