"""DescribeRun: status, pending blocks with attempts, last failure and the retry policy and
timeouts in effect, and every block."""

from __future__ import annotations

import math
from collections.abc import Mapping

from google.protobuf import timestamp_pb2

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
    if info.HasField("parent"):
        out.parent.run.run_id = info.parent.run_id
        out.parent.run.execution_id = info.parent.execution_id
        out.parent.block_id = info.parent.block_id
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
        accepts = await _accepts(shard, state)
        response.response.blocks.extend(block_summaries(state, accepts))
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


async def _accepts(shard: Shard, state: records_pb2.MutableState) -> dict[str, str]:
    """The `accept` filters of the signal and event blocks that wait, from the run's blueprint
    (read only when one waits)."""
    waiting = [
        b
        for b, result in state.block_results.items()
        if result.awaiting_signal or result.HasField("awaiting_event")
    ]
    if not waiting:
        return {}
    info = state.execution_info
    _, compiled = await shard.flows.get(
        info.namespace_id, info.flow.name, info.flow.version, info.parent.entry
    )
    blocks = [compiled.blueprint.blocks[compiled.blocks[b].index] for b in waiting]
    return {b.id: b.signal.accept or b.event.accept for b in blocks}


def _waiting(
    block_id: str,
    result: records_pb2.BlockResult,
    deadlines: Mapping[str, timestamp_pb2.Timestamp],
    accepts: Mapping[str, str],
) -> run_pb2.BlockWait | None:
    """What a RUNNING system block waits for: a signal or an event, else its timer (a
    `wait`)."""
    deadline = deadlines.get(block_id)
    awaits_event = result.HasField("awaiting_event")
    if result.status != common_pb2.BLOCK_STATUS_RUNNING or (
        not result.awaiting_signal and not awaits_event and deadline is None
    ):
        return None
    wait = run_pb2.BlockWait()
    if result.awaiting_signal:
        wait.signal.signal_name = result.awaiting_signal
        wait.signal.accept = accepts.get(block_id, "")
    elif awaits_event:
        wait.event.event_type = result.awaiting_event.event_type
        wait.event.correlation_key = result.awaiting_event.correlation_key
        wait.event.accept = accepts.get(block_id, "")
    else:
        wait.timer.SetInParent()
    if deadline is not None:
        wait.deadline.CopyFrom(deadline)
    return wait


def _deadlines(state: records_pb2.MutableState) -> dict[str, timestamp_pb2.Timestamp]:
    """Each block's next timer."""
    found: dict[str, timestamp_pb2.Timestamp] = {}
    for timer in state.timers.values():
        known = found.get(timer.block_id)
        if known is None or timer.expiry_time.ToNanoseconds() < known.ToNanoseconds():
            found[timer.block_id] = timer.expiry_time
    return found


def block_summaries(
    state: records_pb2.MutableState, accepts: Mapping[str, str] | None = None
) -> list[run_pb2.BlockSummary]:
    """Every block the run has reached, in the order reached (`BlockResult.reached`). Blocks
    reached before that was recorded come first, by their first event, then by id. `accepts`:
    the `accept` filter of each signal block that waits."""

    def order(item: tuple[str, records_pb2.BlockResult]) -> tuple[int, float, str]:
        block_id, result = item
        first_event = result.scheduled_event_id or result.close_event_id or math.inf
        return result.reached, first_event, block_id

    deadlines = _deadlines(state)
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
            compensates=result.compensates,
        )
        if result.HasField("failure"):
            summary.failure.CopyFrom(result.failure)
        if result.HasField("child_run"):
            summary.child_run.CopyFrom(result.child_run)
        if result.HasField("caught"):
            summary.caught.CopyFrom(result.caught)
        summary.escalated.extend(result.escalated)
        waiting = _waiting(block_id, result, deadlines, accepts or {})
        if waiting is not None:
            summary.waiting.CopyFrom(waiting)
        if result.HasField("scopes"):
            _scopes(summary.scopes, result.scopes, state.map_blocks.get(block_id))
        summaries.append(summary)
    return summaries
