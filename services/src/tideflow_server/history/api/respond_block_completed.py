"""RespondBlockCompleted: a worker's result closes the block; the blueprint moves on.

Eager dispatch: a worker that offers `eager_slots` gets the run's next block tasks on the same
task queue started for it in the same commit and returned with the answer, so a chain of
blocks on one queue does not go through matching (no AddBlockTask, poll or
RecordBlockStarted, and one commit less per block). Not on a queue with concurrency limits
(its starts take slots in matching, and an attempt that held one says the queue has limits),
nor on one with a dispatch rate limit (as this host last read the queue's config), whose rate
holds only for tasks that go through matching. Not a block with an affinity key either (see
`blocks.start_eagerly`)."""

from __future__ import annotations

from tideflow.api.v1 import common_pb2, flow_service_pb2
from tideflow_server import observability
from tideflow_server.history import blocks
from tideflow_server.history.api._common import too_big
from tideflow_server.history.api._respond import respond
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import history_service_pb2, records_pb2
from tideflow_server.persistence import errors as store


async def invoke(
    shard: Shard, request: history_service_pb2.RespondBlockCompletedRequest
) -> history_service_pb2.RespondBlockCompletedResponse:
    given = request.request
    limited = False

    def complete(step: RunStep, pending: records_pb2.PendingBlock) -> None:
        nonlocal limited
        limited = pending.concurrency_limited
        blocks.complete(
            step, pending, given.result, given.identity, sticky_task_queue=given.sticky_task_queue
        )

    def eager(
        step: RunStep, task_queue: common_pb2.TaskQueue
    ) -> list[flow_service_pb2.PollBlockTaskResponse]:
        if given.eager_slots <= 0 or not step.is_open or step.info.cancel_requested or limited:
            return []
        config = shard.task_queues.cached(request.namespace_id, task_queue)
        if config is not None and config.rate_per_second > 0:
            return []
        started = blocks.start_eagerly(
            step, task_queue, identity=given.identity, slots=given.eager_slots
        )
        for pending, _ in started:
            observability.dispatched(pending.trace_context, pending.block_id, "history")
        return [blocks.worker_task(step, pending, event) for pending, event in started]

    try:
        next_tasks = await respond(
            shard,
            request.namespace_id,
            given.task_token,
            complete,
            eager,
        )
    except store.SizeLimitExceeded as e:
        raise too_big(e, "result") from e  # the block stays open; the worker is told
    response = history_service_pb2.RespondBlockCompletedResponse()
    response.response.next_tasks.extend(next_tasks or ())
    return response
