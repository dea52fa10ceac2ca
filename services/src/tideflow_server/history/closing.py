"""Closing a run, whatever closes it (its blueprint, a timeout, a cancel, a terminate), and
the failures the engine records for errors it decided itself."""

from __future__ import annotations

from datetime import UTC

from google.protobuf import duration_pb2

from tideflow.api.v1 import blueprint_pb2, common_pb2, failure_pb2, history_pb2
from tideflow_server.history import blocks
from tideflow_server.history.interpreter import BlockError
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import records_pb2

ABANDON = blueprint_pb2.PARENT_CLOSE_POLICY_ABANDON


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
        blocks.release_slot(step, pending)  # its worker may still run it, but the run is done
    step.state.pending_blocks.clear()
    _close_children(step)
    # Blocks that waited (a timer, a signal) wait no more, their timer rows find the run
    # closed and do nothing; so are the containers still open (a map, a loop).
    for waited in step.state.block_results.values():
        if waited.status == common_pb2.BLOCK_STATUS_RUNNING:
            waited.status = common_pb2.BLOCK_STATUS_CANCELED
            waited.ClearField("awaiting_signal")
            waited.ClearField("awaiting_event")
    step.state.timers.clear()
    info = step.info
    info.state = records_pb2.RUN_STATE_COMPLETED
    info.status = status
    info.close_time.FromDatetime(step.now)
    step.add_transfer().close_execution.SetInParent()
    if info.HasField("parent"):
        step.add_transfer().child_closed.SetInParent()
    step.closes = True


def arm_deletion(step: RunStep, retention: duration_pb2.Duration) -> None:
    """The closed run's deletion (history/tasks/retention.py), a timer at its close time plus
    `retention` (its namespace's, as it stands at the close); none when retention is zero.

    Armed in the commit that closes the run, after every transfer task of that commit, so its
    task id is above theirs: the deletion waits until they are delivered (the close's
    visibility row, the report to a parent)."""
    if not step.closes or not (retention.seconds or retention.nanos):
        return
    closed_at = step.info.close_time.ToDatetime(tzinfo=UTC)
    step.add_timer(closed_at + retention.ToTimedelta()).delete_history.SetInParent()


def _close_children(step: RunStep) -> None:
    """The run closes with child runs open: their blocks are canceled, and each started child
    gets its parent close policy. A child whose start is not recorded yet gets it from the
    task that starts it, which finds the parent closed (tasks/transfer.py)."""
    for child in step.state.pending_children.values():
        step.state.block_results[child.block_id].status = common_pb2.BLOCK_STATUS_CANCELED
        # A map's item never records its execution: its current one is the one to close.
        started = child.execution_id or child.map_item
        if started and child.parent_close_policy != ABANDON:
            closed = step.add_transfer().parent_closed
            closed.child_run_id = child.run_id
            closed.child_execution_id = child.execution_id
            closed.policy = child.parent_close_policy
    step.state.pending_children.clear()
