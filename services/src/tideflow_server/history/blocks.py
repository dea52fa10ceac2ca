"""The life of an external block inside a run step: scheduled, dispatched, started, and closed
by a completion, a failure, a timeout or a cancellation, with retries in between.

Retries add no events: an attempt lives in the pending block, and BLOCK_STARTED is written
with the closing event, carrying the attempt that closed it (so unlimited retries cannot grow
history). Every attempt is a pointer for matching (a block task or a retry timer), checked by
RecordBlockStarted against the pending block's current attempt.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

from google.protobuf import duration_pb2, timestamp_pb2

from tideflow.api.v1 import blueprint_pb2, common_pb2, failure_pb2, flow_service_pb2, history_pb2
from tideflow_server import observability
from tideflow_server.config import HistoryConfig
from tideflow_server.history import payloads
from tideflow_server.history.interpreter import ScheduleExternal, attempts_exhausted, retry_delay
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import history_service_pb2, records_pb2
from tideflow_server.tokens import block_task_response


def as_datetime(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def as_timedelta(d: duration_pb2.Duration) -> timedelta:
    return d.ToTimedelta()


def is_set(d: duration_pb2.Duration) -> bool:
    return d.seconds > 0 or d.nanos > 0


def schedule(step: RunStep, cmd: ScheduleExternal) -> records_pb2.PendingBlock:
    event, attrs = step.add_event(
        history_pb2.EVENT_TYPE_BLOCK_SCHEDULED, "block_scheduled_event_attributes"
    )
    assert isinstance(attrs, history_pb2.BlockScheduledEventAttributes)
    attrs.block_id = cmd.block_id
    attrs.block_type = cmd.block_type
    attrs.task_queue.name = cmd.task_queue
    attrs.task_queue.kind = common_pb2.TASK_QUEUE_KIND_NORMAL
    attrs.input.CopyFrom(payloads.to_payloads(cmd.input))
    attrs.timeouts.CopyFrom(cmd.timeouts)
    attrs.retry_policy.CopyFrom(cmd.retry)
    attrs.attempt = 1
    attrs.priority = cmd.priority
    attrs.affinity = cmd.affinity
    attrs.affinity_key = cmd.affinity_key
    attrs.fairness_key = cmd.fairness_key

    pending = step.state.pending_blocks[event.event_id]
    pending.block_id = cmd.block_id
    pending.block_type = cmd.block_type
    pending.task_queue.CopyFrom(attrs.task_queue)
    pending.attempt = 1
    pending.scheduled_event_id = event.event_id
    pending.scheduled_time.FromDatetime(step.now)
    pending.timeouts.CopyFrom(cmd.timeouts)
    pending.retry_policy.CopyFrom(cmd.retry)
    pending.priority = cmd.priority
    pending.affinity = cmd.affinity
    pending.scheduled_batch_event_id = step.events[0].event_id
    dispatch = pending.dispatch
    dispatch.priority = cmd.priority
    dispatch.fairness_key = cmd.fairness_key
    dispatch.affinity_key = cmd.affinity_key
    dispatch.block_type = cmd.block_type
    dispatch.run_start_time.CopyFrom(step.info.start_time)
    if cmd.sticky_schedule_to_start is not None:
        dispatch.sticky_schedule_to_start.CopyFrom(cmd.sticky_schedule_to_start)

    result = step.state.block_results[cmd.block_id]
    result.kind = blueprint_pb2.BLOCK_KIND_EXTERNAL
    result.status = common_pb2.BLOCK_STATUS_RUNNING
    result.scheduled_event_id = event.event_id
    result.attempt = 1

    _dispatch_attempt(step, pending, step.now)
    return pending


# -- timeouts: one timer row per run, for its earliest deadline -------------------------------
#
# A block's deadlines follow from its pending state (scheduled, started, last heartbeat), so
# they are not written as timer rows one by one. When a step commits, `arm_block_timer` arms
# one row (TimerTask.block_timeouts) for the run's earliest deadline, unless the row already
# armed (RunExecutionInfo.block_timer) fires no later. When that row fires, every block whose
# deadline has passed times out, and the commit arms the row for the next deadline. A run of
# sequential blocks, each starting after the last one closed, so arms one row in all.

_TimeoutType: TypeAlias = common_pb2.TimeoutType.ValueType


def deadlines(pending: records_pb2.PendingBlock) -> list[tuple[datetime, _TimeoutType]]:
    """When each timeout of the block's current attempt falls due, as it stands."""
    timeouts = pending.timeouts
    out: list[tuple[datetime, _TimeoutType]] = []

    def due(
        since: timestamp_pb2.Timestamp, timeout: duration_pb2.Duration, kind: _TimeoutType
    ) -> None:
        if is_set(timeout):
            out.append((as_datetime(since) + as_timedelta(timeout), kind))

    due(
        pending.scheduled_time,
        timeouts.schedule_to_close,
        common_pb2.TIMEOUT_TYPE_SCHEDULE_TO_CLOSE,
    )
    if pending.HasField("started_time"):
        due(pending.started_time, timeouts.start_to_close, common_pb2.TIMEOUT_TYPE_START_TO_CLOSE)
        due(pending.last_heartbeat_time, timeouts.heartbeat, common_pb2.TIMEOUT_TYPE_HEARTBEAT)
    else:
        due(
            pending.current_attempt_scheduled_time,
            timeouts.schedule_to_start,
            common_pb2.TIMEOUT_TYPE_SCHEDULE_TO_START,
        )
    return out


def expired(pending: records_pb2.PendingBlock, now: datetime) -> _TimeoutType | None:
    """The timeout of the block that fell due first, if one has by `now`."""
    due = [d for d in deadlines(pending) if d[0] <= now]
    return min(due, key=lambda d: d[0])[1] if due else None


def _ceil_ms(at: datetime) -> datetime:
    """Timer rows fire on whole milliseconds: round up, so a timeout never fires early."""
    return at + timedelta(microseconds=-at.microsecond % 1000)


# -- re-dispatch: a task lost on the way cannot strand a run ----------------------------------
#
# History keeps a block scheduled until a poll starts it, and only its transfer task reaches
# matching; if that task is lost after delivery (a matching bug, a fault nobody foresaw), the
# run would wait forever. So an attempt not started `after` its dispatch has its task sent
# again, by the same block timer row (one more deadline of the not-started attempt, no row of
# its own). The copies are of the same attempt: RecordBlockStarted lets one poll start it and
# drops the others as stale. The wait doubles after each resend (up to `max_interval`), so a
# block legitimately waiting behind a long backlog adds a few copies, not one per interval.


@dataclass(frozen=True, slots=True)
class Redispatch:
    after: timedelta
    max_interval: timedelta

    @classmethod
    def of(cls, config: HistoryConfig) -> Redispatch:
        return cls(
            timedelta(seconds=config.redispatch_after_s),
            timedelta(seconds=config.redispatch_max_interval_s),
        )


def redispatch_due(pending: records_pb2.PendingBlock, policy: Redispatch) -> datetime | None:
    """When the current attempt's task goes to matching again unless a poll starts it first;
    None while it is started."""
    if pending.HasField("started_time"):
        return None
    since = as_datetime(pending.current_attempt_scheduled_time)
    if not pending.HasField("redispatched_time"):
        return since + policy.after
    last = as_datetime(pending.redispatched_time)
    return last + min(max(last - since, policy.after), policy.max_interval)


def redispatch(step: RunStep, pending: records_pb2.PendingBlock) -> None:
    """Send the current attempt's task to matching again (same attempt, same pointer)."""
    pending.redispatched_time.FromDatetime(step.now)
    _add_block_task(step, pending)


def arm_block_timer(step: RunStep, policy: Redispatch) -> None:
    """Before a commit: arm a timer row for the run's earliest block deadline (a timeout or a
    re-dispatch), unless the row already armed fires no later (see the comments above
    `deadlines` and `Redispatch`)."""
    if not step.is_open or not step.state.pending_blocks:
        return
    earliest = min(
        (
            due
            for p in step.state.pending_blocks.values()
            for due in (*(d for d, _ in deadlines(p)), redispatch_due(p, policy))
            if due is not None
        ),
        default=None,
    )
    if earliest is None:
        return
    fire_at = _ceil_ms(earliest)
    armed = step.info.block_timer
    if armed.HasField("fire_time") and as_datetime(armed.fire_time) <= fire_at:
        return
    timer = step.add_timer(fire_at)
    timer.block_timeouts.SetInParent()
    armed.fire_time.FromDatetime(fire_at)
    armed.task_id = 0  # set when the commit allocates the row's id (RunStep.block_timer)
    step.block_timer = timer


def _dispatch_attempt(step: RunStep, pending: records_pb2.PendingBlock, at: datetime) -> None:
    """Make the current attempt dispatchable at `at`: a block task now, or a retry timer."""
    pending.current_attempt_scheduled_time.FromDatetime(at)
    pending.ClearField("redispatched_time")
    # The decision's span (when traced): the attempt's dispatch and run are its children.
    pending.trace_context.clear()
    if context := observability.inject():
        pending.trace_context.update(context)
    if at <= step.now:
        _add_block_task(step, pending)
    else:
        timer = step.add_timer(at)
        timer.block_retry.scheduled_event_id = pending.scheduled_event_id
        timer.block_retry.attempt = pending.attempt


def _add_block_task(step: RunStep, pending: records_pb2.PendingBlock) -> None:
    task = step.add_transfer()
    task.block_task.task_queue.CopyFrom(pending.task_queue)
    task.block_task.scheduled_event_id = pending.scheduled_event_id
    task.block_task.attempt = pending.attempt
    task.block_task.block_id = pending.block_id
    task.block_task.dispatch.CopyFrom(dispatch_of(step.info, pending))


def dispatch_of(
    info: records_pb2.RunExecutionInfo, pending: records_pb2.PendingBlock
) -> records_pb2.TaskDispatch:
    """How matching routes the current attempt's task. `affinity: run` sends the first try of
    a block to the sticky queue of the worker that last started one of the run's blocks on the
    same queue; a retry or a resend goes to the queue, as a failure may be the worker's."""
    dispatch = records_pb2.TaskDispatch()
    dispatch.CopyFrom(pending.dispatch)
    if not pending.HasField("dispatch"):
        dispatch.priority = pending.priority  # a block scheduled before TaskDispatch existed
    if (
        pending.affinity == blueprint_pb2.AFFINITY_RUN
        and pending.attempt == 1
        and not pending.HasField("redispatched_time")
    ):
        dispatch.sticky_task_queue = info.sticky_task_queues.get(pending.task_queue.name, "")
    return dispatch


def record_started(
    step: RunStep,
    pending: records_pb2.PendingBlock,
    *,
    identity: str,
    request_id: str,
    sticky_task_queue: str = "",
    concurrency_limited: bool = False,
) -> None:
    """`sticky_task_queue`: the starting worker's own queue, where the run's next `affinity:
    run` block on this queue goes first; empty keeps the one recorded (an eager start is by
    the worker that just answered). `concurrency_limited`: matching holds a concurrency slot
    for the attempt, released when it closes (`release_slot`)."""
    pending.started_time.FromDatetime(step.now)
    pending.concurrency_limited = concurrency_limited
    pending.started_identity = identity
    pending.request_id = request_id
    pending.last_heartbeat_time.FromDatetime(step.now)
    if identity:
        step.info.last_worker_identity = identity
    if sticky_task_queue:
        step.info.sticky_task_queues[pending.task_queue.name] = sticky_task_queue
    pending.direct = False
    step.touch()


def _scheduled_in(step: RunStep) -> dict[int, history_pb2.HistoryEvent]:
    """The BLOCK_SCHEDULED events this step appends, by event id."""
    return {
        e.event_id: e for e in step.events if e.event_type == history_pb2.EVENT_TYPE_BLOCK_SCHEDULED
    }


def start_directly(
    step: RunStep, wanted: Callable[[common_pb2.TaskQueue], bool]
) -> list[tuple[records_pb2.PendingBlock, history_pb2.HistoryEvent]]:
    """Direct dispatch: start, in this step, the blocks it schedules for dispatch now on
    `wanted` task queues, so that a poll already waiting in matching can take the task without
    RecordBlockStarted.

    The transfer tasks stay: matching gets each with its task and either hands it to a waiting
    poll or persists it, and then history undoes the start (`unstart`). Returns each started
    block with its BLOCK_SCHEDULED event."""
    scheduled_now = _scheduled_in(step)
    started: list[tuple[records_pb2.PendingBlock, history_pb2.HistoryEvent]] = []
    for task in step.transfer_tasks:
        if task.WhichOneof("task") != "block_task":
            continue
        scheduled_id = task.block_task.scheduled_event_id
        pending = step.state.pending_blocks.get(scheduled_id)
        if (
            scheduled_id not in scheduled_now
            or pending is None
            or pending.attempt != task.block_task.attempt
            or pending.HasField("started_time")
            or pending.cancel_requested
            or not wanted(pending.task_queue)
        ):
            continue
        record_started(step, pending, identity="", request_id=f"direct-{uuid.uuid4()}")
        pending.direct = True
        started.append((pending, scheduled_now[scheduled_id]))
    return started


def unstart(step: RunStep, pending: records_pb2.PendingBlock) -> None:
    """Undo a direct start that no poll took: the attempt waits in the backlog, and starts
    when a poll takes it from there. Its deadlines are those of an attempt not started (the
    run's block timer row, if armed for the start-to-close, finds nothing due)."""
    release_slot(step, pending)
    _clear_start(pending)
    step.touch()


def release_slot(step: RunStep, pending: records_pb2.PendingBlock) -> None:
    """The current attempt closes (completed, failed, timed out, canceled, retried, its start
    undone, or its run closed): if it holds a concurrency slot, the outbox frees it at the
    queue's root partition. Attempts of unlimited queues hold none and send nothing."""
    if not pending.concurrency_limited:
        return
    pending.concurrency_limited = False
    release = step.add_transfer().release_concurrency_slot
    release.task_queue.CopyFrom(pending.task_queue)
    release.scheduled_event_id = pending.scheduled_event_id
    release.attempt = pending.attempt
    release.block_type = pending.block_type


def _clear_start(pending: records_pb2.PendingBlock) -> None:
    """The attempt as not started (an undone direct start, or a retry's next attempt)."""
    for field in ("started_time", "last_heartbeat_time"):
        pending.ClearField(field)
    pending.started_identity = ""
    pending.request_id = ""
    pending.direct = False


def _claim(step: RunStep, pending: records_pb2.PendingBlock, identity: str) -> None:
    """A worker answered for a directly dispatched attempt: it is the one running it, so no
    poll may take the attempt over any more."""
    if not pending.direct:
        return
    pending.direct = False
    if identity:
        pending.started_identity = identity
        step.info.last_worker_identity = identity
    step.touch()


def start_eagerly(
    step: RunStep, task_queue: common_pb2.TaskQueue, *, identity: str, slots: int
) -> list[tuple[records_pb2.PendingBlock, history_pb2.HistoryEvent]]:
    """Eager dispatch: start up to `slots` of the blocks this step schedules on
    `task_queue` for the worker `identity`, in place of their trip through matching. Their
    transfer tasks are dropped; the attempts are started in this step, so they commit with it
    and run under the same timeouts as polled ones. Not a block with an affinity key: the
    key's owner may be another worker, so it goes through matching. Returns each with its
    BLOCK_SCHEDULED event."""
    scheduled_now = _scheduled_in(step)
    started: list[tuple[records_pb2.PendingBlock, history_pb2.HistoryEvent]] = []
    kept: list[records_pb2.TransferTask] = []
    for task in step.transfer_tasks:
        block_task = task.block_task
        if (
            len(started) < slots
            and task.WhichOneof("task") == "block_task"
            and block_task.scheduled_event_id in scheduled_now
            and block_task.task_queue.name == task_queue.name
            and block_task.task_queue.kind == task_queue.kind
            and not block_task.dispatch.affinity_key
        ):
            pending = step.state.pending_blocks[block_task.scheduled_event_id]
            record_started(step, pending, identity=identity, request_id=f"eager-{uuid.uuid4()}")
            started.append((pending, scheduled_now[block_task.scheduled_event_id]))
        else:
            kept.append(task)
    step.transfer_tasks[:] = kept
    return started


def started_response(
    state: records_pb2.MutableState,
    pending: records_pb2.PendingBlock,
    scheduled_event: history_pb2.HistoryEvent,
) -> history_service_pb2.RecordBlockStartedResponse:
    """What a worker needs of a started attempt (matching builds its block task from this,
    and so does history for eager and direct dispatch)."""
    response = history_service_pb2.RecordBlockStartedResponse(attempt=pending.attempt)
    response.scheduled_event.CopyFrom(scheduled_event)
    response.started_time.CopyFrom(pending.started_time)
    response.current_attempt_scheduled_time.CopyFrom(pending.current_attempt_scheduled_time)
    response.heartbeat_details.CopyFrom(pending.heartbeat_details)
    response.flow.CopyFrom(state.execution_info.flow)
    if pending.trace_context:
        response.trace_context.update(pending.trace_context)
    return response


def worker_task(
    step: RunStep, pending: records_pb2.PendingBlock, scheduled: history_pb2.HistoryEvent
) -> flow_service_pb2.PollBlockTaskResponse:
    """The task a worker gets for an attempt started in `step` (eager or direct dispatch)."""
    return block_task_response(
        namespace_id=step.info.namespace_id,
        run=common_pb2.RunRef(run_id=step.info.run_id, execution_id=step.info.execution_id),
        scheduled_event_id=pending.scheduled_event_id,
        started=started_response(step.state, pending, scheduled),
    )


def record_heartbeat(
    step: RunStep,
    pending: records_pb2.PendingBlock,
    details: common_pb2.Payloads,
    identity: str = "",
) -> None:
    _claim(step, pending, identity)
    pending.last_heartbeat_time.FromDatetime(step.now)
    if details.payloads:
        pending.heartbeat_details.CopyFrom(details)
    step.touch()


def _started_event(step: RunStep, pending: records_pb2.PendingBlock) -> int:
    if not pending.HasField("started_time"):
        return 0
    event, attrs = step.add_event(
        history_pb2.EVENT_TYPE_BLOCK_STARTED, "block_started_event_attributes"
    )
    assert isinstance(attrs, history_pb2.BlockStartedEventAttributes)
    attrs.scheduled_event_id = pending.scheduled_event_id
    attrs.identity = pending.started_identity
    attrs.request_id = pending.request_id
    attrs.attempt = pending.attempt
    if pending.HasField("last_failure"):
        attrs.last_failure.CopyFrom(pending.last_failure)
    return event.event_id


def _close(
    step: RunStep,
    pending: records_pb2.PendingBlock,
    status: common_pb2.BlockStatus.ValueType,
    close_event_id: int,
) -> records_pb2.BlockResult:
    result = step.state.block_results[pending.block_id]
    result.status = status
    result.attempt = pending.attempt
    result.close_event_id = close_event_id
    release_slot(step, pending)
    del step.state.pending_blocks[pending.scheduled_event_id]
    return result


def complete(
    step: RunStep,
    pending: records_pb2.PendingBlock,
    result: common_pb2.Payloads,
    identity: str,
    *,
    sticky_task_queue: str = "",
) -> None:
    """`sticky_task_queue`: the completing worker's own queue. Recorded before the run moves
    on, so the blocks this completion schedules go there first; an attempt started by direct
    dispatch recorded none at its start."""
    output = payloads.to_value(payloads.from_payloads(result, "result"))  # before any change
    _claim(step, pending, identity)
    if sticky_task_queue:
        step.info.sticky_task_queues[pending.task_queue.name] = sticky_task_queue
    started = _started_event(step, pending)
    event, attrs = step.add_event(
        history_pb2.EVENT_TYPE_BLOCK_COMPLETED, "block_completed_event_attributes"
    )
    assert isinstance(attrs, history_pb2.BlockCompletedEventAttributes)
    attrs.scheduled_event_id = pending.scheduled_event_id
    attrs.started_event_id = started
    attrs.result.CopyFrom(result)
    attrs.identity = identity
    closed = _close(step, pending, common_pb2.BLOCK_STATUS_SUCCEEDED, event.event_id)
    closed.output.CopyFrom(output)


def retry_decision(
    pending: records_pb2.PendingBlock, failure: failure_pb2.Failure, now: datetime
) -> tuple[common_pb2.RetryState.ValueType, timedelta | None]:
    """Whether another attempt follows this failure, and after how long."""
    policy = pending.retry_policy
    if failure.HasField("application_failure_info"):
        app = failure.application_failure_info
        if app.non_retryable or app.type in policy.non_retryable_error_types:
            return common_pb2.RETRY_STATE_NON_RETRYABLE_FAILURE, None
    if failure.HasField("timeout_failure_info") and failure.timeout_failure_info.timeout_type in (
        common_pb2.TIMEOUT_TYPE_SCHEDULE_TO_START,
        common_pb2.TIMEOUT_TYPE_SCHEDULE_TO_CLOSE,
    ):
        return common_pb2.RETRY_STATE_TIMEOUT, None
    if attempts_exhausted(policy, pending.attempt):
        return common_pb2.RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED, None
    delay = retry_delay(policy, pending.attempt)
    if policy.jitter > 0:
        # Spread retries of many runs failing together; the chosen time is recorded in state.
        delay *= 1 - min(policy.jitter, 1.0) * random.random()
    timeouts = pending.timeouts
    if is_set(timeouts.schedule_to_close):
        deadline = as_datetime(pending.scheduled_time) + as_timedelta(timeouts.schedule_to_close)
        if now + delay >= deadline:
            return common_pb2.RETRY_STATE_TIMEOUT, None
    return common_pb2.RETRY_STATE_IN_PROGRESS, delay


def fail(
    step: RunStep,
    pending: records_pb2.PendingBlock,
    failure: failure_pb2.Failure,
    *,
    identity: str = "",
    last_heartbeat_details: common_pb2.Payloads | None = None,
) -> bool:
    """Close the attempt with `failure`; retry if the policy allows. True when retrying."""
    _claim(step, pending, identity)
    if last_heartbeat_details is not None and last_heartbeat_details.payloads:
        pending.heartbeat_details.CopyFrom(last_heartbeat_details)
    retry_state, delay = retry_decision(pending, failure, step.now)
    if step.info.cancel_requested:
        retry_state, delay = common_pb2.RETRY_STATE_CANCEL_REQUESTED, None
    if delay is not None:
        release_slot(step, pending)  # before the attempt number moves on
        pending.attempt += 1
        pending.last_failure.CopyFrom(failure)
        _clear_start(pending)
        step.state.block_results[pending.block_id].attempt = pending.attempt
        _dispatch_attempt(step, pending, step.now + delay)
        step.touch()
        return True
    started = _started_event(step, pending)
    timed_out = failure.HasField("timeout_failure_info")
    event_type = (
        history_pb2.EVENT_TYPE_BLOCK_TIMED_OUT if timed_out else history_pb2.EVENT_TYPE_BLOCK_FAILED
    )
    field = "block_timed_out_event_attributes" if timed_out else "block_failed_event_attributes"
    event, attrs = step.add_event(event_type, field)
    assert isinstance(
        attrs, history_pb2.BlockTimedOutEventAttributes | history_pb2.BlockFailedEventAttributes
    )
    attrs.scheduled_event_id = pending.scheduled_event_id
    attrs.started_event_id = started
    attrs.failure.CopyFrom(failure)
    attrs.retry_state = retry_state
    if isinstance(attrs, history_pb2.BlockFailedEventAttributes):
        attrs.identity = identity
    where = failure_pb2.BlockFailureInfo(
        block_type=pending.block_type,
        attempt=pending.attempt,
        scheduled_event_id=pending.scheduled_event_id,
        started_event_id=started,
        identity=identity or pending.started_identity,
        retry_state=retry_state,
    )
    closed = _close(step, pending, common_pb2.BLOCK_STATUS_FAILED, event.event_id)
    closed.failure.CopyFrom(block_failure(pending.block_id, failure, where))
    return False


def block_failure(
    block_id: str,
    cause: failure_pb2.Failure,
    where: failure_pb2.BlockFailureInfo | None = None,
) -> failure_pb2.Failure:
    """A block's final failure as its run reports it (BlockResult.failure, DescribeRun,
    RUN_FAILED): a BlockFailureInfo saying where it happened, over the failure itself, as the
    worker sent it (or the timeout, or the engine's error), as its cause. A system block has
    no attempts or events of its own: only its id is set."""
    failure = failure_pb2.Failure(message=f"block {block_id!r} failed", source="tideflow")
    if where is not None:
        failure.block_failure_info.CopyFrom(where)
    failure.block_failure_info.block_id = block_id
    failure.cause.CopyFrom(cause)
    return failure


def timeout_failure(
    pending: records_pb2.PendingBlock, timeout_type: common_pb2.TimeoutType.ValueType
) -> failure_pb2.Failure:
    name = common_pb2.TimeoutType.Name(timeout_type).removeprefix("TIMEOUT_TYPE_").lower()
    failure = failure_pb2.Failure(
        message=f"block {pending.block_id!r} attempt {pending.attempt}: {name} timeout",
        source="tideflow",
    )
    failure.timeout_failure_info.timeout_type = timeout_type
    if pending.heartbeat_details.payloads:
        failure.timeout_failure_info.last_heartbeat_details.CopyFrom(pending.heartbeat_details)
    return failure


def cancel(
    step: RunStep,
    pending: records_pb2.PendingBlock,
    *,
    details: common_pb2.Payloads | None = None,
    identity: str = "",
) -> None:
    _claim(step, pending, identity)
    started = _started_event(step, pending)
    event, attrs = step.add_event(
        history_pb2.EVENT_TYPE_BLOCK_CANCELED, "block_canceled_event_attributes"
    )
    assert isinstance(attrs, history_pb2.BlockCanceledEventAttributes)
    attrs.scheduled_event_id = pending.scheduled_event_id
    attrs.started_event_id = started
    attrs.latest_cancel_requested_event_id = pending.cancel_request_event_id
    if details is not None:
        attrs.details.CopyFrom(details)
    attrs.identity = identity
    _close(step, pending, common_pb2.BLOCK_STATUS_CANCELED, event.event_id)
