"""RecordChildRunClosed: a child run closed; record it on the parent and move the parent's
subflow block on (it completes with the child's result, or fails).

Called by the child's history host from its outbox, so at least once: a close already
recorded (the pending child is gone), or a parent that has closed, changes nothing."""

from __future__ import annotations

import contextlib

from tideflow.api.v1 import common_pb2, history_pb2
from tideflow.blueprint.language.kinds.subflow import ChildClosed
from tideflow_server.history import payloads, progress
from tideflow_server.history.shard.execution import Execution
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import history_service_pb2, records_pb2
from tideflow_server.rpc.errors import NotFound


def is_its_child(
    pending: records_pb2.PendingChild | None, child: common_pb2.RunRef
) -> records_pb2.PendingChild | None:
    """`pending`, if it is the child `child` names (its execution once known)."""
    if pending is None or pending.run_id != child.run_id:
        return None
    if pending.execution_id and pending.execution_id != child.execution_id:
        return None
    return pending


def record_closed(
    step: RunStep,
    pending: records_pb2.PendingChild,
    request: history_service_pb2.RecordChildRunClosedRequest,
) -> ChildClosed:
    """CHILD_RUN_CLOSED on the parent; the pending child is gone. Returns what the block gets."""
    _, attrs = step.add_event(
        history_pb2.EVENT_TYPE_CHILD_RUN_CLOSED, "child_run_closed_event_attributes"
    )
    assert isinstance(attrs, history_pb2.ChildRunClosedEventAttributes)
    attrs.block_id = pending.block_id
    attrs.initiated_event_id = pending.initiated_event_id
    attrs.run.CopyFrom(request.child)
    attrs.status = request.status
    attrs.result.CopyFrom(request.result)
    if request.HasField("failure"):
        attrs.failure.CopyFrom(request.failure)
    step.state.block_results[pending.block_id].child_run.CopyFrom(request.child)
    del step.state.pending_children[pending.initiated_event_id]
    output = None
    if request.status == common_pb2.RUN_STATUS_COMPLETED:
        output = payloads.from_payloads(request.result, "result")
    return ChildClosed(
        run_id=request.child.run_id,
        status=request.status,
        output=output,
        message=_message(request),
    )


def _message(request: history_service_pb2.RecordChildRunClosedRequest) -> str:
    """What the child's close says: its failure (the block's own error under where it
    failed), or nothing."""
    if not request.HasField("failure"):
        return ""
    error = progress.block_error(request.failure)
    return f"{error.type}: {error.message}"


async def invoke(
    shard: Shard, request: history_service_pb2.RecordChildRunClosedRequest
) -> history_service_pb2.RecordChildRunClosedResponse:
    parent = request.parent

    async def act(entry: Execution, step: RunStep) -> None:
        if not step.is_open:
            return  # the parent closed: its close policy took care of the child
        pending = is_its_child(
            step.state.pending_children.get(request.initiated_event_id), request.child
        )
        if pending is None:
            return  # recorded already
        event = record_closed(step, pending, request)
        await progress.deliver_event(shard, step, pending.block_id, event)

    with contextlib.suppress(NotFound):  # the parent is gone (retention): nobody to tell
        await shard.update(request.namespace_id, parent.run_id, parent.execution_id, act)
    return history_service_pb2.RecordChildRunClosedResponse()
