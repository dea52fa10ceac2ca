"""Fault injection: a decorator over the store interfaces, configured in `persistence.faults`.

Tests use it to make a fault happen at an exact point (a write that lands but whose reply is
lost) instead of killing a process at a moment they cannot choose. With nothing configured
the stores are not wrapped, so it costs nothing on the hot path.
"""

from __future__ import annotations

from tideflow_server.config import FaultsConfig
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.persistence import errors as store
from tideflow_server.persistence.interfaces import (
    ClusterStore,
    EventStore,
    ExecutionStore,
    HistoryStore,
    MetadataStore,
    Persistence,
    ShardStore,
    TaskStore,
    VisibilityStore,
)
from tideflow_server.persistence.records import (
    CreateExecution,
    CurrentRunRow,
    ExecutionKey,
    ExecutionRow,
    ShardRow,
    TimerTaskRow,
    TransferTaskRow,
    UpdateExecution,
)


def inject(persistence: Persistence, faults: FaultsConfig) -> Persistence:
    """`persistence` with the configured faults, or itself when none is configured."""
    if not (faults.lose_create_reply_run_ids or faults.hold_retry_commit_run_ids):
        return persistence
    return _FaultyPersistence(persistence, faults)


def _schedules_retry(request: UpdateExecution) -> bool:
    return any(
        records_pb2.TimerTask.FromString(t.data).HasField("block_retry")
        for t in request.timer_tasks
    )


class _Held:
    """Writes reported as failed but still in flight, by shard: each lands when the next
    fence or write reaches its shard."""

    def __init__(self, inner: ExecutionStore) -> None:
        self._inner = inner
        self._writes: dict[int, list[UpdateExecution]] = {}

    def hold(self, request: UpdateExecution) -> None:
        self._writes.setdefault(request.shard_id, []).append(request)

    async def land(self, shard_id: int) -> None:
        for request in self._writes.pop(shard_id, []):
            await self._inner.update_execution(request)


class _FaultyShards:
    def __init__(self, inner: ShardStore, held: _Held) -> None:
        self._inner = inner
        self._held = held

    async def create_shard(self, row: ShardRow) -> None:
        await self._inner.create_shard(row)

    async def get_shard(self, shard_id: int) -> ShardRow:
        return await self._inner.get_shard(shard_id)

    async def update_shard(self, row: ShardRow, *, previous_range_id: int) -> None:
        await self._held.land(row.shard_id)
        await self._inner.update_shard(row, previous_range_id=previous_range_id)

    async def fence(self, shard_id: int, range_id: int) -> None:
        await self._held.land(shard_id)
        await self._inner.fence(shard_id, range_id)


class _FaultyExecutions:
    def __init__(self, inner: ExecutionStore, faults: FaultsConfig, held: _Held) -> None:
        self._inner = inner
        self._lose_create_reply = faults.lose_create_reply_run_ids
        self._hold_retry_commit = faults.hold_retry_commit_run_ids
        self._held = held
        self._runs_held: set[str] = set()

    async def create_execution(self, request: CreateExecution) -> None:
        await self._held.land(request.shard_id)
        await self._inner.create_execution(request)
        if request.current.run_id.startswith(self._lose_create_reply):
            # The write landed; the caller hears what a dropped connection would tell it.
            raise store.Unavailable(
                f"injected fault: the reply of run {request.current.run_id!r}'s create is lost"
            )

    async def update_execution(self, request: UpdateExecution) -> None:
        await self._held.land(request.shard_id)
        run_id = request.execution.run_id
        if (
            self._hold_retry_commit
            and run_id.startswith(self._hold_retry_commit)
            and run_id not in self._runs_held
            and _schedules_retry(request)
        ):
            self._runs_held.add(run_id)
            self._held.hold(request)
            raise store.Unavailable(f"injected fault: run {run_id!r}'s retry commit is held")
        await self._inner.update_execution(request)

    async def get_execution(self, key: ExecutionKey) -> ExecutionRow:
        return await self._inner.get_execution(key)

    async def get_current_run(self, shard_id: int, namespace_id: str, run_id: str) -> CurrentRunRow:
        return await self._inner.get_current_run(shard_id, namespace_id, run_id)

    async def delete_execution(self, key: ExecutionKey) -> None:
        await self._inner.delete_execution(key)

    async def get_transfer_tasks(
        self, shard_id: int, *, min_task_id: int, max_task_id: int, limit: int
    ) -> list[TransferTaskRow]:
        return await self._inner.get_transfer_tasks(
            shard_id, min_task_id=min_task_id, max_task_id=max_task_id, limit=limit
        )

    async def complete_transfer_task(self, shard_id: int, task_id: int) -> None:
        await self._inner.complete_transfer_task(shard_id, task_id)

    async def range_complete_transfer_tasks(self, shard_id: int, *, max_task_id: int) -> None:
        await self._inner.range_complete_transfer_tasks(shard_id, max_task_id=max_task_id)

    async def get_timer_tasks(
        self,
        shard_id: int,
        *,
        after: tuple[int, int],
        fire_before_ms: int,
        limit: int,
    ) -> list[TimerTaskRow]:
        return await self._inner.get_timer_tasks(
            shard_id, after=after, fire_before_ms=fire_before_ms, limit=limit
        )

    async def complete_timer_task(self, shard_id: int, *, fire_time_ms: int, task_id: int) -> None:
        await self._inner.complete_timer_task(shard_id, fire_time_ms=fire_time_ms, task_id=task_id)

    async def range_complete_timer_tasks(self, shard_id: int, *, fire_before_ms: int) -> None:
        await self._inner.range_complete_timer_tasks(shard_id, fire_before_ms=fire_before_ms)


class _FaultyPersistence:
    """Every store of `inner`, those with configured faults wrapped."""

    def __init__(self, inner: Persistence, faults: FaultsConfig) -> None:
        self._inner = inner
        held = _Held(inner.executions)
        self._shards = _FaultyShards(inner.shards, held)
        self._executions = _FaultyExecutions(inner.executions, faults, held)

    @property
    def backend(self) -> str:
        return self._inner.backend

    @property
    def shards(self) -> ShardStore:
        return self._shards

    @property
    def executions(self) -> ExecutionStore:
        return self._executions

    @property
    def history(self) -> HistoryStore:
        return self._inner.history

    @property
    def tasks(self) -> TaskStore:
        return self._inner.tasks

    @property
    def metadata(self) -> MetadataStore:
        return self._inner.metadata

    @property
    def visibility(self) -> VisibilityStore:
        return self._inner.visibility

    @property
    def cluster(self) -> ClusterStore:
        return self._inner.cluster

    @property
    def events(self) -> EventStore:
        return self._inner.events

    async def close(self) -> None:
        await self._inner.close()
