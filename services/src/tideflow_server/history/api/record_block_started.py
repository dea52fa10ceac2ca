"""RecordBlockStarted: matching's handshake before a block task reaches a worker. Only the
current attempt of a pending block starts, once; a retry of the same poll is answered again
and any other poll is refused, so stale and duplicate tasks never reach a worker. The one
exception is an attempt history started itself for direct dispatch that no worker has
answered for: a poll that took its task from the backlog takes the attempt over."""

from __future__ import annotations

from tideflow_server.history import blocks, progress
from tideflow_server.history.shard.execution import Execution
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import history_service_pb2, records_pb2
from tideflow_server.rpc.errors import FailedPrecondition, NotFound


async def invoke(
    shard: Shard, request: history_service_pb2.RecordBlockStartedRequest
) -> history_service_pb2.RecordBlockStartedResponse:
    async def act(
        entry: Execution, step: RunStep
    ) -> history_service_pb2.RecordBlockStartedResponse | None:
        state = step.state
        pending = state.pending_blocks.get(request.scheduled_event_id)
        if (
            state.execution_info.state == records_pb2.RUN_STATE_COMPLETED
            or pending is None
            or pending.attempt != request.attempt
        ):
            raise NotFound(
                f"block task {request.scheduled_event_id} attempt {request.attempt} is stale",
                reason="BLOCK_TASK_NOT_FOUND",
            )
        if pending.cancel_requested or state.execution_info.cancel_requested:
            if pending.direct:
                # Started for direct dispatch, but no worker got it (this poll has its task).
                progress.undo_direct_start(step, pending)
                return None
            raise NotFound("the block's run is being canceled", reason="BLOCK_TASK_NOT_FOUND")
        if pending.HasField("started_time") and not pending.direct:
            if pending.request_id != request.request_id:
                raise FailedPrecondition(
                    f"block task {request.scheduled_event_id} attempt {request.attempt} was "
                    "started by another poll",
                    reason="BLOCK_ALREADY_STARTED",
                )
        else:
            # Not started, or started for direct dispatch that no poll took (matching
            # persisted the task before history could undo the start): this poll starts it.
            blocks.record_started(
                step,
                pending,
                identity=request.identity,
                request_id=request.request_id,
                sticky_task_queue=request.worker_sticky_task_queue,
                concurrency_limited=request.concurrency_limited,
            )
        scheduled = await shard.scheduled_event(entry, pending.scheduled_event_id)
        return blocks.started_response(state, pending, scheduled)

    started = await shard.update(
        request.namespace_id, request.run.run_id, request.run.execution_id, act
    )
    if started is None:
        raise NotFound("the block's run is being canceled", reason="BLOCK_TASK_NOT_FOUND")
    return started
