"""One task queue partition, held by this matching host while its lease (range_id) holds.

The life of a block task here, in order:
1. An add hands the task straight to a waiting poll (sync match, nothing written) when the
   backlog has been read to its end, so a new task never overtakes a persisted one; with no
   poll waiting, it waits in memory a moment (`sync_match_wait`) for one. Otherwise the
   writer persists it, grouping concurrent adds into one write fenced on the range_id; the
   add returns once the row is durable. A direct task (already started by history) goes to
   the poll as it is; persisted, it is a pointer like any other.
2. The reader pulls the backlog after the read level, in task_id order, into a buffer of up
   to `fair_window` tasks.
3. A poll takes the buffered task that comes first by priority level, then weighted fairness
   over fairness keys, then task id or run start (matching/order.py), or waits. With
   concurrency limits (concurrency.py), only a task a slot is free for, reserving it.
4. Once history has recorded the start (or started it itself, for a direct task), or said
   the task is stale, the task is acked. The ack
   level is the id at and below which every read task is acked; it is persisted now and then,
   and the rows at or below it are deleted. A crash re-delivers what lies above the persisted
   ack level, and history turns the duplicates away (RecordBlockStarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from google.protobuf import field_mask_pb2, timestamp_pb2

from tideflow.api.v1 import flow_service_pb2, task_queue_pb2
from tideflow_server import queue_config
from tideflow_server.internal.v1 import matching_service_pb2, records_pb2
from tideflow_server.matching import concurrency
from tideflow_server.matching._config import MatchingConfig
from tideflow_server.matching.order import DispatchOrder, placement
from tideflow_server.matching.ratelimit import DispatchLimits
from tideflow_server.matching.stats import PartitionStats
from tideflow_server.persistence import errors as store_errors
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.persistence.records import TaskQueueKey, TaskQueueRow
from tideflow_server.rpc.errors import Internal, ResourceExhausted, ServiceError, Unavailable

if TYPE_CHECKING:
    from tideflow_server.matching.forwarding import Forwarder

log = structlog.get_logger(__name__)

_LEASE_ATTEMPTS = 3


@dataclass(eq=False, slots=True)
class BlockTask:
    """A task on its way to a poll: read from the backlog (`task_id` set) or sync-matched
    (`sync_outcome` set; the add waits on it and persists the task if it comes back False).
    `direct` is the worker's task when history started the attempt already (direct
    dispatch); only a sync match carries it."""

    info: records_pb2.BacklogTask
    task_id: int | None = None
    sync_outcome: asyncio.Future[bool] | None = None
    direct: flow_service_pb2.PollBlockTaskResponse | None = None
    held: bool = False
    """Waiting in memory for a poll to come (see `add`)."""
    offered: bool = False
    """A leaf's task handed to a poll here, at its root: the leaf counts it, not the root."""
    slot_reserved: bool = False
    """A concurrency slot is reserved for it while its start is asked for."""
    not_before: float = 0.0
    """History could not start it (its host unreachable, or busy): not handed out again
    before this (time.monotonic, the event loop's clock), so the tasks behind it go
    meanwhile."""
    setbacks: int = 0
    """How many times in a row history could not start it (the rest doubles each time)."""


class Poll:
    """One outstanding PollBlockTask call."""

    __slots__ = (
        "_cancelled",
        "identity",
        "poller_id",
        "rate_per_second",
        "sticky_task_queue",
        "waiter",
        "warm_keys",
    )

    def __init__(
        self,
        poller_id: str,
        identity: str,
        rate_per_second: float,
        sticky_task_queue: str = "",
        warm_keys: tuple[str, ...] = (),
    ) -> None:
        self.poller_id = poller_id
        self.identity = identity
        self.rate_per_second = rate_per_second
        self.sticky_task_queue = sticky_task_queue
        """The worker's own sticky queue, recorded by history when this poll starts a task."""
        self.warm_keys = warm_keys
        """The affinity keys the worker advertised warm (shown by describe)."""
        self.waiter: asyncio.Future[BlockTask | None] | None = None
        self._cancelled = asyncio.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def cancelled_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._cancelled.wait()
        return self.cancelled


class _AckLevels:
    """Read and ack levels of the backlog. Ids are tracked from the moment they are read until
    every lower one is acked too."""

    def __init__(self, level: int) -> None:
        self.read_level = level
        self._outstanding: deque[int] = deque()
        self._acked: set[int] = set()

    @property
    def ack_level(self) -> int:
        return self._outstanding[0] - 1 if self._outstanding else self.read_level

    def read(self, task_id: int) -> None:
        self._outstanding.append(task_id)  # ids come in ascending order, above read_level

    def read_to(self, level: int) -> None:
        self.read_level = max(self.read_level, level)

    def ack(self, task_id: int) -> None:
        self._acked.add(task_id)
        while self._outstanding and self._outstanding[0] in self._acked:
            self._acked.discard(self._outstanding.popleft())


@dataclass(slots=True)
class _PollerSeen:
    last_access: float
    rate_per_second: float
    sticky_task_queue: str = ""
    warm_keys: tuple[str, ...] = ()


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _expired(info: records_pb2.BacklogTask, now_ms: int) -> bool:
    return info.HasField("expiry_time") and info.expiry_time.ToMilliseconds() <= now_ms


class TaskQueuePartition:
    """Loaded by `MatchingEngine` on first use; `start` leases it, `stop` releases it."""

    def __init__(
        self,
        key: TaskQueueKey,
        *,
        manager: PersistenceManager,
        host_id: str,
        config: MatchingConfig,
        clock: Callable[[], float],
        on_closed: Callable[[TaskQueuePartition], None],
        forwarder: Forwarder | None = None,
    ) -> None:
        """`forwarder`: for a leaf partition, how it reaches its root (forwarding.py)."""
        self.key = key
        self.host_id = host_id
        self._manager = manager
        self._store = manager.persistence.tasks
        self._config = config
        self._clock = clock
        self._on_closed = on_closed

        self._range_id = 0
        self._info = records_pb2.TaskQueueInfo()
        self._next_seq = 1
        self._row_lock = asyncio.Lock()  # range renewal and ack persistence both rewrite the row

        self._levels = _AckLevels(0)
        self._max_read_level = 0  # highest id durably written; the reader stops there
        self._persisted_ack_level = 0
        self._deleted_through = 0
        self._acked_not_deleted = 0
        self._buffer: DispatchOrder[BlockTask] = DispatchOrder()
        self._rest_until = 0.0
        """The latest `not_before` of a buffered task: before it, pops skip resting tasks."""
        self._pending: deque[tuple[records_pb2.BacklogTask, asyncio.Future[None]]] = deque()
        self._held: deque[BlockTask] = deque()  # adds waiting briefly for a poll, oldest first
        self._held_changed = asyncio.Event()
        self._writing = 0

        self._polls: dict[str, Poll] = {}
        self._waiting: dict[str, Poll] = {}  # insertion order = arrival order
        self._pollers: dict[str, _PollerSeen] = {}
        self._polls_changed = asyncio.Event()

        self._read_wanted = asyncio.Event()
        self._write_wanted = asyncio.Event()
        self._closed = asyncio.Event()
        self._lost = False
        self._closing: asyncio.Future[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._maintainer: asyncio.Task[None] | None = None
        self._forwarder = forwarder
        self._pusher: asyncio.Task[None] | None = None
        self._unpolled = asyncio.Event()  # buffered tasks that no poll here waits for
        self._last_activity = time.monotonic()

        # The queue's config (UpdateTaskQueueConfig): limits, order, routing. Every partition
        # enforces the newest version it has seen.
        self.queue_config = task_queue_pb2.TaskQueueConfig()
        self.config_version = 0
        self._config_refresher: asyncio.Task[None] | None = None
        self._config_changed = asyncio.Event()
        # Dispatch rate limits; None while the queue and its pollers set none, so an
        # unlimited queue does no extra work per task.
        self._limits: DispatchLimits | None = None
        self._wake: asyncio.TimerHandle | None = None  # dispatch when the next token is there
        # The queue's concurrency slots: the root partition's only (concurrency.py).
        self.slots: concurrency.ConcurrencySlots | None = None
        self._stats = PartitionStats(time.monotonic)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def range_id(self) -> int:
        return self._range_id

    async def start(self) -> None:
        """Lease the partition and read the head of its backlog before serving, so the first
        add knows whether a sync match would overtake persisted tasks."""
        self._range_id, self._info = await self._lease()
        if self.key.partition == concurrency.ROOT_PARTITION:
            self.slots = concurrency.ConcurrencySlots(
                self._info.slots, write=self._write_slots, clock=self._clock
            )
            self.apply_config(self._info.config, self._info.config_version)
        level = self._info.ack_level
        self._levels = _AckLevels(level)
        self._persisted_ack_level = self._deleted_through = level
        # Every id a previous owner allocated lies below our range.
        self._max_read_level = self._range_id << self._config.task_id_bits
        try:
            # Rows a previous owner acked but did not get to delete.
            await self._store.complete_backlog_tasks(self.key, max_task_id=level)
            if self.key.partition != 0:
                await self._load_config()
            await self._read_backlog()
        except store_errors.PersistenceError as e:
            raise Unavailable(f"cannot load task queue partition: {e}") from e
        self._reader = asyncio.create_task(self._read_loop())
        self._writer = asyncio.create_task(self._write_loop())
        self._maintainer = asyncio.create_task(self._maintain_loop())
        if self.key.partition != 0:
            self._config_refresher = asyncio.create_task(self._config_loop())
        if self._forwarder is not None:
            self._pusher = asyncio.create_task(self._forwarder.push_backlog(self))
        log.info("task queue partition loaded", key=self.key, range_id=self._range_id)

    async def wait_closed(self) -> None:
        """Until the partition is unloaded (stopped, idle, or lost to another host)."""
        await self._closed.wait()
        if self._closing is not None:
            await asyncio.shield(self._closing)

    async def _lease(self) -> tuple[int, records_pb2.TaskQueueInfo]:
        for _ in range(_LEASE_ATTEMPTS):
            try:
                return await self._manager.lease_task_queue(self.key)
            except (store_errors.ConditionFailed, store_errors.AlreadyExists):
                continue  # another host leased it at the same moment: take it over again
            except store_errors.PersistenceError as e:
                raise Unavailable(f"cannot lease task queue partition: {e}") from e
        raise Unavailable("task queue partition is being leased by other hosts")

    async def stop(self, *, lost: bool = False) -> None:
        """Stop serving: waiting polls return empty, pending adds are written (or failed when
        the partition was lost), and the ack level is persisted."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._stop(lost=lost))
        await asyncio.shield(self._closing)

    def _stop_soon(self, *, lost: bool = False) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._stop(lost=lost))

    async def _stop(self, *, lost: bool) -> None:
        self._lost = lost = self._lost or lost
        self._closed.set()
        for poll in list(self._polls.values()):
            poll.cancel()
        self._waiting.clear()
        while (held := self._pop_held()) is not None:
            self.finish(held, consumed=False)  # its add persists it, or fails as closed
        self._notify_polls()
        if lost:
            self._fail_pending(self._lost_error())
        # The loops see `closed` and return; none is cancelled, because a database call
        # cancelled midway can leave its connection unusable (an aiosqlite read keeps its
        # snapshot). The writer drains what is pending first.
        self._write_wanted.set()
        self._read_wanted.set()
        self._unpolled.set()
        me = asyncio.current_task()
        if self._wake is not None:
            self._wake.cancel()
        background = (
            self._reader,
            self._writer,
            self._maintainer,
            self._config_refresher,
            self._pusher,
        )
        await asyncio.gather(
            *(t for t in background if t is not None and t is not me), return_exceptions=True
        )
        self._fail_pending(Unavailable("task queue partition was unloaded"))
        if not lost:
            try:
                await self._persist_ack_level()
            except store_errors.PersistenceError as e:
                log.warning("ack level not persisted on unload", key=self.key, error=str(e))
        self._on_closed(self)
        log.info("task queue partition unloaded", key=self.key, lost=lost)

    def _lost_error(self) -> Unavailable:
        return Unavailable(
            "task queue partition is owned by another matching host now",
            reason="TASK_QUEUE_PARTITION_MOVED",
        )

    def _closed_error(self) -> Unavailable:
        return self._lost_error() if self._lost else Unavailable("task queue partition unloaded")

    async def _closed_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closed.wait()
        return self.closed

    async def closed_within(self, seconds: float) -> bool:
        """Wait up to `seconds`; True if the partition closed meanwhile."""
        return await self._closed_within(seconds)

    def _touch(self) -> None:
        self._last_activity = time.monotonic()

    def _idle(self) -> bool:
        return (
            not self._polls
            and not self._pending
            and not self._held
            and not self._writing
            and time.monotonic() - self._last_activity >= self._config.idle_unload_after
        )

    async def _maintain_loop(self) -> None:
        while not await self._closed_within(self._config.ack_persist_interval):
            try:
                await self._persist_ack_level()
            except store_errors.ConditionFailed:
                self._stop_soon(lost=True)
                return
            except store_errors.PersistenceError as e:
                log.warning("ack level not persisted", key=self.key, error=str(e))
            self._forget_old_pollers()
            if self._idle():
                self._stop_soon()
                return

    # -- config --------------------------------------------------------------------------

    def apply_config(self, config: task_queue_pb2.TaskQueueConfig, version: int) -> bool:
        """Enforce `config` from now on, unless a newer version is in force; False then."""
        if version <= self.config_version:
            return False
        self.queue_config, self.config_version = config, version
        self._buffer.configure(
            weights=config.fairness_weights, in_flight_first=config.in_flight_first
        )
        self._apply_limits()
        changed, self._config_changed = self._config_changed, asyncio.Event()
        changed.set()
        self._dispatch()  # a raised or lifted concurrency limit frees tasks for waiting polls
        return True

    async def wait_for_config(self, version: int) -> None:
        """Until config `version` or a newer one is in force (for tests and tools)."""
        while self.config_version < version:
            await self._config_changed.wait()

    async def update_config(
        self, update: task_queue_pb2.TaskQueueConfig, mask: field_mask_pb2.FieldMask
    ) -> tuple[records_pb2.TaskQueueInfo, int]:
        """Root partition only: merge `update` into the queue's config, persist it with the
        partition (fenced on the range_id, like the ack level) and enforce it. Returns the
        stored info and the partition count before the change (its partitions to tell)."""
        if self.closed:
            raise self._closed_error()
        async with self._row_lock:
            info = records_pb2.TaskQueueInfo()
            info.CopyFrom(self._info)
            info.config.CopyFrom(queue_config.merge(self._info.config, update, mask))
            info.config_version = self._info.config_version + 1
            previous = max(self._info.read_partitions, queue_config.partitions(self._info.config))
            info.read_partitions = max(previous, queue_config.partitions(info.config))
            info.last_update_time.CopyFrom(_timestamp(self._clock()))
            row = TaskQueueRow(self.key, self._range_id, info.SerializeToString())
            try:
                await self._store.update_task_queue(row, previous_range_id=self._range_id)
            except store_errors.ConditionFailed as e:
                self._stop_soon(lost=True)
                raise self._lost_error() from e
            except store_errors.PersistenceError as e:
                raise Unavailable(f"cannot persist the task queue config: {e}") from e
            self._info = info
        self.apply_config(info.config, info.config_version)
        return info, previous

    async def _load_config(self) -> None:
        """A leaf partition reads the queue's config from the root partition's row."""
        root = TaskQueueKey(self.key.namespace_id, self.key.name, self.key.kind, 0)
        try:
            row = await self._store.get_task_queue(root)
        except store_errors.NotFound:
            return  # never configured: the defaults
        info = records_pb2.TaskQueueInfo.FromString(row.data)
        self.apply_config(info.config, info.config_version)

    async def _config_loop(self) -> None:
        """The root pushes each change (ApplyTaskQueueConfig); reading it back now and then
        heals a lost push."""
        while not await self._closed_within(self._config.config_refresh):
            try:
                await self._load_config()
            except store_errors.PersistenceError as e:
                log.warning("task queue config not read", key=self.key, error=str(e))

    # -- rate limits ---------------------------------------------------------------------

    def _apply_limits(self) -> None:
        now = asyncio.get_running_loop().time()
        limits = self._limits or DispatchLimits()
        limits.configure(self.queue_config, now)
        self._limits = None if limits.empty else limits
        # A new rate counts from now: dispatch what the old one held back, wait anew.
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        self._dispatch()

    def _note_poller_rate(self, identity: str, declared_rate: float) -> None:
        if declared_rate <= 0 and self._limits is None:
            return
        now = asyncio.get_running_loop().time()
        limits = self._limits or DispatchLimits()
        if self._limits is None:
            limits.configure(self.queue_config, now)
        limits.poller(identity, declared_rate, now)
        self._limits = None if limits.empty else limits

    def _may_hand(self, poll: Poll) -> bool:
        return self._limits is None or self._limits.ready(
            poll.identity, asyncio.get_running_loop().time()
        )

    def _spend_token(self, poll: Poll) -> None:
        if self._limits is not None:
            self._limits.take(poll.identity, asyncio.get_running_loop().time())

    # A leaf's tasks offered to the root (forwarded adds, its pushed backlog) spend the leaf's
    # share of the queue's rate, not the root's: each partition dispatches its own share, so
    # the queue's rate holds whether a task leaves through a local poll or through the root.

    def _queue_token_wait(self) -> float:
        """Seconds until the queue's share has a token here; 0 when it has one (or none is
        limited)."""
        bucket = self._limits.queue if self._limits is not None else None
        if bucket is None:
            return 0.0
        now = asyncio.get_running_loop().time()
        return 0.0 if bucket.ready(now) else max(1e-4, bucket.next_token_at(now) - now)

    def spend_queue_token(self) -> None:
        bucket = self._limits.queue if self._limits is not None else None
        if bucket is not None:
            bucket.take(asyncio.get_running_loop().time())

    def _wake_at_next_token(self) -> None:
        """Polls wait for tokens while tasks wait for polls: dispatch again when the first
        waiting poll may take one (a timer, not a busy loop)."""
        if self._limits is None or self._wake is not None or self.closed:
            return
        if not self._waiting or not (self._buffer or self._held):
            return
        loop = asyncio.get_running_loop()
        at = self._limits.next_ready_at((p.identity for p in self._waiting.values()), loop.time())
        self._wake = loop.call_at(at, self._on_wake)

    def _on_wake(self) -> None:
        self._wake = None
        self._dispatch()

    # -- concurrency slots (concurrency.py) ----------------------------------------------

    def _eligible(self, task: BlockTask) -> bool:
        """A poll may take the task now: no limit, or a slot is free for it here."""
        config = self.queue_config
        if not concurrency.has_limits(config):
            return True
        return self.slots is not None and self.slots.eligible(config, task.info)

    def _reserve_slot(self, task: BlockTask) -> BlockTask:
        """The task goes to a poll: count its slot from now."""
        if self.slots is not None and concurrency.has_limits(self.queue_config):
            task.slot_reserved = self.slots.reserve(self.queue_config, task.info)
        return task

    def _unreserve_slot(self, task: BlockTask) -> bool:
        """The task's start was not recorded: its reserved slot, if any, is free again."""
        if not task.slot_reserved:
            return False
        task.slot_reserved = False
        return self.slots is not None and self.slots.unreserve(task.info)

    async def confirm_slot(self, task: BlockTask) -> None:
        """History recorded the start of `task`: its reserved slot is held, and durable once
        this returns (raises when it could not be written)."""
        if not task.slot_reserved or self.slots is None:
            return
        task.slot_reserved = False
        if self.slots.confirm(task.info):
            await self.slots.flush()

    async def release_slot(self, slot: records_pb2.ConcurrencySlot) -> None:
        """The attempt holding `slot` closed: free it, durably once this returns. Releasing a
        slot not held is a no-op (the outbox delivers at least once)."""
        if self.slots is None:
            raise Internal("concurrency slots are kept by the root partition only")
        if self.closed:
            raise self._closed_error()
        self._touch()
        if self.slots.release(slot):
            self._dispatch()
        if self.slots.dirty:
            await self.slots.flush()

    async def _write_slots(self, slots: list[records_pb2.ConcurrencySlot]) -> None:
        """Write the held slots to the partition row, fenced on the range_id."""
        try:
            async with self._row_lock:
                info = records_pb2.TaskQueueInfo()
                info.CopyFrom(self._info)
                del info.slots[:]
                info.slots.extend(slots)
                info.last_update_time.CopyFrom(_timestamp(self._clock()))
                row = TaskQueueRow(self.key, self._range_id, info.SerializeToString())
                await self._store.update_task_queue(row, previous_range_id=self._range_id)
                self._info = info
        except store_errors.ConditionFailed:
            self._stop_soon(lost=True)
            raise self._lost_error() from None
        except store_errors.PersistenceError as e:
            raise Unavailable(f"concurrency slots not written: {e}") from e

    # -- ack level -----------------------------------------------------------------------

    def _ack(self, task_id: int) -> None:
        self._levels.ack(task_id)
        self._acked_not_deleted += 1

    async def _persist_ack_level(self) -> None:
        """Persist the ack level (fenced on the range_id), then delete the rows below it."""
        level = self._levels.ack_level
        if level > self._persisted_ack_level:
            async with self._row_lock:
                info = records_pb2.TaskQueueInfo()
                info.CopyFrom(self._info)
                info.ack_level = level
                info.last_update_time.CopyFrom(_timestamp(self._clock()))
                row = TaskQueueRow(self.key, self._range_id, info.SerializeToString())
                await self._store.update_task_queue(row, previous_range_id=self._range_id)
                self._info = info
                self._persisted_ack_level = level
        if self._persisted_ack_level > self._deleted_through:
            level = self._persisted_ack_level
            deleted = await self._store.complete_backlog_tasks(self.key, max_task_id=level)
            self._deleted_through = level
            self._acked_not_deleted = max(0, self._acked_not_deleted - deleted)

    # -- backlog writes ------------------------------------------------------------------

    async def _allocate_ids(self, count: int) -> list[int]:
        bits = self._config.task_id_bits
        if self._next_seq + count > 1 << bits:
            async with self._row_lock:
                info = records_pb2.TaskQueueInfo()
                info.CopyFrom(self._info)
                info.last_update_time.CopyFrom(_timestamp(self._clock()))
                renewed = self._range_id + 1
                await self._store.update_task_queue(
                    TaskQueueRow(self.key, renewed, info.SerializeToString()),
                    previous_range_id=self._range_id,
                )
                self._range_id, self._info, self._next_seq = renewed, info, 1
        first = (self._range_id << bits) | self._next_seq
        self._next_seq += count
        return list(range(first, first + count))

    async def _persist(self, info: records_pb2.BacklogTask) -> None:
        if self.closed:
            raise self._closed_error()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((info, done))
        self._write_wanted.set()
        await done

    def _fail_pending(self, error: ServiceError) -> None:
        while self._pending:
            _, done = self._pending.popleft()
            if not done.done():
                done.set_exception(error)

    async def _write_loop(self) -> None:
        """The only writer, so rows become durable in id order and the reader, which stops at
        the highest durable id, never skips one."""
        while True:
            if not self._pending:
                if self.closed:
                    return
                await self._write_wanted.wait()
                self._write_wanted.clear()
                continue
            count = min(len(self._pending), self._config.backlog_write_batch)
            batch = [self._pending.popleft() for _ in range(count)]
            self._writing = count
            error: ServiceError | None = None
            lost = False
            try:
                ids = await self._allocate_ids(count)
                tasks = [(task_id, info) for task_id, (info, _) in zip(ids, batch, strict=True)]
                await self._manager.create_backlog_tasks(
                    self.key, range_id=self._range_id, tasks=tasks
                )
            except store_errors.ConditionFailed:
                lost, error = True, self._lost_error()
            except store_errors.PersistenceError as e:
                error = Unavailable(f"backlog write failed: {e}")
            except Exception as e:
                log.exception("backlog write failed", key=self.key)
                error = Internal(f"backlog write failed: {e}")
            finally:
                self._writing = 0
            for _, done in batch:
                if done.done():
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)
            if lost:
                self._lost = True
                self._fail_pending(self._lost_error())
                self._stop_soon(lost=True)
                return
            if error is not None:
                continue
            self._max_read_level = ids[-1]
            self._read_wanted.set()

    # -- backlog reads -------------------------------------------------------------------

    async def _read_backlog(self) -> None:
        """Fill the buffer up to the fair window from the backlog after the read level, a
        batch per query. The window lets the dispatch order see past a burst of one fairness
        key to the tasks of other keys written after it."""
        batch = self._config.backlog_read_batch
        window = self._config.fair_window
        while (
            not self.closed
            and len(self._buffer) < window
            and self._levels.read_level < self._max_read_level
        ):
            upper = self._max_read_level
            rows = await self._manager.get_backlog_tasks(
                self.key, after_task_id=self._levels.read_level, max_task_id=upper, limit=batch
            )
            now_ms = int(self._clock() * 1000)
            for task_id, info in rows:
                self._levels.read(task_id)
                if _expired(info, now_ms):
                    self._ack(task_id)  # schedule-to-start passed: history times it out
                else:
                    self._buffer.push(BlockTask(info, task_id), placement(info, task_id))
            self._levels.read_to(rows[-1][0] if len(rows) == batch else upper)
            self._dispatch()

    async def _read_loop(self) -> None:
        while True:
            await self._read_wanted.wait()
            self._read_wanted.clear()
            if self.closed:
                return
            try:
                await self._read_backlog()
            except store_errors.PersistenceError as e:
                log.warning("backlog read failed", key=self.key, error=str(e))
                self._read_wanted.set()
                await self._closed_within(self._config.retry_backoff)

    def _backlog_read_to_end(self) -> bool:
        return (
            not self._buffer
            and not self._pending
            and not self._writing
            and self._levels.read_level >= self._max_read_level
        )

    def _peek_buffered(self) -> BlockTask | None:
        now_ms = int(self._clock() * 1000)
        while (head := self._buffer.peek()) is not None and _expired(head.info, now_ms):
            self._buffer.pop(charge=False)
            assert head.task_id is not None
            self._ack(head.task_id)
        return head

    def _pop_buffered(
        self, eligible: Callable[[BlockTask], bool] | None = None
    ) -> BlockTask | None:
        """The first buffered task in order that is `eligible` and not resting; the ones
        before it that are not stay buffered, in their places."""
        self._peek_buffered()
        if (now := time.monotonic()) < self._rest_until:
            limit = eligible

            def eligible(task: BlockTask) -> bool:
                return task.not_before <= now and (limit is None or limit(task))

        task = self._buffer.pop() if eligible is None else self._buffer.pop_eligible(eligible)
        if (
            len(self._buffer) < self._config.fair_window
            and self._levels.read_level < self._max_read_level
        ):
            self._read_wanted.set()
        return task

    # -- matching ------------------------------------------------------------------------

    def _notify_polls(self) -> None:
        changed, self._polls_changed = self._polls_changed, asyncio.Event()
        changed.set()
        if self._buffer and self._forwarder is not None:
            self._unpolled.set()

    def _next_waiting(self, preferred_identity: str = "", *, limited: bool = True) -> Poll | None:
        chosen: Poll | None = None
        for poll in self._waiting.values():
            if poll.waiter is None or poll.waiter.done():
                continue
            if limited and not self._may_hand(poll):
                continue
            if chosen is None:
                chosen = poll
            if not preferred_identity or poll.identity == preferred_identity:
                chosen = poll
                break
        return chosen

    def _hand_over(self, poll: Poll, task: BlockTask, *, spend: bool = True) -> None:
        if spend:
            self._spend_token(poll)
        del self._waiting[poll.poller_id]
        assert poll.waiter is not None
        poll.waiter.set_result(task)
        self._notify_polls()

    def _next_task(self) -> BlockTask | None:
        """The next task for a poll: buffered, else a held add; under concurrency limits, one
        a slot is free for (reserved now), skipping types whose limit is reached."""
        if not concurrency.has_limits(self.queue_config):
            return self._pop_next()
        if self.slots is None or self.slots.full(self.queue_config):
            return None
        task = self._pop_buffered(self._eligible) or self._pop_held(self._eligible)
        return None if task is None else self._reserve_slot(task)

    def _dispatch_if_open(self) -> None:
        if not self.closed:
            self._dispatch()

    def _dispatch(self) -> None:
        # Held adds wait here only while a rate limit holds back the waiting polls.
        while self._waiting and (self._buffer or self._held):
            poll = self._next_waiting()
            if poll is None:
                self._wake_at_next_token()
                break
            task = self._next_task()
            if task is None:
                return
            self._hand_over(poll, task)
        if self._buffer and self._forwarder is not None:
            self._unpolled.set()

    async def add(
        self,
        info: records_pb2.BacklogTask,
        *,
        preferred_identity: str = "",
        direct: flow_service_pb2.PollBlockTaskResponse | None = None,
    ) -> bool:
        """Sync match, else persist; returns once a poll took the task (True) or it is
        durable (False). A `direct` task goes to the poll as it is; persisted, it is only
        the pointer `info`, like any other."""
        if self.closed:
            raise self._closed_error()
        self._stats.added()
        self._touch()
        if direct is not None and concurrency.has_limits(self.queue_config):
            # History started it without asking for a slot; a poll starts it again, holding
            # one (RecordBlockStarted takes a direct start over), so history releases it.
            direct = None
        if self._backlog_read_to_end():
            outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            task = BlockTask(info, sync_outcome=outcome, direct=direct)
            if not self._eligible(task):
                await self._persist(info)  # no slot free: it waits its turn in the backlog
                return False
            poll = self._next_waiting(preferred_identity) if self._waiting else None
            if poll is not None:
                self._hand_over(poll, self._reserve_slot(task))
                if await outcome:
                    return True
                # The poll could not start it (history busy, client gone): keep it durably.
            elif (
                self._forwarder is not None
                and not self._queue_token_wait()
                and await self._forwarder.offer(
                    self.key, info, preferred_identity=preferred_identity, direct=direct
                )
            ):
                self.spend_queue_token()
                self._stats.dispatched_task(sync=True)
                return True  # a poll waiting at the root took it
            elif self._config.sync_match_wait > 0 and await self._hold(task):
                return True
        await self._persist(info)
        return False

    async def offer(
        self,
        info: records_pb2.BacklogTask,
        *,
        preferred_identity: str = "",
        direct: flow_service_pb2.PollBlockTaskResponse | None = None,
    ) -> bool:
        """A task a leaf forwarded: hand it to a waiting poll and return whether the poll
        took it; False at once when none waits. Never held, never persisted: the leaf keeps
        the task unless this says True."""
        if self.closed:
            raise self._closed_error()
        # The leaf spent its own share of the rate on it (see `spend_queue_token`).
        poll = self._next_waiting(preferred_identity, limited=False) if self._waiting else None
        if poll is None:
            return False
        self._touch()
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        offered = BlockTask(info, sync_outcome=outcome, direct=direct, offered=True)
        self._hand_over(poll, offered, spend=False)
        return await outcome

    async def next_unpolled(self) -> BlockTask | None:
        """The next buffered task while no poll here waits for one (a leaf pushes it to the
        root); None once the partition closes. The caller must `finish` it."""
        while not self.closed:
            if self._buffer and not self._waiting:
                if wait := self._queue_token_wait():
                    await self.closed_within(wait)
                    continue
                if task := self._pop_buffered():
                    self._touch()  # a leaf that pushes its backlog is in use
                    return task
            self._unpolled.clear()
            await self._unpolled.wait()
        return None

    async def _hold(self, task: BlockTask) -> bool:
        """Keep the task in memory for up to `sync_match_wait` for a poll to come and take
        it, as from a waiting poll. Polls are out only briefly between tasks, so a burst of
        adds that finds none waiting would otherwise all go to the backlog, and a backlog,
        once there, takes every later add until it is read empty. Nothing is lost meanwhile:
        the add is not answered, so the sender (history's outbox) still holds the task."""
        assert task.sync_outcome is not None
        task.held = True
        self._held.append(task)
        changed, self._held_changed = self._held_changed, asyncio.Event()
        changed.set()
        self._wake_at_next_token()
        try:
            async with asyncio.timeout(self._config.sync_match_wait):
                return await asyncio.shield(task.sync_outcome)
        except TimeoutError:
            if task.held:
                return False  # no poll came
        finally:
            if task.held:  # timed out, or the add was cancelled (its sender went away)
                task.held = False
                self._held.remove(task)
        return await task.sync_outcome  # a poll took it just now: its outcome decides

    def _rank(self, task: BlockTask) -> tuple[int, int]:
        return self._buffer.rank(placement(task.info, task.task_id or 0))

    def _pop_next(self) -> BlockTask | None:
        """The buffered task that goes first, unless a held add ranks before it (a lower
        priority level, or an older run with in-flight first; the one added first of equal
        rank): held adds are outside the buffer's order, and otherwise go when it is empty."""
        head = self._peek_buffered()
        if self._held:
            live = (
                t for t in self._held if t.sync_outcome is not None and not t.sync_outcome.done()
            )
            held = min(live, key=self._rank, default=None)
            if held is not None and (head is None or self._rank(held) < self._rank(head)):
                self._held.remove(held)
                held.held = False
                return held
        return self._pop_buffered() or self._pop_held()

    def _pop_held(self, eligible: Callable[[BlockTask], bool] | None = None) -> BlockTask | None:
        """The oldest held add that is `eligible`; the ones before it that are not stay."""
        found: BlockTask | None = None
        skipped: list[BlockTask] = []
        while self._held:
            task = self._held.popleft()
            if task.sync_outcome is None or task.sync_outcome.done():
                task.held = False
            elif eligible is None or eligible(task):
                task.held = False
                found = task
                break
            else:
                skipped.append(task)
        self._held.extendleft(reversed(skipped))
        return found

    def register_poll(
        self,
        poller_id: str,
        *,
        identity: str,
        rate_per_second: float,
        sticky_task_queue: str = "",
        warm_keys: Sequence[str] = (),
    ) -> Poll:
        if self.closed:
            raise self._closed_error()
        previous = self._polls.pop(poller_id, None)
        if previous is not None:
            self.cancel_poll(previous)  # a retried poll replaces the one it retries
        if len(self._polls) >= self._config.max_outstanding_polls:
            raise ResourceExhausted(
                f"task queue partition has {len(self._polls)} outstanding polls, the limit",
                reason="TOO_MANY_OUTSTANDING_POLLS",
            )
        poll = Poll(poller_id, identity, rate_per_second, sticky_task_queue, tuple(warm_keys))
        self._note_poller_rate(identity, rate_per_second)
        self._polls[poller_id] = poll
        self._pollers[identity] = self._seen(poll)
        self._touch()
        return poll

    def unregister_poll(self, poll: Poll) -> None:
        if self._polls.get(poll.poller_id) is poll:
            del self._polls[poll.poller_id]
        if self._waiting.get(poll.poller_id) is poll:
            del self._waiting[poll.poller_id]
        self._pollers[poll.identity] = self._seen(poll)
        self._touch()
        self._notify_polls()

    def _seen(self, poll: Poll) -> _PollerSeen:
        return _PollerSeen(
            self._clock(), poll.rate_per_second, poll.sticky_task_queue, poll.warm_keys
        )

    def cancel_poll(self, poll: Poll) -> None:
        if self._waiting.get(poll.poller_id) is poll:
            del self._waiting[poll.poller_id]
        poll.cancel()
        self._notify_polls()

    async def take(self, poll: Poll, deadline: float) -> BlockTask | None:
        """The next task for `poll`, or None when the deadline (loop time) passes, the poll is
        cancelled or the partition closes."""
        if poll.cancelled or self.closed:
            return None
        if self._may_hand(poll):
            task = self._next_task()
            if task is not None:
                self._spend_token(poll)
                return task
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        waiter: asyncio.Future[BlockTask | None] = loop.create_future()
        poll.waiter = waiter
        self._waiting[poll.poller_id] = poll
        self._notify_polls()
        self._wake_at_next_token()
        try:
            await asyncio.wait((waiter,), timeout=remaining)
        except asyncio.CancelledError:
            self._stop_waiting(poll)
            # Handed a task in the same instant the caller went away: give it back.
            if waiter.done() and (handed := waiter.result()) is not None:
                self.finish(handed, consumed=False)
            waiter.cancel()
            raise
        self._stop_waiting(poll)
        if not waiter.done():
            waiter.cancel()
            return None
        return waiter.result()

    def _stop_waiting(self, poll: Poll) -> None:
        poll.waiter = None
        if self._waiting.get(poll.poller_id) is poll:
            del self._waiting[poll.poller_id]
            self._notify_polls()

    def finish(self, task: BlockTask, *, consumed: bool, rest_s: float = 0.0) -> None:
        """`consumed`: started, or dropped as stale; otherwise the task is kept, at the front.
        A slot still reserved for it (its start was not recorded) is free again. A kept task
        with `rest_s` (history could not start it) is not handed out again for that long:
        the tasks behind it go meanwhile, instead of every poll retrying the one task whose
        history host is gone."""
        freed = self._unreserve_slot(task)
        if rest_s > 0 and not consumed and task.task_id is not None:
            task.not_before = time.monotonic() + rest_s
            self._rest_until = max(self._rest_until, task.not_before)
            asyncio.get_running_loop().call_later(rest_s, self._dispatch_if_open)
        if consumed and not task.offered:
            self._stats.dispatched_task(sync=task.task_id is None)
        if task.sync_outcome is not None:
            if not task.sync_outcome.done():
                task.sync_outcome.set_result(consumed)
        elif self.closed or task.task_id is None:
            return  # read again from the backlog by whoever loads the partition next
        elif consumed:
            self._ack(task.task_id)
        else:
            self._buffer.push_back(task, placement(task.info, task.task_id))
            freed = True
        if freed:
            self._dispatch()

    async def wait_for_polls(self, *, waiting: int) -> None:
        """Until exactly `waiting` polls wait for a task (for tests and tools)."""
        while len(self._waiting) != waiting:
            await self._polls_changed.wait()

    @property
    def held_adds(self) -> int:
        return len(self._held)

    async def wait_for_held(self, *, held: int) -> None:
        """Until at least `held` adds wait in memory for a poll (for tests and tools)."""
        while len(self._held) < held:
            await self._held_changed.wait()

    @property
    def outstanding_polls(self) -> int:
        return len(self._polls)

    @property
    def waiting_polls(self) -> int:
        return len(self._waiting)

    # -- describe ------------------------------------------------------------------------

    def _forget_old_pollers(self) -> None:
        cutoff = self._clock() - self._config.poller_expiry
        old = [i for i, seen in self._pollers.items() if seen.last_access < cutoff]
        for identity in old:
            del self._pollers[identity]
        if self._limits is not None:
            self._limits.forget_pollers(old)

    def backlog_estimate(self) -> tuple[int, float, int]:
        """For the metrics gauges, from memory: tasks waiting (those held or buffered, those
        being written, and the durable ones not read yet, by their ids), the age in seconds
        of the oldest one in memory, and the pollers seen lately."""
        unread = max(0, self._max_read_level - self._levels.read_level)
        count = len(self._buffer) + len(self._held) + len(self._pending) + self._writing + unread
        waiting = [*self._buffer, *self._held]
        age = 0.0
        if waiting:
            oldest = min(t.info.create_time.ToNanoseconds() for t in waiting)
            age = max(0.0, self._clock() - oldest / 1e9)
        return count, age, len(self._pollers)

    async def describe(self) -> matching_service_pb2.DescribeTaskQueueResponse:
        try:
            # Shielded: a caller that goes away must not cancel the query midway.
            stored = await asyncio.shield(self._store.count_backlog_tasks(self.key))
        except store_errors.PersistenceError as e:
            raise Unavailable(f"cannot count the backlog: {e}") from e
        backlog = (
            max(0, stored - self._acked_not_deleted)
            + len(self._pending)
            + self._writing
            + len(self._held)
        )
        self._forget_old_pollers()
        pollers = [
            task_queue_pb2.PollerInfo(
                identity=identity,
                last_access_time=_timestamp(seen.last_access),
                rate_per_second=seen.rate_per_second,
                sticky_task_queue=seen.sticky_task_queue,
                warm_keys=seen.warm_keys,
            )
            for identity, seen in sorted(self._pollers.items())
        ]
        status = task_queue_pb2.TaskQueuePartitionStatus(
            partition=self.key.partition,
            owner_host=self.host_id,
            backlog_count_hint=backlog,
            read_level=self._levels.read_level,
            ack_level=self._levels.ack_level,
            rate_limit_per_second=self._limits.queue_rate if self._limits is not None else 0.0,
            tasks_add_rate=self._stats.add_rate(),
            tasks_dispatch_rate=self._stats.dispatch_rate(),
            sync_match_ratio=self._stats.sync_match_ratio(),
            pollers=pollers,
        )
        waiting = [*self._buffer, *self._held]
        if waiting:
            oldest = min(t.info.create_time.ToNanoseconds() for t in waiting)
            status.oldest_task_age.FromNanoseconds(max(0, int(self._clock() * 1e9) - oldest))
        if self.slots is not None:
            status.concurrency_in_use = self.slots.in_use
            status.block_concurrency_in_use.update(self.slots.in_use_by_type())
        return matching_service_pb2.DescribeTaskQueueResponse(
            pollers=pollers,
            status=status,
            config=self.queue_config,
            config_version=self.config_version,
        )
