"""Child runs (subflow blocks) through the outbox: start a child, report a child's close to its
parent, apply a parent close policy to a child. The parent and the child may live on other
shards and hosts, so each goes through history's routed client (`shard.history`). Each may
run more than once (at least once delivery) and checks the run's current state first; the
receivers dedupe (a start by its request id, a close by the parent's pending child)."""

from __future__ import annotations

import structlog

from tideflow.api.v1 import blueprint_pb2, common_pb2, failure_pb2, history_pb2
from tideflow.blueprint.language.kinds.subflow import ChildStartFailed
from tideflow_server.history import progress
from tideflow_server.history.api import get_run_history
from tideflow_server.history.shard.execution import Execution
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import history_service_pb2, records_pb2
from tideflow_server.rpc.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
)

log = structlog.get_logger(__name__)

IDENTITY = "tideflow-history"
REFUSED = (NotFound, InvalidArgument, AlreadyExists, FailedPrecondition)
"""What a child's start may answer that no retry changes: the block fails."""


# -- starting a child ---------------------------------------------------------------------


async def start_child(shard: Shard, task: records_pb2.TransferTask) -> None:
    initiated_id = task.start_child_run.initiated_event_id
    try:
        async with shard.locked(task.namespace_id, task.run_id, task.execution_id) as entry:
            state = entry.state
            pending = state.pending_children.get(initiated_id)
            if state.execution_info.state == records_pb2.RUN_STATE_COMPLETED or (
                pending is None or pending.execution_id
            ):
                return  # the parent closed, or the child started (or closed) already
            info = records_pb2.RunExecutionInfo()
            info.CopyFrom(state.execution_info)
            batch = pending.initiated_batch_event_id
    except NotFound:
        return
    initiated = await _initiated(shard, info, batch, initiated_id)
    request = _start_request(task, initiated)
    try:
        response = await shard.history.start_run(request)
    except REFUSED as e:
        await _record_start_failed(shard, task, initiated, e)
        return
    child = common_pb2.RunRef(
        run_id=request.request.run_id, execution_id=response.response.execution_id
    )
    await _record_started(shard, task, initiated, child)


async def _initiated(
    shard: Shard, info: records_pb2.RunExecutionInfo, batch: int, event_id: int
) -> history_pb2.HistoryEvent:
    """The CHILD_RUN_INITIATED event: what to start."""
    page = await shard.manager.read_history(
        shard.shard_id, info, min_event_id=batch or 1, page_size=1 if batch else 1_000
    )
    for event in page.events:
        if event.event_id == event_id:
            return event
    raise NotFound(f"initiated event {event_id} not found", reason="EVENT_NOT_FOUND")


def _start_request(
    task: records_pb2.TransferTask, initiated: history_pb2.HistoryEvent
) -> history_service_pb2.StartRunRequest:
    attrs = initiated.child_run_initiated_event_attributes
    request = history_service_pb2.StartRunRequest(namespace_id=task.namespace_id)
    start = request.request
    name, _, version = attrs.flow.partition("@")
    start.flow.name = name
    start.flow.version = int(version or 0)  # 0: the latest, resolved by the child's history
    start.run_id = attrs.run_id
    start.input.CopyFrom(attrs.input)
    if attrs.task_queue.name:
        start.task_queue.CopyFrom(attrs.task_queue)
    if attrs.HasField("run_timeout"):
        start.run_timeout.CopyFrom(attrs.run_timeout)
    start.request_id = attrs.request_id
    start.identity = IDENTITY
    parent = request.parent
    parent.namespace_id = task.namespace_id
    parent.run_id = task.run_id
    parent.execution_id = task.execution_id
    parent.block_id = attrs.block_id
    parent.initiated_event_id = initiated.event_id
    parent.entry = attrs.entry
    return request


async def _record_started(
    shard: Shard,
    task: records_pb2.TransferTask,
    initiated: history_pb2.HistoryEvent,
    child: common_pb2.RunRef,
) -> None:
    """CHILD_RUN_STARTED on the parent. A parent that closed meanwhile did not know the child's
    execution, so its close policy is applied here."""
    if initiated.child_run_initiated_event_attributes.entry:
        await _map_item_started(shard, task, initiated, child)
        return
    parent_closed = False

    async def act(entry: Execution, step: RunStep) -> None:
        nonlocal parent_closed
        parent_closed = not step.is_open
        pending = step.state.pending_children.get(initiated.event_id)
        if pending is None or pending.execution_id:
            return  # closed before (its close was reported first), or recorded already
        event, attrs = step.add_event(
            history_pb2.EVENT_TYPE_CHILD_RUN_STARTED, "child_run_started_event_attributes"
        )
        assert isinstance(attrs, history_pb2.ChildRunStartedEventAttributes)
        attrs.block_id = pending.block_id
        attrs.initiated_event_id = initiated.event_id
        attrs.run.CopyFrom(child)
        pending.execution_id = child.execution_id
        pending.started_event_id = event.event_id
        step.state.block_results[pending.block_id].child_run.CopyFrom(child)

    try:
        await shard.update(task.namespace_id, task.run_id, task.execution_id, act)
    except NotFound:
        parent_closed = True
    policy = initiated.child_run_initiated_event_attributes.parent_close_policy
    if parent_closed:
        await apply_policy(shard, task.namespace_id, task.run_id, child, policy)


async def _map_item_started(
    shard: Shard,
    task: records_pb2.TransferTask,
    initiated: history_pb2.HistoryEvent,
    child: common_pb2.RunRef,
) -> None:
    """A map's item started: nothing is recorded on the parent (its state, which holds every
    item, is written once per item, on the close), so its history holds two events per item.
    A parent closed by now may have sent its close policy before the child existed: it is
    applied here, after the child exists; one that closes later applies it itself
    (`closing`, `PendingChild.map_item`)."""
    try:
        async with shard.locked(task.namespace_id, task.run_id, task.execution_id) as entry:
            parent_closed = entry.state.execution_info.state == records_pb2.RUN_STATE_COMPLETED
    except NotFound:
        parent_closed = True
    if parent_closed:
        policy = initiated.child_run_initiated_event_attributes.parent_close_policy
        await apply_policy(shard, task.namespace_id, task.run_id, child, policy)


async def _record_start_failed(
    shard: Shard,
    task: records_pb2.TransferTask,
    initiated: history_pb2.HistoryEvent,
    error: ServiceError,
) -> None:
    attrs = initiated.child_run_initiated_event_attributes
    message = str(error)

    async def act(entry: Execution, step: RunStep) -> None:
        pending = step.state.pending_children.get(initiated.event_id)
        if not step.is_open or pending is None or pending.execution_id:
            return
        _, failed = step.add_event(
            history_pb2.EVENT_TYPE_CHILD_RUN_START_FAILED,
            "child_run_start_failed_event_attributes",
        )
        assert isinstance(failed, history_pb2.ChildRunStartFailedEventAttributes)
        failed.block_id = pending.block_id
        failed.initiated_event_id = initiated.event_id
        failed.run_id = attrs.run_id
        failed.failure.CopyFrom(failure_pb2.Failure(message=message, source="tideflow"))
        del step.state.pending_children[initiated.event_id]
        event = ChildStartFailed(attrs.run_id, message)
        await progress.deliver_event(shard, step, pending.block_id, event)

    try:
        await shard.update(task.namespace_id, task.run_id, task.execution_id, act)
    except NotFound:
        return


# -- a child's close, reported to its parent ----------------------------------------------


async def report_close(shard: Shard, task: records_pb2.TransferTask) -> None:
    try:
        async with shard.locked(task.namespace_id, task.run_id, task.execution_id) as entry:
            info = records_pb2.RunExecutionInfo()
            info.CopyFrom(entry.state.execution_info)
    except NotFound:
        return
    run = common_pb2.RunRef(run_id=info.run_id, execution_id=info.execution_id)
    closed = await get_run_history.closing_event(shard, task.namespace_id, run, timeout_s=0)
    request = history_service_pb2.RecordChildRunClosedRequest(
        namespace_id=info.parent.namespace_id,
        initiated_event_id=info.parent.initiated_event_id,
        status=info.status,
    )
    request.parent.run_id = info.parent.run_id
    request.parent.execution_id = info.parent.execution_id
    request.child.CopyFrom(run)
    if closed is not None:
        _close_of(closed, request)
    try:
        await shard.history.record_child_run_closed(request)
    except (NotFound, FailedPrecondition):
        return  # the parent is gone


def _close_of(
    closed: history_pb2.HistoryEvent, request: history_service_pb2.RecordChildRunClosedRequest
) -> None:
    """The child's result, or why it did not complete, from its close event."""
    which = closed.WhichOneof("attributes")
    if which == "run_completed_event_attributes":
        request.result.CopyFrom(closed.run_completed_event_attributes.result)
    elif which == "run_failed_event_attributes":
        request.failure.CopyFrom(closed.run_failed_event_attributes.failure)
    elif which == "run_terminated_event_attributes":
        reason = closed.run_terminated_event_attributes.reason
        request.failure.message = reason or "terminated"
        request.failure.terminated_failure_info.SetInParent()


# -- the parent's close, applied to a child -----------------------------------------------


async def apply_parent_close_policy(shard: Shard, task: records_pb2.TransferTask) -> None:
    closed = task.parent_closed
    child = common_pb2.RunRef(run_id=closed.child_run_id, execution_id=closed.child_execution_id)
    await apply_policy(shard, task.namespace_id, task.run_id, child, closed.policy)


async def apply_policy(
    shard: Shard,
    namespace_id: str,
    parent_run_id: str,
    child: common_pb2.RunRef,
    policy: blueprint_pb2.ParentClosePolicy.ValueType,
) -> None:
    """Terminate the child or request its cancellation (ABANDON: nothing). A child that has
    closed (or is gone) already is left as it is."""
    reason = f"parent run {parent_run_id!r} closed"
    try:
        if policy == blueprint_pb2.PARENT_CLOSE_POLICY_REQUEST_CANCEL:
            cancel = history_service_pb2.CancelRunRequest(namespace_id=namespace_id)
            cancel.request.run.CopyFrom(child)
            cancel.request.reason = reason
            cancel.request.identity = IDENTITY
            cancel.request.request_id = f"parent-closed/{child.execution_id}"
            await shard.history.cancel_run(cancel)
        elif policy != blueprint_pb2.PARENT_CLOSE_POLICY_ABANDON:
            terminate = history_service_pb2.TerminateRunRequest(namespace_id=namespace_id)
            terminate.request.run.CopyFrom(child)
            terminate.request.reason = reason
            terminate.request.identity = IDENTITY
            await shard.history.terminate_run(terminate)
    except (NotFound, FailedPrecondition):
        log.debug("child already closed", run_id=child.run_id)
