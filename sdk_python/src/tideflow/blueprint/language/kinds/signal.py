"""`signal`: wait for a named signal (a human's approval), with a timeout and escalations.

```yaml
- id: approval
  needs: [draft]
  signal:
    signal_name: approve
    accept: "signal.amount <= 1000"      # CEL over the payload; optional
    timeout: 172800s
    on_timeout: auto_reject              # a block that needs this one; optional
    escalations:
      - {after: 86400s, goto: remind_manager}   # runs while this block keeps waiting
- id: remind_manager
  external: {block: notify@1}
- id: auto_reject
  needs: [approval]
  fail: {error_type: NotApproved}
```

Its output is the signal's payload (JSON, null when none). A signal that arrived before the
block started is kept, and the block takes the oldest one of its name that `accept` admits;
otherwise the block waits (`commands.AwaitSignal`) and each signal of its name is offered to
the waiting blocks in the order they started, the first that accepts taking it. A signal no
block takes stays for a later one.

The timeout fails the block with a TimeoutError; with `on_timeout` the failure routes the run
there (a handled failure), without it the run fails. An escalation's target is started only
by the escalation, after `after` from the block's start (each next escalation's timer is
armed when the one before fires), never because its needs are done, and is skipped when the
block ends before its escalation is due. When the block ends its open timers are canceled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language import policy as _policy
from tideflow.blueprint.language.commands import (
    AwaitSignal,
    CancelTimer,
    Command,
    CompleteBlock,
    ConsumeSignal,
    Escalate,
    FailBlock,
    StartTimer,
)
from tideflow.blueprint.language.events import SignalReceived, TimerFired
from tideflow.blueprint.language.kinds.base import BlockContext, Kind, Site, by_event_type
from tideflow.blueprint.language.model import BlockError
from tideflow.blueprint.language.templates import Expression
from tideflow.blueprint.language.values import duration_text, normalize

MAX_SIGNAL_NAME = 255
"""As the frontend's `max_signal_name_length` default: a longer name could never be sent."""
TIMEOUT_ERROR = "TimeoutError"


@dataclass(frozen=True, slots=True)
class Escalation:
    after: timedelta
    """Since the block started."""
    goto: str


@dataclass(frozen=True, slots=True)
class SignalPlan:
    name: str
    accept: Expression | None = None
    timeout: timedelta | None = None
    on_timeout: str | None = None
    escalations: tuple[Escalation, ...] = ()
    ends_run: bool = False


def timeout_timer(block_id: str) -> str:
    return f"{block_id}:timeout"


def escalation_timer(block_id: str, index: int) -> str:
    return f"{block_id}:escalation:{index}"


def check(site: Site) -> SignalPlan:
    signal = site.block.signal
    path = f"{site.path}.signal"
    bounded = not site.stored
    if not signal.signal_name:
        site.report(f"{path}.signal_name", "the signal name is required")
    elif len(signal.signal_name) > MAX_SIGNAL_NAME:
        site.report(f"{path}.signal_name", f"is longer than {MAX_SIGNAL_NAME} characters")
    accept = None
    if signal.accept:
        reads = frozenset({"signal"})
        accept = site.condition(signal.accept, f"{path}.accept", reads=reads)
    timeout = None
    if signal.HasField("timeout"):
        timeout = _positive(site, signal.timeout, f"{path}.timeout", bounded)
    if signal.on_timeout:
        if not signal.HasField("timeout"):
            site.report(f"{path}.on_timeout", "needs a timeout")
        site.goto(signal.on_timeout, f"{path}.on_timeout")
    escalations = _escalations(site, signal, path, timeout, bounded)
    return SignalPlan(
        name=signal.signal_name,
        accept=accept,
        timeout=timeout,
        on_timeout=signal.on_timeout or None,
        escalations=escalations,
    )


def _positive(site: Site, duration: Any, path: str, bounded: bool) -> timedelta | None:
    if not _policy.check_duration(duration, path, site.report, bounded=bounded):
        return None
    if not duration.seconds and not duration.nanos:
        site.report(path, "must be more than 0s")
        return None
    value: timedelta = duration.ToTimedelta()
    return value


def _escalations(
    site: Site,
    signal: blueprint_pb2.SignalBlock,
    path: str,
    timeout: timedelta | None,
    bounded: bool,
) -> tuple[Escalation, ...]:
    found: list[Escalation] = []
    for i, escalation in enumerate(signal.escalations):
        at = f"{path}.escalations[{i}]"
        after = _positive(site, escalation.after, f"{at}.after", bounded)
        if after is not None and found and after <= found[-1].after:
            site.report(f"{at}.after", "must be later than the escalation before it")
        elif after is not None and timeout is not None and after >= timeout:
            site.report(f"{at}.after", "must be earlier than the timeout")
        site.trigger(escalation.goto, f"{at}.goto")
        if after is not None:
            found.append(Escalation(after, escalation.goto))
    return tuple(found)


def start(plan: SignalPlan, block: BlockContext) -> Sequence[Command]:
    for signal in block.signals:
        if signal.name == plan.name and _accepts(plan, block, signal.input):
            return _take(block, signal.event_id, signal.input, ())
    block_id = block.block_id
    commands: list[Command] = [AwaitSignal(block_id, plan.name)]
    if plan.timeout is not None:
        commands.append(StartTimer(block_id, timeout_timer(block_id), after=plan.timeout))
    if plan.escalations:
        first = plan.escalations[0].after
        commands.append(StartTimer(block_id, escalation_timer(block_id, 0), after=first))
    return commands


def _accepts(plan: SignalPlan, block: BlockContext, payload: Any) -> bool:
    if plan.accept is None:
        return True
    return plan.accept.evaluate_bool(block.env.bind({"signal": normalize(payload)}))


def _take(
    block: BlockContext, event_id: int, payload: Any, cancels: Sequence[Command]
) -> list[Command]:
    return [
        ConsumeSignal(block.block_id, event_id),
        *cancels,
        CompleteBlock(
            block.block_id, blueprint_pb2.BLOCK_KIND_SIGNAL, output=payload, cause_event_id=event_id
        ),
    ]


def _open_timers(plan: SignalPlan, block: BlockContext, *, timeout: bool) -> list[Command]:
    """Cancel the timers still open when the block ends: the timeout (unless it fired) and
    the next escalation, if one is left."""
    block_id = block.block_id
    cancels: list[Command] = []
    if timeout and plan.timeout is not None:
        cancels.append(CancelTimer(block_id, timeout_timer(block_id)))
    done = len(block.view.escalated) if block.view is not None else 0
    if done < len(plan.escalations):
        cancels.append(CancelTimer(block_id, escalation_timer(block_id, done)))
    return cancels


def _signal_received(
    plan: SignalPlan, block: BlockContext, event: SignalReceived
) -> Sequence[Command]:
    if event.name != plan.name or not _accepts(plan, block, event.input):
        return ()
    return _take(block, event.event_id, event.input, _open_timers(plan, block, timeout=True))


def _timer_fired(plan: SignalPlan, block: BlockContext, event: TimerFired) -> Sequence[Command]:
    block_id = block.block_id
    if event.timer_id == timeout_timer(block_id) and plan.timeout is not None:
        waited = duration_text(plan.timeout // timedelta(microseconds=1) * 1_000)
        error = BlockError(
            TIMEOUT_ERROR, f"signal {plan.name} not received within {waited}", non_retryable=True
        )
        return [
            *_open_timers(plan, block, timeout=False),
            FailBlock(block_id, error, route=plan.on_timeout, cause_event_id=event.event_id),
        ]
    for index, escalation in enumerate(plan.escalations):
        if event.timer_id == escalation_timer(block_id, index):
            commands: list[Command] = [Escalate(block_id, escalation.goto)]
            if index + 1 < len(plan.escalations):
                wait = plan.escalations[index + 1].after - escalation.after
                timer = escalation_timer(block_id, index + 1)
                commands.append(StartTimer(block_id, timer, after=wait))
            return commands
    return ()


_HANDLERS: Mapping[type, Callable[[SignalPlan, BlockContext, Any], Sequence[Command]]] = {
    SignalReceived: _signal_received,
    TimerFired: _timer_fired,
}


on_event = by_event_type(_HANDLERS)


KIND = Kind(
    name="signal",
    field="signal",
    kind=blueprint_pb2.BLOCK_KIND_SIGNAL,
    check=check,
    start=start,
    on_event=on_event,
)
