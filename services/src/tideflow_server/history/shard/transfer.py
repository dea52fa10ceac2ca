"""The transfer queue of a shard: outbox tasks that reach other services.

Tasks committed by this host arrive in memory right after their commit (or after a commit
whose outcome is unknown) and are delivered at once; tasks persisted by earlier owners are
read from the store when the shard is acquired. Delivery is at least once: a task is retried
until it succeeds, and its receiver dedupes; what delivering one does is the executor the
shard gives the queue (tasks/transfer.py). The ack level (every task at or below it
delivered) is persisted in the shard row, and delivered tasks below it are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Mapping

import structlog

from tideflow.api.v1 import flow_service_pb2
from tideflow_server.history.shard.port import QueueOwner
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.persistence import errors as store

log = structlog.get_logger(__name__)

_MAX_BACKOFF_S = 5.0


class TransferQueue:
    def __init__(
        self,
        shard: QueueOwner,
        execute: Callable[
            [records_pb2.TransferTask, flow_service_pb2.PollBlockTaskResponse | None],
            Awaitable[None],
        ],
    ) -> None:
        """`execute` delivers one task (tasks/transfer.py): the queue runs it until it
        returns, with the worker's task of a direct start on the first try only."""
        self._shard = shard
        self._execute = execute
        self.ack_level = shard.lease.info.transfer_ack_level
        self._persisted_ack_level = self.ack_level
        self._pending: dict[int, asyncio.Task[None]] = {}
        self._since: dict[int, float] = {}
        """When each task in delivery was handed over (monotonic), for its lag."""
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
                self._since[task.task_id] = time.monotonic()

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
                await self._execute(task, direct_task)
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
        self._since.pop(task.task_id, None)

    def lag(self) -> tuple[float, int]:
        """Seconds the oldest task in delivery has waited, and the tasks in delivery."""
        if not self._since:
            return 0.0, 0
        return max(0.0, time.monotonic() - min(self._since.values())), len(self._since)

    def done_through(self, task_id: int) -> bool:
        """Every task with an id up to `task_id` is delivered (or was never committed): what
        earlier owners left is read, none of those ids is in delivery, and no commit that may
        still write one is in flight."""
        if not self._scanned or any(pending <= task_id for pending in self._pending):
            return False
        inflight = self._shard.min_inflight_task_id()
        return inflight is None or inflight > task_id

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
