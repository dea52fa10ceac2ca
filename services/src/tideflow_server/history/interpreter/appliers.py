"""Applying the interpreter's commands to a run: one applier per command type.

An applier records the command's events, changes the run's state and adds the outbox tasks
and timers it causes, all in the run step, which commits them together (invariant 2). The
table `APPLIERS` is the only place that looks at a command's type; a new primitive is a new
applier and a table line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tideflow.api.v1 import blueprint_pb2, common_pb2, failure_pb2, history_pb2
from tideflow_server.history import blocks, payloads
from tideflow_server.history.closing import close_run, engine_failure
from tideflow_server.history.interpreter import (
    BlockError,
    Command,
    CompiledBlueprint,
    CompleteBlock,
    CompleteRun,
    FailBlock,
    FailRun,
    RecordScopes,
    ScheduleExternal,
    SkipBlock,
    StartLoop,
    StartMap,
)
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import records_pb2


@dataclass(frozen=True, slots=True)
class Applying:
    """What an applier may read besides the step: the run's blueprint and its limits."""

    compiled: CompiledBlueprint
    max_pending_blocks: int


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
    result = step.state.block_results[command.block_id]
    result.status = common_pb2.BLOCK_STATUS_FAILED
    result.failure.CopyFrom(blocks.block_failure(command.block_id, failure))
    result.close_event_id = event.event_id
    _record_route(result, command.route)


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


def _record_scopes(step: RunStep, command: RecordScopes, context: Applying) -> None:
    # No event, as for a skip: the counts follow from the events before them.
    scopes = step.state.block_results[command.block_id].scopes
    scopes.opened = command.scopes.opened
    scopes.succeeded = command.scopes.succeeded
    scopes.failed = command.scopes.failed


def _complete_run(step: RunStep, command: CompleteRun, context: Applying) -> None:
    close_run(step, common_pb2.RUN_STATUS_COMPLETED, result=payloads.to_payloads(command.output))


def _fail_run(step: RunStep, command: FailRun, context: Applying) -> None:
    close_run(step, common_pb2.RUN_STATUS_FAILED, failure=_run_failure(step, command))


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


Applier = Callable[[RunStep, Any, Applying], None]

APPLIERS: Mapping[type, Applier] = {
    ScheduleExternal: _schedule_external,
    CompleteBlock: _complete_block,
    SkipBlock: _skip_block,
    FailBlock: _fail_block,
    StartMap: _start_map,
    StartLoop: _start_loop,
    RecordScopes: _record_scopes,
    CompleteRun: _complete_run,
    FailRun: _fail_run,
}
