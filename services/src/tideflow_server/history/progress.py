"""Moving a run forward: ask the interpreter what follows, apply it, repeat until it settles.

System blocks complete in-line and may unlock more blocks, so one step loops until `decide`
has nothing new. Closing a run (any status) happens here too.
"""

from __future__ import annotations

from tideflow.api.v1 import common_pb2, failure_pb2, history_pb2
from tideflow_server.history import blocks, payloads
from tideflow_server.history.interpreter import (
    BlockError,
    BlockView,
    Command,
    CompleteRun,
    CompleteSystem,
    FailBlock,
    FailRun,
    RunView,
    ScheduleExternal,
    SkipBlock,
)
from tideflow_server.history.interpreter.compiled import CompiledBlueprint
from tideflow_server.history.interpreter.decide import decide
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.namespaces import tighter

MAX_ROUNDS = 10_000
"""A blueprint settles in at most one round per block; more means an interpreter bug."""


def block_error(failure: failure_pb2.Failure) -> BlockError:
    """A recorded failure as blueprint expressions see it (`${blocks.<id>.error}`): the
    block's own, under the BlockFailureInfo that says where it happened."""
    if failure.HasField("block_failure_info") and failure.HasField("cause"):
        failure = failure.cause
    if failure.HasField("application_failure_info"):
        app = failure.application_failure_info
        return BlockError(app.type or "ApplicationError", failure.message, app.non_retryable)
    if failure.HasField("server_failure_info"):
        server = failure.server_failure_info
        return BlockError(
            server.type or "ServerError", failure.message, server.non_retryable, server=True
        )
    if failure.HasField("timeout_failure_info"):
        return BlockError("TimeoutError", failure.message, True)
    if failure.HasField("canceled_failure_info"):
        return BlockError("CanceledError", failure.message, True)
    return BlockError("Error", failure.message)


def engine_failure(error: BlockError) -> failure_pb2.Failure:
    """The failure the engine records for an error it decided: a ServerFailureInfo for its
    own (an expression that failed at run time), an ApplicationFailureInfo for the
    blueprint's (a `fail` block)."""
    failure = failure_pb2.Failure(message=error.message, source="tideflow")
    if error.server:
        failure.server_failure_info.type = error.type
        failure.server_failure_info.non_retryable = error.non_retryable
    else:
        failure.application_failure_info.type = error.type
        failure.application_failure_info.non_retryable = error.non_retryable
    return failure


def run_view(state: records_pb2.MutableState, namespace: str) -> RunView:
    info = state.execution_info
    views = {
        block_id: BlockView(
            status=result.status,
            output=payloads.from_value(result.output),
            error=block_error(result.failure) if result.HasField("failure") else None,
            attempt=result.attempt,
        )
        for block_id, result in state.block_results.items()
    }
    return RunView(
        namespace=namespace,
        run_id=info.run_id,
        execution_id=info.execution_id,
        flow_name=info.flow.name,
        flow_version=info.flow.version,
        input=payloads.from_value(info.input),
        vars={name: payloads.from_value(v) for name, v in info.vars.items()},
        blocks=views,
        task_queue=info.task_queue.name,
    )


def advance(
    step: RunStep, compiled: CompiledBlueprint, *, namespace: str, max_pending_blocks: int
) -> None:
    """Apply the interpreter's commands until it has none (or the run closed)."""
    for _ in range(MAX_ROUNDS):
        if not step.is_open or step.info.cancel_requested:
            return
        commands = decide(compiled, run_view(step.state, namespace))
        if not commands:
            return
        for command in commands:
            if not step.is_open:
                break
            _apply(step, compiled, command, max_pending_blocks)
        _mark_reached(step, compiled, commands)
    close_run(
        step,
        common_pb2.RUN_STATUS_FAILED,
        failure=engine_failure(
            BlockError("InternalError", "blueprint did not settle", True, server=True)
        ),
    )


_REACHING = (ScheduleExternal, CompleteSystem, SkipBlock, FailBlock)
"""The commands that reach a block (decide gives them only for blocks not reached yet)."""


def _mark_reached(step: RunStep, compiled: CompiledBlueprint, commands: list[Command]) -> None:
    """Number the blocks one decision reached, after those reached before, in declaration
    order (they were reached together), and record their kind: a skip has no event, and a
    block that failed before it started has no other record of it. Describing a run lists
    its blocks in this order; `block_results`, a map, keeps none."""
    results = step.state.block_results
    reached = sorted(
        (
            compiled.blocks[c.block_id]
            for c in commands
            if isinstance(c, _REACHING) and c.block_id in results
        ),
        key=lambda block: block.index,
    )
    # Results are never removed, and those of this decision are all new.
    for number, block in enumerate(reached, start=len(results) - len(reached) + 1):
        result = results[block.id]
        result.kind = block.kind
        result.reached = number


def _too_deep(command: CompleteSystem) -> FailBlock | None:
    """A system block whose output or variables nest too deep to keep (a blueprint that
    wraps a deep value in more levels): it fails, for the run's state must stay readable."""
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


def _apply(
    step: RunStep, compiled: CompiledBlueprint, command: Command, max_pending_blocks: int
) -> None:
    if isinstance(command, CompleteSystem) and (failed := _too_deep(command)) is not None:
        command = failed
    if isinstance(command, ScheduleExternal):
        if len(step.state.pending_blocks) >= max_pending_blocks:
            error = BlockError(
                "PendingBlocksLimitExceeded",
                f"more than {max_pending_blocks} blocks pending at once",
                non_retryable=True,
                server=True,
            )
            close_run(step, common_pb2.RUN_STATUS_FAILED, failure=engine_failure(error))
            return
        blocks.schedule(step, command)
    elif isinstance(command, CompleteSystem):
        event, attrs = step.add_event(
            history_pb2.EVENT_TYPE_SYSTEM_BLOCK_COMPLETED, "system_block_completed_event_attributes"
        )
        assert isinstance(attrs, history_pb2.SystemBlockCompletedEventAttributes)
        attrs.block_id = command.block_id
        attrs.kind = command.kind
        attrs.output.CopyFrom(payloads.to_value(command.output))
        if command.vars:
            _, set_attrs = step.add_event(
                history_pb2.EVENT_TYPE_VARS_SET, "vars_set_event_attributes"
            )
            assert isinstance(set_attrs, history_pb2.VarsSetEventAttributes)
            set_attrs.block_id = command.block_id
            for name, value in command.vars.items():
                set_attrs.vars[name].CopyFrom(payloads.to_value(value))
                step.info.vars[name].CopyFrom(payloads.to_value(value))
        result = step.state.block_results[command.block_id]
        result.status = common_pb2.BLOCK_STATUS_SUCCEEDED
        result.output.CopyFrom(attrs.output)
        result.close_event_id = event.event_id
    elif isinstance(command, SkipBlock):
        # No event: a skip follows from the events before it, decided again on replay.
        result = step.state.block_results[command.block_id]
        result.status = common_pb2.BLOCK_STATUS_SKIPPED
    elif isinstance(command, FailBlock):
        failure = engine_failure(command.error)
        event, attrs = step.add_event(
            history_pb2.EVENT_TYPE_SYSTEM_BLOCK_FAILED, "system_block_failed_event_attributes"
        )
        assert isinstance(attrs, history_pb2.SystemBlockFailedEventAttributes)
        attrs.block_id = command.block_id
        attrs.kind = compiled.blocks[command.block_id].kind
        attrs.failure.CopyFrom(failure)
        result = step.state.block_results[command.block_id]
        result.status = common_pb2.BLOCK_STATUS_FAILED
        result.failure.CopyFrom(blocks.block_failure(command.block_id, failure))
        result.close_event_id = event.event_id
    elif isinstance(command, CompleteRun):
        close_run(
            step, common_pb2.RUN_STATUS_COMPLETED, result=payloads.to_payloads(command.output)
        )
    elif isinstance(command, FailRun):
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


def close_run(
    step: RunStep,
    status: common_pb2.RunStatus.ValueType,
    *,
    result: common_pb2.Payloads | None = None,
    failure: failure_pb2.Failure | None = None,
    reason: str = "",
    identity: str = "",
    details: common_pb2.Payloads | None = None,
) -> None:
    """Write the close event, abandon what is still pending, and schedule the close work."""
    if not step.is_open:
        return
    if status == common_pb2.RUN_STATUS_COMPLETED:
        _, attrs = step.add_event(
            history_pb2.EVENT_TYPE_RUN_COMPLETED, "run_completed_event_attributes"
        )
        assert isinstance(attrs, history_pb2.RunCompletedEventAttributes)
        if result is not None:
            attrs.result.CopyFrom(result)
    elif status == common_pb2.RUN_STATUS_FAILED:
        _, attrs = step.add_event(history_pb2.EVENT_TYPE_RUN_FAILED, "run_failed_event_attributes")
        assert isinstance(attrs, history_pb2.RunFailedEventAttributes)
        if failure is not None:
            attrs.failure.CopyFrom(failure)
    elif status == common_pb2.RUN_STATUS_TIMED_OUT:
        step.add_event(history_pb2.EVENT_TYPE_RUN_TIMED_OUT, "run_timed_out_event_attributes")
    elif status == common_pb2.RUN_STATUS_CANCELED:
        _, attrs = step.add_event(
            history_pb2.EVENT_TYPE_RUN_CANCELED, "run_canceled_event_attributes"
        )
        assert isinstance(attrs, history_pb2.RunCanceledEventAttributes)
        if details is not None:
            attrs.details.CopyFrom(details)
    elif status == common_pb2.RUN_STATUS_TERMINATED:
        _, attrs = step.add_event(
            history_pb2.EVENT_TYPE_RUN_TERMINATED, "run_terminated_event_attributes"
        )
        assert isinstance(attrs, history_pb2.RunTerminatedEventAttributes)
        attrs.reason = reason
        attrs.identity = identity
        if details is not None:
            attrs.details.CopyFrom(details)
    # Block tasks still out there are pointers to nothing now: RecordBlockStarted rejects them.
    for pending in step.state.pending_blocks.values():
        abandoned = step.state.block_results[pending.block_id]
        abandoned.status = common_pb2.BLOCK_STATUS_CANCELED
    step.state.pending_blocks.clear()
    info = step.info
    info.state = records_pb2.RUN_STATE_COMPLETED
    info.status = status
    info.close_time.FromDatetime(step.now)
    step.add_transfer().close_execution.SetInParent()


def finish_cancel_if_done(step: RunStep) -> None:
    """A run whose cancellation was requested closes as CANCELED once no block is pending."""
    if step.is_open and step.info.cancel_requested and not step.state.pending_blocks:
        close_run(step, common_pb2.RUN_STATUS_CANCELED)


def undo_direct_start(step: RunStep, pending: records_pb2.PendingBlock) -> None:
    """No worker got the block history started for direct dispatch: it waits for a poll again,
    unless its run is being canceled, when nobody else will cancel it, so it is canceled here
    (and the run closes once nothing else is pending)."""
    blocks.unstart(step, pending)
    if pending.cancel_requested or step.info.cancel_requested:
        blocks.cancel(step, pending)
        finish_cancel_if_done(step)


async def continue_run(shard: Shard, step: RunStep) -> None:
    """After a block closed: finish a requested cancellation, or let the blueprint go on."""
    if not step.is_open:
        return
    if step.info.cancel_requested:
        finish_cancel_if_done(step)
        return
    info = step.info
    _, compiled = await shard.flows.get(info.namespace_id, info.flow.name, info.flow.version)
    namespace = await shard.namespaces.by_id(info.namespace_id)
    advance(
        step,
        compiled,
        namespace=namespace.info.name,
        max_pending_blocks=tighter(
            namespace.config.limits.max_pending_blocks, shard.config.max_pending_blocks
        ),
    )
