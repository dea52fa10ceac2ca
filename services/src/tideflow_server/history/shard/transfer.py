"""The transfer queue of a shard: outbox tasks that reach other services.

Tasks committed by this host arrive in memory right after their commit (or after a commit
whose outcome is unknown) and are delivered at once; tasks persisted by earlier owners are
read from the store when the shard is acquired. Delivery is at least once: a task is retried
until it succeeds, and its receiver dedupes. The ack level (every task at or below it
delivered) is persisted in the shard row, and delivered tasks below it are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog

from tideflow.api.v1 import common_pb2, flow_service_pb2
from tideflow_server.history import progress
from tideflow_server.history.blocks import as_datetime
from tideflow_server.internal.v1 import matching_service_pb2, records_pb2
from tideflow_server.persistence import errors as store
from tideflow_server.persistence.records import VisibilityRow
from tideflow_server.rpc.errors import NotFound, ServiceError

if TYPE_CHECKING:
    from tideflow_server.history.shard.context import ShardContext
    from tideflow_server.history.shard.execution import Execution
    from tideflow_server.history.state import RunStep

log = structlog.get_logger(__name__)

_MAX_BACKOFF_S = 5.0


class TransferQueue:
    def __init__(self, shard: ShardContext) -> None:
        self._shard = shard
        self.ack_level = shard.lease.info.transfer_ack_level
        self._persisted_ack_level = self.ack_level
        self._pending: dict[int, asyncio.Task[None]] = {}
        self._done: set[int] = set()
        self._scanned = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._scan_loop(), name=f"transfer-scan-{self._shard.shard_id}"),
            asyncio.create_task(self._ack_loop(), name=f"transfer-ack-{self._shard.shard_id}"),
        ]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._pending.values()]:
            task.cancel()
        for task in [*self._tasks, *self._pending.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not self._shard.lost:
            with contextlib.suppress(Exception):
                await self._persist_ack()

    def submit(
        self,
        tasks: list[records_pb2.TransferTask],
        *,
        direct: Mapping[int, flow_service_pb2.PollBlockTaskResponse] | None = None,
    ) -> None:
        """Deliver `tasks`; `direct` has the worker's task of each block the commit started
        for direct dispatch, by scheduled event id."""
        for task in tasks:
            if (
                task.task_id > self.ack_level
                and task.task_id not in self._pending
                and (task.task_id not in self._done)
            ):
                direct_task = None
                if direct and task.WhichOneof("task") == "block_task":
                    direct_task = direct.get(task.block_task.scheduled_event_id)
                self._pending[task.task_id] = asyncio.create_task(self._deliver(task, direct_task))

    async def _scan_loop(self) -> None:
        """Read what earlier owners left: every task above the ack level, up to this owner's
        range (what this owner commits reaches `submit` directly)."""
        manager = self._shard.manager
        cursor = self.ack_level
        own_range = self._shard.lease.range_id << 20
        while True:
            try:
                tasks = await manager.get_transfer_tasks(
                    self._shard.shard_id,
                    min_task_id=cursor,
                    max_task_id=own_range,
                    limit=self._shard.config.transfer_batch,
                )
            except store.PersistenceError:
                log.warning("transfer scan failed", shard_id=self._shard.shard_id)
                await asyncio.sleep(1.0)
                continue
            self.submit(tasks)
            if len(tasks) < self._shard.config.transfer_batch:
                break
            cursor = tasks[-1].task_id
        self._scanned = True

    async def _deliver(
        self,
        task: records_pb2.TransferTask,
        direct_task: flow_service_pb2.PollBlockTaskResponse | None = None,
    ) -> None:
        backoff = 0.05
        while True:
            try:
                if direct_task is not None:
                    await self._add_block_task(task, direct_task)
                else:
                    await self._execute(task)
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # Only the first try carries the worker's task: the first may have reached
                # matching all the same, so a retry must go through RecordBlockStarted.
                direct_task = None
                if self._shard.lost:
                    return
                log.info("transfer task failed, retrying", task_id=task.task_id, error=str(e))
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
        self._done.add(task.task_id)
        self._pending.pop(task.task_id, None)

    async def _execute(self, task: records_pb2.TransferTask) -> None:
        kind = task.WhichOneof("task")
        if kind == "block_task":
            await self._add_block_task(task)
        elif kind in ("upsert_visibility", "close_execution"):
            await self._upsert_visibility(task)
        else:
            log.warning("unknown transfer task dropped", task_id=task.task_id, kind=kind)

    async def _add_block_task(
        self,
        task: records_pb2.TransferTask,
        direct_task: flow_service_pb2.PollBlockTaskResponse | None = None,
    ) -> None:
        block = task.block_task
        request = matching_service_pb2.AddBlockTaskRequest(
            namespace_id=task.namespace_id,
            task_queue=block.task_queue,
            partition=0,
            block_id=block.block_id,
            scheduled_event_id=block.scheduled_event_id,
            attempt=block.attempt,
            source_shard_id=self._shard.shard_id,
            direct_task=direct_task,
        )
        request.run.run_id = task.run_id
        request.run.execution_id = task.execution_id
        response = await self._shard.matching.add_block_task(request)
        if self._shard.direct is not None:
            self._shard.direct.note(
                task.namespace_id, block.task_queue, matched=response.sync_matched
            )
        if not response.sync_matched:
            await self._unstart(task)

    async def _unstart(self, task: records_pb2.TransferTask) -> None:
        """Undo the direct start of a block whose task matching persisted (no poll waited).
        Any add may find one: a retried add, a redelivered outbox task, or the add after a
        commit whose outcome was unknown go as ordinary tasks. Retried here, not by
        redelivering the task: matching already holds it."""
        block = task.block_task
        try:
            async with self._shard.locked(
                task.namespace_id, task.run_id, task.execution_id
            ) as entry:
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
        while not self._shard.lost:
            try:
                await self._shard.update(task.namespace_id, task.run_id, task.execution_id, act)
                return
            except NotFound:
                return  # the run is gone
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.info("direct start not undone, retrying", task_id=task.task_id, error=str(e))
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def _upsert_visibility(self, task: records_pb2.TransferTask) -> None:
        try:
            async with self._shard.locked(
                task.namespace_id, task.run_id, task.execution_id
            ) as entry:
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
            await self._shard.visibility.upsert(row)
        except store.PersistenceError as e:
            raise ServiceError(str(e)) from e

    def _ackable(self) -> int:
        """The highest id with every task at or below it delivered (or never committed)."""
        if not self._scanned:
            return self.ack_level
        bound = min(self._pending, default=None)
        inflight = self._shard.min_inflight_task_id()
        limits = [x - 1 for x in (bound, inflight) if x is not None]
        highest_done = max(self._done, default=self.ack_level)
        level = min([highest_done, *limits])
        return max(level, self.ack_level)

    async def _persist_ack(self) -> None:
        level = self._ackable()
        self.ack_level = level
        self._done = {t for t in self._done if t > level}
        if level <= self._persisted_ack_level:
            return
        info = records_pb2.ShardInfo()
        info.CopyFrom(self._shard.lease.info)
        info.transfer_ack_level = level
        try:
            await self._shard.manager.update_shard_info(self._shard.lease, info)
        except store.ShardOwnershipLost:
            self._shard.mark_lost()
            return
        self._persisted_ack_level = level
        await self._shard.manager.persistence.executions.range_complete_transfer_tasks(
            self._shard.shard_id, max_task_id=level
        )

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(self._shard.config.ack_interval_s)
            try:
                await self._persist_ack()
            except store.PersistenceError:
                log.info("transfer ack not persisted; will retry", shard_id=self._shard.shard_id)
            except Exception:
                log.exception("transfer ack failed", shard_id=self._shard.shard_id)
