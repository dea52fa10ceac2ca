"""What delivering an outbox task does: a block task goes to matching (and a direct start
that no poll took is undone), a run's start or close reaches visibility, a child run is
started, reported closed to its parent or given its parent close policy (`children`). The
transfer queue
(shard/transfer.py) calls `execute` until it returns, so each part may run more than once,
and each checks the run's current state first."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping

import structlog

from tideflow.api.v1 import common_pb2, flow_service_pb2
from tideflow_server.history import progress
from tideflow_server.history.blocks import as_datetime
from tideflow_server.history.shard.execution import Execution
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.history.tasks import children, event_waits
from tideflow_server.internal.v1 import matching_service_pb2, records_pb2
from tideflow_server.persistence import errors as store
from tideflow_server.persistence.records import VisibilityRow
from tideflow_server.rpc.errors import NotFound, ServiceError

log = structlog.get_logger(__name__)

_MAX_BACKOFF_S = 5.0


async def execute(
    shard: Shard,
    task: records_pb2.TransferTask,
    direct_task: flow_service_pb2.PollBlockTaskResponse | None = None,
) -> None:
    """Deliver one outbox task; `direct_task` is the worker's task of a block the commit
    started for direct dispatch (first try only)."""
    kind = task.WhichOneof("task") or ""
    if kind == "block_task":
        await _add_block_task(shard, task, direct_task)
    elif kind in _EXECUTORS:
        await _EXECUTORS[kind](shard, task)
    else:
        log.warning("unknown transfer task dropped", task_id=task.task_id, kind=kind)


async def _add_block_task(
    shard: Shard,
    task: records_pb2.TransferTask,
    direct_task: flow_service_pb2.PollBlockTaskResponse | None,
) -> None:
    block = task.block_task
    partition = await shard.task_queues.add_partition(
        task.namespace_id,
        block.task_queue,
        run_id=task.run_id,
        scheduled_event_id=block.scheduled_event_id,
        attempt=block.attempt,
    )
    request = matching_service_pb2.AddBlockTaskRequest(
        namespace_id=task.namespace_id,
        task_queue=block.task_queue,
        partition=partition,
        block_id=block.block_id,
        scheduled_event_id=block.scheduled_event_id,
        attempt=block.attempt,
        source_shard_id=shard.shard_id,
        direct_task=direct_task,
        dispatch=block.dispatch,
        priority=block.dispatch.priority,
    )
    request.run.run_id = task.run_id
    request.run.execution_id = task.execution_id
    response = await shard.matching.add_block_task(request)
    if shard.direct is not None:
        shard.direct.note(task.namespace_id, block.task_queue, matched=response.sync_matched)
    if not response.sync_matched:
        await _unstart(shard, task)


async def _unstart(shard: Shard, task: records_pb2.TransferTask) -> None:
    """Undo the direct start of a block whose task matching persisted (no poll waited).
    Any add may find one: a retried add, a redelivered outbox task, or the add after a
    commit whose outcome was unknown go as ordinary tasks. Retried here, not by
    redelivering the task: matching already holds it."""
    block = task.block_task
    try:
        async with shard.locked(task.namespace_id, task.run_id, task.execution_id) as entry:
            pending = entry.state.pending_blocks.get(block.scheduled_event_id)
            if pending is None or pending.attempt != block.attempt or not pending.direct:
                return  # the common case: nothing to undo, and no step to build
    except NotFound:
        return

    async def act(entry: Execution, step: RunStep) -> None:
        pending = step.state.pending_blocks.get(block.scheduled_event_id)
        if pending is None or pending.attempt != block.attempt or not pending.direct:
            return  # closed, retried, taken over by a poll, or answered for by a worker
        progress.undo_direct_start(step, pending)

    backoff = 0.05
    while not shard.lost:
        try:
            await shard.update(task.namespace_id, task.run_id, task.execution_id, act)
            return
        except NotFound:
            return  # the run is gone
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.info("direct start not undone, retrying", task_id=task.task_id, error=str(e))
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, _MAX_BACKOFF_S)


async def _release_concurrency_slot(shard: Shard, task: records_pb2.TransferTask) -> None:
    """Needs nothing of the run (it may be gone): the task says which slot."""
    release = task.release_concurrency_slot
    await shard.matching.release_concurrency_slot(
        matching_service_pb2.ReleaseConcurrencySlotRequest(
            namespace_id=task.namespace_id,
            task_queue=release.task_queue,
            slot=records_pb2.ConcurrencySlot(
                namespace_id=task.namespace_id,
                run_id=task.run_id,
                execution_id=task.execution_id,
                scheduled_event_id=release.scheduled_event_id,
                attempt=release.attempt,
                block_type=release.block_type,
            ),
        )
    )


async def _upsert_visibility(shard: Shard, task: records_pb2.TransferTask) -> None:
    try:
        async with shard.locked(task.namespace_id, task.run_id, task.execution_id) as entry:
            info = entry.state.execution_info
            row = VisibilityRow(
                namespace_id=info.namespace_id,
                run_id=info.run_id,
                execution_id=info.execution_id,
                flow_name=info.flow.name,
                flow_version=info.flow.version,
                task_queue=info.task_queue.name,
                status=info.status,
                start_time_ms=int(as_datetime(info.start_time).timestamp() * 1000),
                close_time_ms=(
                    int(as_datetime(info.close_time).timestamp() * 1000)
                    if info.status != common_pb2.RUN_STATUS_RUNNING
                    else None
                ),
                history_length=info.next_event_id - 1,
                memo=info.memo.SerializeToString(),
            )
    except NotFound:
        return  # deleted since: nothing to show
    try:
        await shard.visibility.upsert(row)
    except store.PersistenceError as e:
        raise ServiceError(str(e)) from e


_EXECUTORS: Mapping[str, Callable[[Shard, records_pb2.TransferTask], Awaitable[None]]] = {
    "upsert_visibility": _upsert_visibility,
    "close_execution": _upsert_visibility,
    "start_child_run": children.start_child,
    "child_closed": children.report_close,
    "parent_closed": children.apply_parent_close_policy,
    "register_event_wait": event_waits.register,
    "release_concurrency_slot": _release_concurrency_slot,
}
"""By the TransferTask `task` field; a block task also gets its direct start."""
