"""What a fired timer does. Each handler checks the run's current state first: a timer for an
attempt that has moved on, a block that closed, or a run that ended does nothing."""

from __future__ import annotations

import structlog

from tideflow.api.v1 import common_pb2, history_pb2
from tideflow_server.history import blocks, closing, progress
from tideflow_server.history.interpreter import TimerFired
from tideflow_server.history.shard.execution import Execution
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.history.tasks import retention
from tideflow_server.internal.v1 import matching_service_pb2, records_pb2
from tideflow_server.rpc.errors import NotFound

log = structlog.get_logger(__name__)

_MS = 1_000_000


async def fire(shard: Shard, timer: records_pb2.TimerTask) -> None:
    kind = timer.WhichOneof("task")
    try:
        if kind == "block_timeouts":
            await _block_timeouts(shard, timer)
        elif kind == "block_timeout":
            await _block_timeout(shard, timer)
        elif kind == "block_retry":
            await _block_retry(shard, timer)
        elif kind == "run_timeout":
            await _run_timeout(shard, timer)
        elif kind == "user_timer":
            await _user_timer(shard, timer)
        elif kind == "delete_history":
            await retention.delete(shard, timer)
    except NotFound:
        log.debug("timer for a run that is gone", run_id=timer.run_id, task_id=timer.task_id)
        return  # the run is gone: nothing left to time out


_ATTEMPT_RUNNING = (common_pb2.TIMEOUT_TYPE_START_TO_CLOSE, common_pb2.TIMEOUT_TYPE_HEARTBEAT)


def _stale(state: records_pb2.MutableState, timer: records_pb2.TimerTask) -> bool:
    """A row of the earlier kind (one per attempt and timeout) that can do nothing to the run
    as it stands: the block closed, moved to another attempt, or is not in that phase."""
    spec = timer.block_timeout
    pending = state.pending_blocks.get(spec.scheduled_event_id)
    if (
        state.execution_info.state == records_pb2.RUN_STATE_COMPLETED
        or pending is None
        or pending.attempt != spec.attempt
    ):
        return True
    started = pending.HasField("started_time")
    kind = spec.timeout_type
    if kind in _ATTEMPT_RUNNING:
        # For a started attempt only, and not one armed by an earlier, undone start.
        return not started or _armed_before_start(timer, pending)
    return kind == common_pb2.TIMEOUT_TYPE_SCHEDULE_TO_START and started


def _not_armed(state: records_pb2.MutableState, timer: records_pb2.TimerTask) -> bool:
    """A block timer row that is not the run's armed one (superseded by an earlier one, or
    fired already), or whose run has closed: it has nothing to do."""
    info = state.execution_info
    return (
        info.state == records_pb2.RUN_STATE_COMPLETED or info.block_timer.task_id != timer.task_id
    )


async def _block_timeouts(shard: Shard, timer: records_pb2.TimerTask) -> None:
    """The run's earliest block deadline is due: time out the blocks whose deadlines have
    passed, send again the tasks of attempts no poll has started in time (blocks.Redispatch);
    the commit arms the row for the next deadline (blocks.arm_block_timer)."""
    async with shard.locked(timer.namespace_id, timer.run_id, timer.execution_id) as entry:
        if _not_armed(entry.state, timer):
            return  # nearly always: the run closed long before its block timer fired

    async def act(entry: Execution, step: RunStep) -> None:
        if _not_armed(step.state, timer):
            return
        step.info.ClearField("block_timer")
        step.touch()
        timed_out = False
        for pending in list(step.state.pending_blocks.values()):
            kind = blocks.expired(pending, step.now)
            if kind is not None:
                blocks.fail(step, pending, blocks.timeout_failure(pending, kind))
                timed_out = True
                continue
            due = blocks.redispatch_due(pending, shard.redispatch)
            if due is not None and due <= step.now:
                blocks.redispatch(step, pending)
        if timed_out:
            await progress.continue_run(shard, step)

    await shard.update(timer.namespace_id, timer.run_id, timer.execution_id, act)


async def _block_timeout(shard: Shard, timer: records_pb2.TimerTask) -> None:
    """A row of one attempt's timeout, as written before `block_timeouts` existed."""
    spec = timer.block_timeout
    # Looked at first without a step (no copy of the state, nothing to commit).
    async with shard.locked(timer.namespace_id, timer.run_id, timer.execution_id) as entry:
        if _stale(entry.state, timer):
            log.debug("stale block timeout", run_id=timer.run_id, attempt=spec.attempt)
            return

    async def act(entry: Execution, step: RunStep) -> None:
        if _stale(step.state, timer):
            return  # changed since the look above
        pending = step.state.pending_blocks[spec.scheduled_event_id]
        kind = spec.timeout_type
        if kind == common_pb2.TIMEOUT_TYPE_HEARTBEAT:
            due = blocks.as_datetime(pending.last_heartbeat_time) + blocks.as_timedelta(
                pending.timeouts.heartbeat
            )
            if due > step.now:
                step.touch()  # the commit arms the run's block timer for the heartbeat
                return
        blocks.fail(step, pending, blocks.timeout_failure(pending, kind))
        await progress.continue_run(shard, step)

    await shard.update(timer.namespace_id, timer.run_id, timer.execution_id, act)


def _armed_before_start(timer: records_pb2.TimerTask, pending: records_pb2.PendingBlock) -> bool:
    """A start-to-close or heartbeat timer fires at the earliest at its start plus the
    timeout; one that fires earlier than the current start allows (by more than rounding) was
    armed for a start that was undone."""
    timeouts = pending.timeouts
    timeout = (
        timeouts.heartbeat
        if timer.block_timeout.timeout_type == common_pb2.TIMEOUT_TYPE_HEARTBEAT
        else timeouts.start_to_close
    )
    due = pending.started_time.ToNanoseconds() + timeout.ToNanoseconds()
    return timer.fire_time.ToNanoseconds() < due - _MS


async def _block_retry(shard: Shard, timer: records_pb2.TimerTask) -> None:
    spec = timer.block_retry
    async with shard.locked(timer.namespace_id, timer.run_id, timer.execution_id) as entry:
        pending = entry.state.pending_blocks.get(spec.scheduled_event_id)
        if pending is None or pending.attempt != spec.attempt:
            return
        if pending.HasField("started_time") or entry.state.execution_info.cancel_requested:
            return
        request = matching_service_pb2.AddBlockTaskRequest(
            namespace_id=timer.namespace_id,
            task_queue=pending.task_queue,
            block_id=pending.block_id,
            scheduled_event_id=pending.scheduled_event_id,
            attempt=pending.attempt,
            priority=pending.priority,
            source_shard_id=shard.shard_id,
            dispatch=blocks.dispatch_of(entry.state.execution_info, pending),
        )
        request.run.run_id = timer.run_id
        request.run.execution_id = timer.execution_id
    request.partition = await shard.task_queues.add_partition(
        timer.namespace_id,
        request.task_queue,
        run_id=timer.run_id,
        scheduled_event_id=spec.scheduled_event_id,
        attempt=spec.attempt,
    )
    await shard.matching.add_block_task(request)


async def _run_timeout(shard: Shard, timer: records_pb2.TimerTask) -> None:
    async def act(entry: Execution, step: RunStep) -> None:
        if step.is_open:
            closing.close_run(step, common_pb2.RUN_STATUS_TIMED_OUT)

    await shard.update(timer.namespace_id, timer.run_id, timer.execution_id, act)


def _timer_gone(state: records_pb2.MutableState, timer: records_pb2.TimerTask) -> bool:
    """A block's timer row that has nothing to do: its run closed, or the timer fired or was
    canceled (it left `timers`, perhaps for another timer of the same id)."""
    spec = timer.user_timer
    current = state.timers.get(spec.timer_id)
    return (
        state.execution_info.state == records_pb2.RUN_STATE_COMPLETED
        or current is None
        or current.started_event_id != spec.started_event_id
    )


async def _user_timer(shard: Shard, timer: records_pb2.TimerTask) -> None:
    """A block's timer (a `wait`, a signal's timeout or escalation) fired: TIMER_FIRED, the
    timer leaves `timers`, its block gets `TimerFired`, and the run goes on, in one commit."""
    async with shard.locked(timer.namespace_id, timer.run_id, timer.execution_id) as entry:
        if _timer_gone(entry.state, timer):
            return

    async def act(entry: Execution, step: RunStep) -> None:
        if _timer_gone(step.state, timer):
            return
        spec = timer.user_timer
        fired = step.state.timers[spec.timer_id]
        block_id = fired.block_id
        del step.state.timers[spec.timer_id]
        event, attrs = step.add_event(
            history_pb2.EVENT_TYPE_TIMER_FIRED, "timer_fired_event_attributes"
        )
        assert isinstance(attrs, history_pb2.TimerFiredEventAttributes)
        attrs.timer_id = spec.timer_id
        attrs.started_event_id = spec.started_event_id
        await progress.deliver_event(
            shard, step, block_id, TimerFired(spec.timer_id, event.event_id)
        )

    await shard.update(timer.namespace_id, timer.run_id, timer.execution_id, act)
