"""CancelRun: ask the run to stop. Blocks not yet started are canceled at once; started ones
learn it from their next heartbeat reply, and the run closes CANCELED when none is left."""

from __future__ import annotations

from tideflow.api.v1 import history_pb2
from tideflow_server.history import blocks, progress
from tideflow_server.history.api._common import execution_id_of, open_run
from tideflow_server.history.shard.execution import Execution
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import history_service_pb2


async def invoke(
    shard: Shard, request: history_service_pb2.CancelRunRequest
) -> history_service_pb2.CancelRunResponse:
    cancel = request.request
    execution_id = await execution_id_of(shard, request.namespace_id, cancel.run)

    async def act(entry: Execution, step: RunStep) -> None:
        open_run(entry)
        info = step.info
        if info.cancel_requested:
            return  # asked already: cancellation is idempotent
        _, attrs = step.add_event(
            history_pb2.EVENT_TYPE_RUN_CANCEL_REQUESTED, "run_cancel_requested_event_attributes"
        )
        assert isinstance(attrs, history_pb2.RunCancelRequestedEventAttributes)
        attrs.reason = cancel.reason
        attrs.identity = cancel.identity
        info.cancel_requested = True
        info.cancel_request_id = cancel.request_id
        for pending in list(step.state.pending_blocks.values()):
            if not pending.HasField("started_time"):
                blocks.cancel(step, pending, identity=cancel.identity)
                continue
            event, block_attrs = step.add_event(
                history_pb2.EVENT_TYPE_BLOCK_CANCEL_REQUESTED,
                "block_cancel_requested_event_attributes",
            )
            assert isinstance(block_attrs, history_pb2.BlockCancelRequestedEventAttributes)
            block_attrs.scheduled_event_id = pending.scheduled_event_id
            pending.cancel_requested = True
            pending.cancel_request_event_id = event.event_id
        progress.finish_cancel_if_done(step)

    await shard.update(request.namespace_id, cancel.run.run_id, execution_id, act)
    return history_service_pb2.CancelRunResponse()
