"""DescribeRun: status, pending blocks with attempts, last failure and the retry policy and
timeouts in effect, and every block."""

from __future__ import annotations

import math

from tideflow.api.v1 import common_pb2, run_pb2
from tideflow_server.history.api._common import execution_id_of
from tideflow_server.history.shard.port import Shard
from tideflow_server.internal.v1 import history_service_pb2, records_pb2


def run_info(state: records_pb2.MutableState) -> run_pb2.RunInfo:
    info = state.execution_info
    out = run_pb2.RunInfo(status=info.status, history_length=info.next_event_id - 1)
    out.run.run_id = info.run_id
    out.run.execution_id = info.execution_id
    out.flow.CopyFrom(info.flow)
    out.start_time.CopyFrom(info.start_time)
    if info.HasField("close_time"):
        out.close_time.CopyFrom(info.close_time)
    out.task_queue.CopyFrom(info.task_queue)
    out.memo.CopyFrom(info.memo)
    return out


def _pending(pending: records_pb2.PendingBlock) -> run_pb2.PendingBlockInfo:
    out = run_pb2.PendingBlockInfo(
        block_id=pending.block_id,
        block_type=pending.block_type,
        attempt=pending.attempt,
        maximum_attempts=pending.retry_policy.maximum_attempts,
        last_worker_identity=pending.started_identity,
        scheduled_event_id=pending.scheduled_event_id,
    )
    if pending.cancel_requested:
        out.state = common_pb2.PENDING_BLOCK_STATE_CANCEL_REQUESTED
    elif pending.HasField("started_time"):
        out.state = common_pb2.PENDING_BLOCK_STATE_STARTED
        out.last_started_time.CopyFrom(pending.started_time)
    else:
        out.state = common_pb2.PENDING_BLOCK_STATE_SCHEDULED
        out.next_attempt_schedule_time.CopyFrom(pending.current_attempt_scheduled_time)
    out.scheduled_time.CopyFrom(pending.scheduled_time)
    if pending.HasField("last_heartbeat_time"):
        out.last_heartbeat_time.CopyFrom(pending.last_heartbeat_time)
    if pending.HasField("last_failure"):
        out.last_failure.CopyFrom(pending.last_failure)
    out.heartbeat_details.CopyFrom(pending.heartbeat_details)
    out.task_queue.CopyFrom(pending.task_queue)
    out.retry_policy.CopyFrom(pending.retry_policy)
    out.timeouts.CopyFrom(pending.timeouts)
    return out


async def invoke(
    shard: Shard, request: history_service_pb2.DescribeRunRequest
) -> history_service_pb2.DescribeRunResponse:
    given = request.request
    execution_id = await execution_id_of(shard, request.namespace_id, given.run)
    response = history_service_pb2.DescribeRunResponse()
    async with shard.locked(request.namespace_id, given.run.run_id, execution_id) as entry:
        state = entry.state
        response.response.run_info.CopyFrom(run_info(state))
        for pending in sorted(state.pending_blocks.values(), key=lambda p: p.scheduled_event_id):
            response.response.pending_blocks.append(_pending(pending))
        response.response.blocks.extend(block_summaries(state))
    return response


def _scopes(
    shown: run_pb2.BlockScopes,
    scopes: records_pb2.ScopeProgress,
    map_block: records_pb2.MapBlockState | None,
) -> None:
    shown.total = 0 if map_block is None else len(map_block.items.values)
    shown.started = scopes.opened
    shown.succeeded = scopes.succeeded
    shown.failed = scopes.failed


def block_summaries(state: records_pb2.MutableState) -> list[run_pb2.BlockSummary]:
    """Every block the run has reached, in the order reached (`BlockResult.reached`). Blocks
    reached before that was recorded come first, by their first event, then by id."""

    def order(item: tuple[str, records_pb2.BlockResult]) -> tuple[int, float, str]:
        block_id, result = item
        first_event = result.scheduled_event_id or result.close_event_id or math.inf
        return result.reached, first_event, block_id

    summaries = []
    for block_id, result in sorted(state.block_results.items(), key=order):
        summary = run_pb2.BlockSummary(
            block_id=block_id,
            kind=result.kind,
            status=result.status,
            attempt=result.attempt,
            skip_reason=result.skip_reason,
            routed=result.routed,
            route=result.route,
        )
        if result.HasField("failure"):
            summary.failure.CopyFrom(result.failure)
        if result.HasField("scopes"):
            _scopes(summary.scopes, result.scopes, state.map_blocks.get(block_id))
        summaries.append(summary)
    return summaries
