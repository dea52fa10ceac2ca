"""How many partitions a task queue has, as history (where adds go) and the frontend (where
polls go) learn it: the config in the root partition's row, cached for a few seconds.

One read per queue per TTL, never one per add: an entry past its TTL is still answered from
while one read refreshes it in the background, so only a queue's first add or poll on a host
waits for the database. A queue without a root row yet has the default config.
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from tideflow.api.v1 import common_pb2, task_queue_pb2
from tideflow_server import queue_config
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.persistence import errors as store_errors
from tideflow_server.persistence.interfaces import TaskStore
from tideflow_server.persistence.records import TaskQueueKey
from tideflow_server.rpc.errors import Unavailable

log = structlog.get_logger(__name__)

_MAX_QUEUES = 10_000


@dataclass(frozen=True, slots=True)
class QueuePartitions:
    config: task_queue_pb2.TaskQueueConfig
    partitions: int
    """Where adds go: 0 .. partitions - 1."""
    read_partitions: int
    """Where polls go: every partition that may still hold tasks (a lowered count leaves
    tasks in the partitions it no longer writes to)."""


def _normal(kind: int) -> bool:
    return kind in (common_pb2.TASK_QUEUE_KIND_UNSPECIFIED, common_pb2.TASK_QUEUE_KIND_NORMAL)


def from_root_info(info: records_pb2.TaskQueueInfo) -> QueuePartitions:
    partitions = queue_config.partitions(info.config)
    return QueuePartitions(
        info.config,
        queue_config.write_partitions(info.config),
        max(partitions, info.read_partitions),
    )


_DEFAULT = from_root_info(records_pb2.TaskQueueInfo())
# A sticky queue belongs to one worker: one partition, nothing to forward.
_SINGLE = QueuePartitions(task_queue_pb2.TaskQueueConfig(), 1, 1)


def attempt_partition(partitions: int, run_id: str, scheduled_event_id: int, attempt: int) -> int:
    """The partition an attempt's task is added to: spread evenly, and the same on every
    retry of the add, so a redelivered task meets the partition (and host) that remembers
    handing it out by direct dispatch."""
    if partitions <= 1:
        return 0
    token = f"{run_id}/{scheduled_event_id}/{attempt}".encode()
    return zlib.crc32(token) % partitions


@dataclass(slots=True)
class _Entry:
    value: QueuePartitions
    read_at: float
    refreshing: bool = False


class TaskQueueConfigs:
    """Shared by the callers of one process (history's shards, the frontend's handler)."""

    def __init__(
        self,
        tasks: TaskStore,
        *,
        ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tasks = tasks
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[tuple[str, str, int], _Entry] = {}
        self._loading: dict[tuple[str, str, int], asyncio.Future[QueuePartitions]] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def get(self, namespace_id: str, task_queue: common_pb2.TaskQueue) -> QueuePartitions:
        if not _normal(task_queue.kind):
            return _SINGLE
        ident = (namespace_id, task_queue.name, common_pb2.TASK_QUEUE_KIND_NORMAL)
        entry = self._entries.get(ident)
        if entry is not None:
            if not entry.refreshing and self._clock() - entry.read_at >= self._ttl_s:
                entry.refreshing = True
                task = asyncio.create_task(self._refresh(ident, entry))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return entry.value
        loading = self._loading.get(ident)
        if loading is None:
            loading = asyncio.ensure_future(self._first_read(ident))
            self._loading[ident] = loading
        return await asyncio.shield(loading)

    def cached(
        self, namespace_id: str, task_queue: common_pb2.TaskQueue
    ) -> task_queue_pb2.TaskQueueConfig | None:
        """The queue's config as last read here, without waiting; None if never read."""
        if not _normal(task_queue.kind):
            return None
        entry = self._entries.get(
            (namespace_id, task_queue.name, common_pb2.TASK_QUEUE_KIND_NORMAL)
        )
        return None if entry is None else entry.value.config

    async def add_partition(
        self,
        namespace_id: str,
        task_queue: common_pb2.TaskQueue,
        *,
        run_id: str,
        scheduled_event_id: int,
        attempt: int,
    ) -> int:
        """The partition to add this attempt's task to."""
        queue = await self.get(namespace_id, task_queue)
        return attempt_partition(queue.partitions, run_id, scheduled_event_id, attempt)

    async def poll_partition(self, namespace_id: str, task_queue: common_pb2.TaskQueue) -> int:
        """A partition to poll, at random among those that may hold tasks."""
        queue = await self.get(namespace_id, task_queue)
        return random.randrange(queue.read_partitions)

    async def _read(self, ident: tuple[str, str, int]) -> QueuePartitions:
        namespace_id, name, kind = ident
        try:
            row = await self._tasks.get_task_queue(TaskQueueKey(namespace_id, name, kind, 0))
        except store_errors.NotFound:
            return _DEFAULT
        info = records_pb2.TaskQueueInfo()
        info.ParseFromString(row.data)
        return from_root_info(info)

    async def _first_read(self, ident: tuple[str, str, int]) -> QueuePartitions:
        try:
            value = await self._read(ident)
        except store_errors.PersistenceError as e:
            raise Unavailable(f"cannot read the task queue's config: {e}") from e
        finally:
            self._loading.pop(ident, None)
        self._store(ident, value)
        return value

    async def _refresh(self, ident: tuple[str, str, int], entry: _Entry) -> None:
        try:
            value = await self._read(ident)
        except store_errors.PersistenceError as e:
            # Keep answering from what was read last; the next caller tries again.
            log.info("task queue config not refreshed", queue=ident[1], error=str(e))
            entry.refreshing = False
            return
        self._store(ident, value)

    def _store(self, ident: tuple[str, str, int], value: QueuePartitions) -> None:
        self._entries.pop(ident, None)
        self._entries[ident] = _Entry(value, self._clock())
        while len(self._entries) > _MAX_QUEUES:
            del self._entries[next(iter(self._entries))]
