"""Applying the interpreter's commands to a run: one applier per command type.

An applier records the command's events, changes the run's state and adds the outbox tasks
and timers it causes, all in the run step, which commits them together (invariant 2). The
table `APPLIERS` is the only place that looks at a command's type; a new primitive is a new
applier and a table line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tideflow.api.v1 import blueprint_pb2, common_pb2, failure_pb2, history_pb2
from tideflow_server.history import blocks, payloads
from tideflow_server.history.closing import close_run, engine_failure
from tideflow_server.history.interpreter import (
    AwaitEvent,
    AwaitSignal,
    BlockError,
    CancelTimer,
    CatchFailure,
    Command,
    CompiledBlueprint,
    CompleteBlock,
    CompleteRun,
    ConsumeSignal,
    Escalate,
    FailBlock,
    FailRun,
    RecordItem,
    RecordScopes,
    ScheduleExternal,
    SkipBlock,
    StartChild,
    StartLoop,
    StartMap,
    StartTimer,
)
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import records_pb2


@dataclass(frozen=True, slots=True)
class Applying:
    """What an applier may read besides the step: the run's blueprint and its limits."""

    compiled: CompiledBlueprint
    max_pending_blocks: int
    max_pending_children: int = 1_000
    """`history.max_pending_children`."""
    max_event_waits: int = 1_000
    """`history.max_event_waits`."""
    max_map_items: int = 0
    """The namespace's `limits.max_map_items` (0: the server's bound alone)."""


def apply(step: RunStep, command: Command, context: Applying) -> None:
    APPLIERS[type(command)](step, command, context)


def _schedule_external(step: RunStep, command: ScheduleExternal, context: Applying) -> None:
    if len(step.state.pending_blocks) >= context.max_pending_blocks:
        error = BlockError(
            "PendingBlocksLimitExceeded",
            f"more than {context.max_pending_blocks} blocks pending at once",
            non_retryable=True,
            server=True,
        )
        close_run(step, common_pb2.RUN_STATUS_FAILED, failure=engine_failure(error))
        return
    blocks.schedule(step, command)


def _complete_block(step: RunStep, command: CompleteBlock, context: Applying) -> None:
    if (failed := _too_deep(command)) is not None:
        _fail_block(step, failed, context)
        return
    event, attrs = step.add_event(
        history_pb2.EVENT_TYPE_SYSTEM_BLOCK_COMPLETED, "system_block_completed_event_attributes"
    )
    assert isinstance(attrs, history_pb2.SystemBlockCompletedEventAttributes)
    attrs.block_id = command.block_id
    attrs.kind = command.kind
    attrs.output.CopyFrom(payloads.to_value(command.output))
    attrs.cause_event_id = command.cause_event_id
    if command.vars:
        _, set_attrs = step.add_event(history_pb2.EVENT_TYPE_VARS_SET, "vars_set_event_attributes")
        assert isinstance(set_attrs, history_pb2.VarsSetEventAttributes)
        set_attrs.block_id = command.block_id
        for name, value in command.vars.items():
            set_attrs.vars[name].CopyFrom(payloads.to_value(value))
            step.info.vars[name].CopyFrom(payloads.to_value(value))
    result = step.state.block_results[command.block_id]
    result.status = common_pb2.BLOCK_STATUS_SUCCEEDED
    result.output.CopyFrom(attrs.output)
    result.close_event_id = event.event_id
    result.ClearField("awaiting_signal")
    result.ClearField("awaiting_event")
    _record_route(result, command.route)


def _record_route(result: records_pb2.BlockResult, route: str | None) -> None:
    if route is not None:
        result.routed = True
        result.route = route


def _too_deep(command: CompleteBlock) -> FailBlock | None:
    """A block whose output or variables nest too deep to keep (a blueprint that wraps a
    deep value in more levels): it fails, for the run's state must stay readable."""
    values = {"output": command.output, **{f"vars.{k}": v for k, v in command.vars.items()}}
    for name, value in values.items():
        if payloads.value_nesting_exceeds(value, payloads.MAX_STATE_DEPTH):
            message = (
                f"the block's {name} nests arrays and objects more than "
                f"{payloads.MAX_STATE_DEPTH} levels deep"
            )
            error = BlockError("ValueTooDeep", message, non_retryable=True, server=True)
            return FailBlock(block_id=command.block_id, error=error)
    return None


def _skip_block(step: RunStep, command: SkipBlock, context: Applying) -> None:
    # No event: a skip follows from the events before it, decided again on replay; the
    # reason is kept for operators.
    result = step.state.block_results[command.block_id]
    result.status = common_pb2.BLOCK_STATUS_SKIPPED
    result.skip_reason = command.reason


def _fail_block(step: RunStep, command: FailBlock, context: Applying) -> None:
    failure = engine_failure(command.error)
    event, attrs = step.add_event(
        history_pb2.EVENT_TYPE_SYSTEM_BLOCK_FAILED, "system_block_failed_event_attributes"
    )
    assert isinstance(attrs, history_pb2.SystemBlockFailedEventAttributes)
    attrs.block_id = command.block_id
    attrs.kind = context.compiled.block(command.block_id).kind
    attrs.failure.CopyFrom(failure)
    attrs.cause_event_id = command.cause_event_id
    result = step.state.block_results[command.block_id]
    result.status = common_pb2.BLOCK_STATUS_FAILED
    result.failure.CopyFrom(blocks.block_failure(command.block_id, failure))
    result.close_event_id = event.event_id
    result.ClearField("awaiting_signal")
    result.ClearField("awaiting_event")
    _record_route(result, command.route)


def _start_child(step: RunStep, command: StartChild, context: Applying) -> None:
    """CHILD_RUN_INITIATED, a pending child, and the outbox task that starts it; the block
    runs until the child's close (or a start that failed) is delivered to it."""
    if len(step.state.pending_children) >= context.max_pending_children:
        error = BlockError(
            "PendingChildrenLimitExceeded",
            f"more than {context.max_pending_children} child runs open at once "
            "(history.max_pending_children)",
            non_retryable=True,
        )
        _fail_block(step, FailBlock(command.block_id, error), context)
        return
    event, attrs = step.add_event(
        history_pb2.EVENT_TYPE_CHILD_RUN_INITIATED, "child_run_initiated_event_attributes"
    )
    assert isinstance(attrs, history_pb2.ChildRunInitiatedEventAttributes)
    attrs.block_id = command.block_id
    attrs.flow, attrs.run_id = command.flow, command.run_id
    if command.entry:
        # A map's item: this run's flow version, entered at the map (an entered run's own
        # entry first); its run_id is relative to this run's own.
        info = step.info
        attrs.flow = f"{info.flow.name}@{info.flow.version}"
        attrs.run_id = f"{info.run_id}/{command.run_id}"
        entry = context.compiled.entry
        attrs.entry = f"{entry}/{command.entry}" if entry else command.entry
    attrs.input.CopyFrom(payloads.to_payloads(command.input))
    attrs.task_queue.name = command.task_queue
    if command.run_timeout is not None:
        attrs.run_timeout.CopyFrom(command.run_timeout)
    attrs.parent_close_policy = command.parent_close_policy
    # Unique to this block's start: a redelivered start task is answered with the same child.
    attrs.request_id = f"{step.info.execution_id}/{event.event_id}"
    pending = step.state.pending_children[event.event_id]
    pending.block_id = command.block_id
    pending.initiated_event_id = event.event_id
    pending.run_id = attrs.run_id
    pending.parent_close_policy = command.parent_close_policy
    pending.initiated_batch_event_id = step.events[0].event_id
    pending.map_item = bool(command.entry)
    result = step.state.block_results[command.block_id]
    result.status = common_pb2.BLOCK_STATUS_RUNNING
    result.child_run.run_id = attrs.run_id
    step.add_transfer().start_child_run.initiated_event_id = event.event_id


def _catch_failure(step: RunStep, command: CatchFailure, context: Applying) -> None:
    # Recorded whatever the outcome, so the clauses are never judged again on other data.
    _, attrs = step.add_event(history_pb2.EVENT_TYPE_BLOCK_CAUGHT, "block_caught_event_attributes")
    assert isinstance(attrs, history_pb2.BlockCaughtEventAttributes)
    attrs.block_id = command.block_id
    attrs.outcome.clause = command.clause
    attrs.outcome.action = command.action
    attrs.outcome.goto = command.goto
    result = step.state.block_results[command.block_id]
    result.caught.CopyFrom(attrs.outcome)
    if command.action == blueprint_pb2.CATCH_ACTION_GOTO:
        _record_route(result, command.goto)
    elif command.action == blueprint_pb2.CATCH_ACTION_CONTINUE:
        # The failure is kept (`${blocks.<id>.error}`, DescribeRun); the error is the output.
        result.status = common_pb2.BLOCK_STATUS_SUCCEEDED
        result.output.CopyFrom(payloads.to_value(command.output))


# -- waits: timers and signals (a block that started and waits is RUNNING in block_results) --


def _start_timer(step: RunStep, command: StartTimer, context: Applying) -> None:
    """TIMER_STARTED with the fire time computed here, from the step's time (decide reads no
    clock); the open timer in `timers` and its row on the timer queue."""
    fire_at = command.at if command.at is not None else step.now + (command.after or timedelta())
    fire_at = max(fire_at, step.now)  # a time already past fires at once
    event, attrs = step.add_event(
        history_pb2.EVENT_TYPE_TIMER_STARTED, "timer_started_event_attributes"
    )
    assert isinstance(attrs, history_pb2.TimerStartedEventAttributes)
    attrs.timer_id = command.timer_id
    attrs.block_id = command.block_id
    attrs.start_to_fire_timeout.FromTimedelta(fire_at - step.now)
    attrs.fire_time.FromDatetime(fire_at)
    timer = step.state.timers[command.timer_id]
    timer.timer_id = command.timer_id
    timer.block_id = command.block_id
    timer.started_event_id = event.event_id
    timer.expiry_time.CopyFrom(attrs.fire_time)
    timer.task_created = True
    row = step.add_timer(fire_at).user_timer
    row.timer_id = command.timer_id
    row.started_event_id = event.event_id
    _waiting(step, command.block_id)


def _cancel_timer(step: RunStep, command: CancelTimer, context: Applying) -> None:
    """TIMER_CANCELED, and the timer leaves `timers`: its row finds it gone and does nothing."""
    timer = step.state.timers.get(command.timer_id)
    if timer is None or timer.block_id != command.block_id:
        return  # it fired, or was never armed
    _, attrs = step.add_event(
        history_pb2.EVENT_TYPE_TIMER_CANCELED, "timer_canceled_event_attributes"
    )
    assert isinstance(attrs, history_pb2.TimerCanceledEventAttributes)
    attrs.timer_id = command.timer_id
    attrs.started_event_id = timer.started_event_id
    del step.state.timers[command.timer_id]


def _await_signal(step: RunStep, command: AwaitSignal, context: Applying) -> None:
    # No event: the wait follows from the events before it. SignalRun finds the block here.
    _waiting(step, command.block_id).awaiting_signal = command.name


def _await_event(step: RunStep, command: AwaitEvent, context: Applying) -> None:
    """No event: the wait follows from the events before it (its key from the run's data).
    DeliverEvent finds the block here; the outbox task registers the wait with the event
    store and offers it the events kept there."""
    waiting = sum(1 for r in step.state.block_results.values() if r.HasField("awaiting_event"))
    if waiting >= context.max_event_waits:
        error = BlockError(
            "EventWaitsLimitExceeded",
            f"more than {context.max_event_waits} event blocks waiting at once "
            "(history.max_event_waits)",
            non_retryable=True,
        )
        _fail_block(step, FailBlock(command.block_id, error), context)
        return
    wait = _waiting(step, command.block_id).awaiting_event
    wait.event_type = command.event_type
    wait.correlation_key = command.correlation_key
    register = step.add_transfer().register_event_wait
    register.block_id = command.block_id
    register.event_type = command.event_type
    register.correlation_key = command.correlation_key


def _consume_signal(step: RunStep, command: ConsumeSignal, context: Applying) -> None:
    # The block's closing event names the RUN_SIGNALED it took (cause_event_id).
    kept = step.state.buffered_signals
    for i, signal in enumerate(kept):
        if signal.event_id == command.event_id:
            del kept[i]
            return


def _escalate(step: RunStep, command: Escalate, context: Applying) -> None:
    # No event: it follows from the escalation's TIMER_FIRED; decide starts the target.
    step.state.block_results[command.block_id].escalated.append(command.target)


def _waiting(step: RunStep, block_id: str) -> records_pb2.BlockResult:
    result = step.state.block_results[block_id]
    result.status = common_pb2.BLOCK_STATUS_RUNNING
    return result


def _start_map(step: RunStep, command: StartMap, context: Applying) -> None:
    _, attrs = step.add_event(history_pb2.EVENT_TYPE_MAP_STARTED, "map_started_event_attributes")
    assert isinstance(attrs, history_pb2.MapStartedEventAttributes)
    attrs.block_id = command.block_id
    for item in command.items:
        attrs.items.values.append(payloads.to_value(item))
    step.state.map_blocks[command.block_id].items.CopyFrom(attrs.items)
    _running(step, command.block_id, blueprint_pb2.BLOCK_KIND_MAP)


def _start_loop(step: RunStep, command: StartLoop, context: Applying) -> None:
    _, attrs = step.add_event(history_pb2.EVENT_TYPE_LOOP_STARTED, "loop_started_event_attributes")
    assert isinstance(attrs, history_pb2.LoopStartedEventAttributes)
    attrs.block_id = command.block_id
    _running(step, command.block_id, blueprint_pb2.BLOCK_KIND_LOOP)


def _running(step: RunStep, block_id: str, kind: blueprint_pb2.BlockKind.ValueType) -> None:
    result = step.state.block_results[block_id]
    result.kind = kind
    result.status = common_pb2.BLOCK_STATUS_RUNNING


def _record_item(step: RunStep, command: RecordItem, context: Applying) -> None:
    # No event: the child's CHILD_RUN_CLOSED (or _START_FAILED) is the item's record.
    outcome = step.state.map_blocks[command.block_id].outcomes[command.index]
    outcome.output.CopyFrom(payloads.to_value(command.outcome.output))
    error = command.outcome.error
    if error is not None:
        outcome.failed = True
        outcome.error_type, outcome.error_message = error.type, error.message
        outcome.server = error.server


def _record_scopes(step: RunStep, command: RecordScopes, context: Applying) -> None:
    # No event, as for a skip: the counts follow from the events before them.
    scopes = step.state.block_results[command.block_id].scopes
    scopes.opened = command.scopes.opened
    scopes.succeeded = command.scopes.succeeded
    scopes.failed = command.scopes.failed


def _complete_run(step: RunStep, command: CompleteRun, context: Applying) -> None:
    close_run(step, common_pb2.RUN_STATUS_COMPLETED, result=payloads.to_payloads(command.output))


def _fail_run(step: RunStep, command: FailRun, context: Applying) -> None:
    failure = failure_pb2.Failure()
    failure.CopyFrom(_run_failure(step, command))
    if command.compensated:
        # The saga's account, in the order the compensations ran; DescribeRun shows each
        # compensation block too (`BlockSummary.compensates`).
        ran = ", ".join(
            f"{c.block_id} by {c.by} ({_status(c.status)})" for c in command.compensated
        )
        failure.message = f"{failure.message}; compensated: {ran}"
    close_run(step, common_pb2.RUN_STATUS_FAILED, failure=failure)


def _run_failure(step: RunStep, command: FailRun) -> failure_pb2.Failure:
    """RUN_FAILED's failure: the failed block's as recorded when it closed (where, over its
    own failure as the cause), or the engine's error when no block failed the run."""
    result = step.state.block_results.get(command.block_id) if command.block_id else None
    if result is None or result.status not in (
        common_pb2.BLOCK_STATUS_FAILED,
        common_pb2.BLOCK_STATUS_CANCELED,
    ):
        failure = engine_failure(command.error)
        if command.block_id:  # a `succeed` block whose output breaks the output schema
            failure.message = f"block {command.block_id!r}: {failure.message}"
        return failure
    if result.failure.HasField("block_failure_info"):
        return result.failure
    # Canceled, or failed before blocks recorded where they failed: wrap what there is.
    cause = result.failure if result.HasField("failure") else engine_failure(command.error)
    failure = blocks.block_failure(command.block_id, cause)
    if result.status == common_pb2.BLOCK_STATUS_CANCELED:
        failure.message = f"block {command.block_id!r} was canceled"
    return failure


def _status(status: common_pb2.BlockStatus.ValueType) -> str:
    return common_pb2.BlockStatus.Name(status).removeprefix("BLOCK_STATUS_").lower()


Applier = Callable[[RunStep, Any, Applying], None]

APPLIERS: Mapping[type, Applier] = {
    ScheduleExternal: _schedule_external,
    CompleteBlock: _complete_block,
    SkipBlock: _skip_block,
    FailBlock: _fail_block,
    StartChild: _start_child,
    CatchFailure: _catch_failure,
    StartTimer: _start_timer,
    CancelTimer: _cancel_timer,
    AwaitSignal: _await_signal,
    AwaitEvent: _await_event,
    ConsumeSignal: _consume_signal,
    Escalate: _escalate,
    StartMap: _start_map,
    StartLoop: _start_loop,
    RecordItem: _record_item,
    RecordScopes: _record_scopes,
    CompleteRun: _complete_run,
    FailRun: _fail_run,
}
