"""The thin layer between the services and the stores.

It turns protobuf records into rows and back, derives the indexed columns from the records so
the two cannot disagree, allocates outbox task ids from the shard's fenced range, and enforces
size limits before anything is written. It holds no state of its own beyond shard leases.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message

from tideflow.api.v1 import common_pb2, flow_pb2, history_pb2, namespace_pb2
from tideflow_server.config import LIMITS_SECTION, LimitsConfig
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.persistence.errors import AlreadyExists, NotFound, SizeLimitExceeded
from tideflow_server.persistence.interfaces import Persistence
from tideflow_server.persistence.records import (
    BacklogTaskRow,
    CreateExecution,
    CreateMode,
    CurrentRunRow,
    ExecutionKey,
    ExecutionRow,
    FlowCheck,
    FlowRow,
    HistoryBatch,
    NamespaceRow,
    Page,
    RunState,
    ShardRow,
    TaskQueueKey,
    TaskQueueRow,
    TimerTaskRow,
    TransferTaskRow,
    UpdateExecution,
)
from tideflow_server.persistence.salvage import salvage

TASK_ID_BITS = 20
"""Outbox task ids are `range_id << TASK_ID_BITS | seq`: a new owner's range is higher, so its
ids are above every id the previous owner could have allocated."""

_RUN_STATES = {
    records_pb2.RUN_STATE_CREATED: RunState.CREATED,
    records_pb2.RUN_STATE_RUNNING: RunState.RUNNING,
    records_pb2.RUN_STATE_COMPLETED: RunState.CLOSED,
}


class ShardLease:
    """A history host's hold on one shard: the range_id its writes are fenced on, and the
    sequence it allocates outbox task ids from."""

    def __init__(self, shard_id: int, range_id: int, owner: str, info: records_pb2.ShardInfo):
        self.shard_id = shard_id
        self.range_id = range_id
        self.owner = owner
        self.info = info
        self._next_seq = 1
        self._renewing = asyncio.Lock()

    def _fits(self, count: int, bits: int) -> bool:
        return self._next_seq + count <= 1 << bits

    def _take(self, count: int, bits: int) -> list[int] | None:
        if not self._fits(count, bits):
            return None
        first = (self.range_id << bits) | self._next_seq
        self._next_seq += count
        return list(range(first, first + count))

    def _renewed(self, range_id: int, info: records_pb2.ShardInfo) -> None:
        self.range_id = range_id
        self.info = info
        self._next_seq = 1


@dataclass(frozen=True, slots=True)
class LoadedExecution:
    state: records_pb2.MutableState
    db_version: int
    unreadable: str = ""
    """Why the stored state did not parse, when it did not: `state` then holds only what
    could be salvaged (persistence/salvage.py), enough to close the run and nothing more."""

    @property
    def next_event_id(self) -> int:
        return self.state.execution_info.next_event_id


@dataclass(frozen=True, slots=True)
class HistoryPage:
    events: list[history_pb2.HistoryEvent]
    next_page_token: bytes | None


NAMESPACE_LIMITS = "namespace config.limits"
"""Where a namespace's own limits are set (`NamespaceConfig.limits`), for errors that name them."""
_NO_LIMITS = namespace_pb2.NamespaceLimits()


def _key(shard_id: int, info: records_pb2.RunExecutionInfo) -> ExecutionKey:
    return ExecutionKey(shard_id, info.namespace_id, info.run_id, info.execution_id)


class PersistenceManager:
    def __init__(
        self,
        persistence: Persistence,
        limits: LimitsConfig | None = None,
        *,
        task_id_bits: int = TASK_ID_BITS,
    ) -> None:
        self.persistence = persistence
        self.limits = limits or LimitsConfig()
        self._task_id_bits = task_id_bits

    # -- size limits ---------------------------------------------------------------------

    def _limited(self, what: str, data: bytes, setting: str) -> bytes:
        limit: int = getattr(self.limits, setting)
        if len(data) > limit:
            raise SizeLimitExceeded(
                what=what, size=len(data), limit=limit, setting=f"{LIMITS_SECTION}.{setting}"
            )
        return data

    def _blob(self, what: str, message: Message) -> bytes:
        return self._limited(what, message.SerializeToString(), "max_blob_bytes")

    def _state_blob(
        self, state: records_pb2.MutableState, own: namespace_pb2.NamespaceLimits | None
    ) -> bytes:
        """The state, serialized, once its run's history is within the server's limits and
        the tighter ones of its namespace (`own`, 0 = none), each error naming the binding
        one."""
        data = self._limited("mutable state", state.SerializeToString(), "max_mutable_state_bytes")
        own = own or _NO_LIMITS
        info = state.execution_info
        events = info.next_event_id - 1
        limit, setting = self.limits.max_history_events, f"{LIMITS_SECTION}.max_history_events"
        if 0 < own.max_history_events < limit:
            limit, setting = own.max_history_events, f"{NAMESPACE_LIMITS}.max_history_events"
        if events > limit:
            raise SizeLimitExceeded(
                what="history", size=events, limit=limit, setting=setting, unit=" events"
            )
        # History bytes have no server-wide limit, only a namespace's own.
        if 0 < own.max_history_bytes < info.history_size_bytes:
            raise SizeLimitExceeded(
                what="history",
                size=info.history_size_bytes,
                limit=own.max_history_bytes,
                setting=f"{NAMESPACE_LIMITS}.max_history_bytes",
            )
        return data

    # -- shards --------------------------------------------------------------------------

    async def acquire_shard(self, shard_id: int, *, owner: str) -> ShardLease:
        """Take the shard: bump its range_id conditionally (ShardOwnershipLost if another host
        bumped it between our read and write)."""
        shards = self.persistence.shards
        try:
            row = await shards.get_shard(shard_id)
        except NotFound:
            initial = records_pb2.ShardInfo(shard_id=shard_id, range_id=0)
            row = ShardRow(shard_id=shard_id, range_id=0, data=initial.SerializeToString())
            try:
                await shards.create_shard(row)
            except AlreadyExists:
                row = await shards.get_shard(shard_id)  # created concurrently
        info = records_pb2.ShardInfo.FromString(row.data)
        info.range_id = row.range_id + 1
        info.owner = owner
        info.update_time.GetCurrentTime()
        await shards.update_shard(
            ShardRow(shard_id, info.range_id, info.SerializeToString()),
            previous_range_id=row.range_id,
        )
        return ShardLease(shard_id, info.range_id, owner, info)

    async def update_shard_info(self, lease: ShardLease, info: records_pb2.ShardInfo) -> None:
        """Persist ack levels (fenced: ShardOwnershipLost if the shard moved on)."""
        info.shard_id = lease.shard_id
        info.range_id = lease.range_id
        info.owner = lease.owner
        info.update_time.GetCurrentTime()
        await self.persistence.shards.update_shard(
            ShardRow(lease.shard_id, lease.range_id, info.SerializeToString()),
            previous_range_id=lease.range_id,
        )
        lease.info = info

    async def fence_shard(self, lease: ShardLease) -> None:
        """Make the outcome of every earlier write to the shard whose outcome was unknown
        definite (ShardStore.fence); ShardOwnershipLost if the shard moved on."""
        await self.persistence.shards.fence(lease.shard_id, lease.range_id)

    async def allocate_task_ids(self, lease: ShardLease, count: int) -> list[int]:
        """`count` increasing task ids, renewing the lease's range when it runs out."""
        if not 0 < count < 1 << self._task_id_bits:
            raise ValueError(f"cannot allocate {count} task ids at once")
        bits = self._task_id_bits
        while (ids := lease._take(count, bits)) is None:
            async with lease._renewing:
                if lease._fits(count, bits):
                    continue  # another caller renewed the range while we waited
                info = records_pb2.ShardInfo()
                info.CopyFrom(lease.info)
                info.range_id = lease.range_id + 1
                info.update_time.GetCurrentTime()
                await self.persistence.shards.update_shard(
                    ShardRow(lease.shard_id, info.range_id, info.SerializeToString()),
                    previous_range_id=lease.range_id,
                )
                lease._renewed(info.range_id, info)
        return ids

    # -- executions ----------------------------------------------------------------------

    async def _batch(
        self,
        lease: ShardLease,
        state: records_pb2.MutableState,
        events: Sequence[history_pb2.HistoryEvent],
    ) -> list[HistoryBatch]:
        if not events:
            return []
        history = history_pb2.History(events=events)
        first = history.events[0].event_id
        for offset, event in enumerate(history.events):
            if event.event_id != first + offset:
                raise ValueError(f"event ids must be consecutive from {first}: {event.event_id}")
        if first + len(history.events) != state.execution_info.next_event_id:
            raise ValueError("state.execution_info.next_event_id must follow the last event")
        (txn_id,) = await self.allocate_task_ids(lease, 1)
        data = self._limited(
            "the step's history batch", history.SerializeToString(), "max_history_batch_bytes"
        )
        # Counted here, where the events are serialized anyway; the state is written after.
        state.execution_info.history_size_bytes += len(data)
        return [HistoryBatch(first, len(history.events), txn_id, data)]

    def _rows(
        self,
        transfer_tasks: Sequence[records_pb2.TransferTask],
        timer_tasks: Sequence[records_pb2.TimerTask],
    ) -> tuple[list[TransferTaskRow], list[TimerTaskRow]]:
        transfer = [
            TransferTaskRow(t.task_id, self._blob("transfer task", t)) for t in transfer_tasks
        ]
        timers = [
            TimerTaskRow(t.fire_time.ToMilliseconds(), t.task_id, self._blob("timer task", t))
            for t in timer_tasks
        ]
        if any(t.task_id <= 0 for t in transfer) or any(t.task_id <= 0 for t in timers):
            raise ValueError("outbox tasks need a task_id from allocate_task_ids")
        return transfer, timers

    @staticmethod
    def _execution_row(
        state: records_pb2.MutableState, db_version: int, data: bytes
    ) -> ExecutionRow:
        info = state.execution_info
        return ExecutionRow(
            namespace_id=info.namespace_id,
            run_id=info.run_id,
            execution_id=info.execution_id,
            next_event_id=info.next_event_id,
            db_version=db_version,
            state=_RUN_STATES[info.state],
            data=data,
        )

    @staticmethod
    def _current_row(state: records_pb2.MutableState) -> CurrentRunRow:
        info = state.execution_info
        return CurrentRunRow(
            namespace_id=info.namespace_id,
            run_id=info.run_id,
            execution_id=info.execution_id,
            state=_RUN_STATES[info.state],
            status=info.status,
            start_request_id=info.start_request_id,
        )

    async def create_execution(
        self,
        lease: ShardLease,
        *,
        state: records_pb2.MutableState,
        events: Sequence[history_pb2.HistoryEvent],
        transfer_tasks: Sequence[records_pb2.TransferTask] = (),
        timer_tasks: Sequence[records_pb2.TimerTask] = (),
        mode: CreateMode = CreateMode.BRAND_NEW,
        previous_execution_id: str | None = None,
        flow_check: FlowCheck | None = None,
        namespace_limits: namespace_pb2.NamespaceLimits | None = None,
    ) -> LoadedExecution:
        """Commit a new execution with its first events; db_version starts at 1. With
        `flow_check`, only while its version is the flow's latest (FlowChanged otherwise).
        `namespace_limits` (the run's namespace's own) may tighten the history limits."""
        transfer, timers = self._rows(transfer_tasks, timer_tasks)
        batches = await self._batch(lease, state, events)
        data = self._state_blob(state, namespace_limits)
        await self.persistence.executions.create_execution(
            CreateExecution(
                shard_id=lease.shard_id,
                range_id=lease.range_id,
                mode=mode,
                previous_execution_id=previous_execution_id,
                execution=self._execution_row(state, 1, data),
                current=self._current_row(state),
                events=batches,
                transfer_tasks=transfer,
                timer_tasks=timers,
                flow_check=flow_check,
            )
        )
        return LoadedExecution(state, 1)

    async def update_execution(
        self,
        lease: ShardLease,
        *,
        state: records_pb2.MutableState,
        expected_db_version: int,
        events: Sequence[history_pb2.HistoryEvent] = (),
        transfer_tasks: Sequence[records_pb2.TransferTask] = (),
        timer_tasks: Sequence[records_pb2.TimerTask] = (),
        namespace_limits: namespace_pb2.NamespaceLimits | None = None,
    ) -> LoadedExecution:
        """Commit one decision. Closing the run (state COMPLETED) also closes the run_id's
        current-run pointer, so a later start may reuse the run_id. `namespace_limits` as for
        create_execution."""
        transfer, timers = self._rows(transfer_tasks, timer_tasks)
        batches = await self._batch(lease, state, events)
        data = self._state_blob(state, namespace_limits)
        closed = state.execution_info.state == records_pb2.RUN_STATE_COMPLETED
        await self.persistence.executions.update_execution(
            UpdateExecution(
                shard_id=lease.shard_id,
                range_id=lease.range_id,
                execution=self._execution_row(state, expected_db_version + 1, data),
                expected_db_version=expected_db_version,
                current=self._current_row(state) if closed else None,
                events=batches,
                transfer_tasks=transfer,
                timer_tasks=timers,
            )
        )
        return LoadedExecution(state, expected_db_version + 1)

    async def get_execution(
        self, shard_id: int, namespace_id: str, run_id: str, execution_id: str
    ) -> LoadedExecution:
        row = await self.persistence.executions.get_execution(
            ExecutionKey(shard_id, namespace_id, run_id, execution_id)
        )
        try:
            return LoadedExecution(records_pb2.MutableState.FromString(row.data), row.db_version)
        except DecodeError as e:
            state, dropped = salvage(records_pb2.MutableState, row.data)
            why = f"{e}; unreadable: {', '.join(dropped) or 'nothing'}"
            return LoadedExecution(state, row.db_version, unreadable=why)

    async def read_history(
        self,
        shard_id: int,
        info: records_pb2.RunExecutionInfo,
        *,
        min_event_id: int = 1,
        page_size: int = 100,
        page_token: bytes | None = None,
    ) -> HistoryPage:
        """Committed events of the execution `info` describes (bounded by its next_event_id),
        `page_size` batches a page."""
        page: Page[HistoryBatch] = await self.persistence.history.read_history(
            _key(shard_id, info),
            min_event_id=min_event_id,
            next_event_id=info.next_event_id,
            page_size=page_size,
            page_token=page_token,
        )
        events: list[history_pb2.HistoryEvent] = []
        for batch in page.items:
            events.extend(history_pb2.History.FromString(batch.data).events)
        return HistoryPage(events, page.next_page_token)

    # -- outbox --------------------------------------------------------------------------

    async def get_transfer_tasks(
        self, shard_id: int, *, min_task_id: int, max_task_id: int, limit: int
    ) -> list[records_pb2.TransferTask]:
        rows = await self.persistence.executions.get_transfer_tasks(
            shard_id, min_task_id=min_task_id, max_task_id=max_task_id, limit=limit
        )
        return [records_pb2.TransferTask.FromString(r.data) for r in rows]

    async def get_timer_tasks(
        self, shard_id: int, *, after: tuple[int, int], fire_before_ms: int, limit: int
    ) -> list[records_pb2.TimerTask]:
        rows = await self.persistence.executions.get_timer_tasks(
            shard_id, after=after, fire_before_ms=fire_before_ms, limit=limit
        )
        return [records_pb2.TimerTask.FromString(r.data) for r in rows]

    # -- task queues ---------------------------------------------------------------------

    async def lease_task_queue(self, key: TaskQueueKey) -> tuple[int, records_pb2.TaskQueueInfo]:
        """Take a task queue partition for this matching host: create it, or bump its
        range_id conditionally (ConditionFailed if another host bumped it first)."""
        tasks = self.persistence.tasks
        try:
            row = await tasks.get_task_queue(key)
        except NotFound:
            info = records_pb2.TaskQueueInfo(
                namespace_id=key.namespace_id,
                name=key.name,
                kind=common_pb2.TaskQueueKind.ValueType(key.kind),
                partition=key.partition,
            )
            info.last_update_time.GetCurrentTime()
            await tasks.create_task_queue(TaskQueueRow(key, 1, info.SerializeToString()))
            return 1, info
        info = records_pb2.TaskQueueInfo.FromString(row.data)
        info.last_update_time.GetCurrentTime()
        await tasks.update_task_queue(
            TaskQueueRow(key, row.range_id + 1, info.SerializeToString()),
            previous_range_id=row.range_id,
        )
        return row.range_id + 1, info

    async def create_backlog_tasks(
        self,
        key: TaskQueueKey,
        *,
        range_id: int,
        tasks: Sequence[tuple[int, records_pb2.BacklogTask]],
    ) -> None:
        rows = [
            BacklogTaskRow(
                task_id,
                task.expiry_time.ToMilliseconds() if task.HasField("expiry_time") else None,
                self._blob("backlog task", task),
            )
            for task_id, task in tasks
        ]
        await self.persistence.tasks.create_backlog_tasks(key, range_id=range_id, tasks=rows)

    async def get_backlog_tasks(
        self, key: TaskQueueKey, *, after_task_id: int, max_task_id: int, limit: int
    ) -> list[tuple[int, records_pb2.BacklogTask]]:
        rows = await self.persistence.tasks.get_backlog_tasks(
            key, after_task_id=after_task_id, max_task_id=max_task_id, limit=limit
        )
        return [(r.task_id, records_pb2.BacklogTask.FromString(r.data)) for r in rows]

    # -- namespaces and flows ------------------------------------------------------------

    async def create_namespace(self, record: records_pb2.NamespaceRecord) -> None:
        info = record.info
        await self.persistence.metadata.create_namespace(
            NamespaceRow(info.id, info.name, self._blob("namespace", record))
        )

    async def get_namespace(
        self, *, name: str | None = None, namespace_id: str | None = None
    ) -> records_pb2.NamespaceRecord:
        metadata = self.persistence.metadata
        if (name is None) == (namespace_id is None):
            raise ValueError("give exactly one of name and namespace_id")
        row = await (
            metadata.get_namespace_by_name(name)
            if name is not None
            else metadata.get_namespace_by_id(namespace_id or "")
        )
        return records_pb2.NamespaceRecord.FromString(row.data)

    async def update_namespace(self, record: records_pb2.NamespaceRecord) -> None:
        info = record.info
        await self.persistence.metadata.update_namespace(
            NamespaceRow(info.id, info.name, self._blob("namespace", record))
        )

    async def create_flow(self, namespace_id: str, flow: flow_pb2.FlowDefinition) -> None:
        await self.persistence.metadata.create_flow(
            FlowRow(
                namespace_id=namespace_id,
                name=flow.name,
                version=flow.version,
                create_time_ms=flow.create_time.ToMilliseconds(),
                data=self._blob("flow definition", flow),
            )
        )

    async def get_flow(
        self, namespace_id: str, name: str, version: int = 0
    ) -> flow_pb2.FlowDefinition:
        """`version` 0 is the latest."""
        metadata = self.persistence.metadata
        row = await (
            metadata.get_latest_flow(namespace_id, name)
            if version == 0
            else metadata.get_flow(namespace_id, name, version)
        )
        return flow_pb2.FlowDefinition.FromString(row.data)
