"""One owned shard: its lease, its cached executions, and the commits that go through it.

Every change to a run happens under that run's lock on a copy of its mutable state, and is
committed (state, events, outbox tasks) in one fenced write. After a commit the new outbox
tasks go straight to the transfer and timer queues (the persisted outbox is the fallback
after a crash). Commits that are allocated task ids but not yet finished are tracked, so the
queues never acknowledge past a task that may still appear.

A commit whose outcome is unknown (its reply lost, a timeout) may still become visible
after it failed: on Cassandra a lightweight transaction left accepted but uncommitted is
completed by the next Paxos round on the shard's partition, and a read at LOCAL_QUORUM does
not see it before then. Read in that window, a run's state would be one the run is about to
leave, and a timer or outbox task that checks it (a retry's dispatch) would find itself stale
and do nothing for good. So such a commit settles the shard (ShardStore.fence) before any
state is read from the store again: afterwards the write is visible or never will be.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import structlog

from tideflow.api.v1 import history_pb2, namespace_pb2
from tideflow_server import observability
from tideflow_server.config import HistoryConfig
from tideflow_server.history import blocks, closing
from tideflow_server.history.flows import FlowCache
from tideflow_server.history.shard.direct import DirectDispatch
from tideflow_server.history.shard.execution import Execution
from tideflow_server.history.shard.port import TimerExecutor, TransferExecutor
from tideflow_server.history.shard.timer import TimerQueue
from tideflow_server.history.shard.transfer import TransferQueue
from tideflow_server.history.state import RunStep, utcnow
from tideflow_server.history.visibility import VisibilityWriter
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.namespaces import NamespaceCache
from tideflow_server.persistence import errors as store
from tideflow_server.persistence.manager import LoadedExecution, PersistenceManager, ShardLease
from tideflow_server.persistence.records import CreateMode, ExecutionKey, FlowCheck
from tideflow_server.rpc.clients import HistoryClient, MatchingClient
from tideflow_server.rpc.errors import NotFound, Unavailable
from tideflow_server.taskqueue_configs import TaskQueueConfigs

log = structlog.get_logger(__name__)
T = TypeVar("T")

MAX_CONFLICT_RETRIES = 3


class Conflict(Exception):
    """The execution changed under us (db_version): reload and decide again."""


class ShardContext:
    def __init__(
        self,
        *,
        lease: ShardLease,
        manager: PersistenceManager,
        config: HistoryConfig,
        flows: FlowCache,
        namespaces: NamespaceCache,
        matching: MatchingClient,
        history: HistoryClient,
        on_lost: Callable[[ShardContext], None],
        timer_executor: TimerExecutor,
        transfer_executor: TransferExecutor,
        visibility: VisibilityWriter | None = None,
        direct: DirectDispatch | None = None,
        task_queues: TaskQueueConfigs | None = None,
        deletions: asyncio.Semaphore | None = None,
    ) -> None:
        self.lease = lease
        self.manager = manager
        self.config = config
        self.redispatch = blocks.Redispatch.of(config)
        self.flows = flows
        self.namespaces = namespaces
        self.matching = matching
        self.history = history
        self.visibility = visibility or VisibilityWriter(manager.persistence.visibility)
        self.direct = direct
        self.task_queues = task_queues or TaskQueueConfigs(manager.persistence.tasks)
        self.deletions = deletions or asyncio.Semaphore(config.deletions_in_flight)
        self._on_lost = on_lost
        self._timer_executor = timer_executor
        self._transfer_executor = transfer_executor
        self._cache: OrderedDict[tuple[str, str, str], Execution] = OrderedDict()
        # run_id -> its current execution. Only this shard's owner moves the pointers, and a
        # new owner starts with an empty map, so an entry is never stale.
        self._current: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._inflight: dict[int, tuple[int, int]] = {}
        self._inflight_seq = 0
        self._settling: asyncio.Task[None] | None = None
        self._unsettled = False
        """A commit's outcome became unknown while the settling fence was in flight."""
        self.lost = False
        self.transfer: TransferQueue | None = None
        self.timers: TimerQueue | None = None

    @property
    def shard_id(self) -> int:
        return self.lease.shard_id

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.transfer = TransferQueue(
            self, lambda task, direct_task: self._transfer_executor(self, task, direct_task)
        )
        self.timers = TimerQueue(self, lambda timer: self._timer_executor(self, timer))
        self.transfer.start()
        self.timers.start()

    async def stop(self) -> None:
        for queue in (self.transfer, self.timers):
            if queue is not None:
                await queue.stop()
        if self._settling is not None:
            self._settling.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._settling

    # -- unknown outcomes ----------------------------------------------------------------

    def _unsettle(self) -> None:
        """A commit's outcome is unknown: fence the shard before the next read from the
        store, again if a fence is already under way (it may have begun before that write)."""
        if self._settling is not None and not self._settling.done():
            self._unsettled = True
            return
        self._settling = asyncio.create_task(self._settle(), name=f"settle-{self.shard_id}")

    async def _settle(self) -> None:
        backoff = 0.05
        while not self.lost:
            self._unsettled = False
            try:
                await self.manager.fence_shard(self.lease)
            except store.ShardOwnershipLost:
                self.mark_lost()
                return
            except store.PersistenceError as e:
                log.info("shard not settled, retrying", shard_id=self.shard_id, error=str(e))
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 2.0)
                continue
            if not self._unsettled:
                return

    async def settled(self) -> None:
        """Wait until no commit of this shard has an outcome still unknown (see the module
        docstring); Unavailable if the shard is lost meanwhile."""
        while self._settling is not None and not self._settling.done():
            await asyncio.shield(self._settling)
        self.check_owned()

    def mark_lost(self) -> None:
        if not self.lost:
            self.lost = True
            log.warning("shard ownership lost", shard_id=self.shard_id)
            self._on_lost(self)

    def check_owned(self) -> None:
        if self.lost:
            raise Unavailable(
                f"shard {self.shard_id} moved to another host", reason="SHARD_OWNERSHIP_LOST"
            )

    # -- executions ----------------------------------------------------------------------

    def execution_entry(self, namespace_id: str, run_id: str, execution_id: str) -> Execution:
        key = (namespace_id, run_id, execution_id)
        entry = self._cache.get(key)
        if entry is None:
            entry = Execution(namespace_id, run_id, execution_id)
            self._cache[key] = entry
            self._evict()
        else:
            self._cache.move_to_end(key)
        return entry

    def _evict(self) -> None:
        """Drop the least recently used entries over the cache size (never a locked one)."""
        excess = len(self._cache) - self.config.cache_size
        if excess <= 0:
            return
        for key in itertools.islice(list(self._cache), excess):
            if not self._cache[key].lock.locked():
                del self._cache[key]

    async def delete_execution(self, entry: Execution) -> None:
        """Delete the execution (the caller holds `entry.lock`): its visibility row, its
        history, then its row and pointer, last, so that a deletion cut short is found and done
        again by the timer that asked for it. Each store call is idempotent."""
        key = ExecutionKey(self.shard_id, entry.namespace_id, entry.run_id, entry.execution_id)
        persistence = self.manager.persistence
        try:
            await persistence.visibility.delete_run(entry.namespace_id, entry.execution_id)
            await persistence.history.delete_history(key)
            await persistence.executions.delete_execution(key)
        except store.PersistenceError as e:
            raise Unavailable(str(e)) from e
        entry.loaded = None
        self._cache.pop((entry.namespace_id, entry.run_id, entry.execution_id), None)
        if self._current.get((entry.namespace_id, entry.run_id)) == entry.execution_id:
            del self._current[(entry.namespace_id, entry.run_id)]

    def outbox_done_through(self, task_id: int) -> bool:
        """Every outbox (transfer) task with an id up to `task_id` is delivered."""
        return self.transfer is not None and self.transfer.done_through(task_id)

    async def current_execution_id(self, namespace_id: str, run_id: str) -> str:
        key = (namespace_id, run_id)
        known = self._current.get(key)
        if known is not None:
            self._current.move_to_end(key)
            return known
        await self.settled()
        try:
            current = await self.manager.persistence.executions.get_current_run(
                self.shard_id, namespace_id, run_id
            )
        except store.NotFound as e:
            raise NotFound(f"run {run_id!r} not found", reason="RUN_NOT_FOUND") from e
        except store.Unavailable as e:
            raise Unavailable(str(e)) from e
        self._remember_current(namespace_id, run_id, current.execution_id)
        return current.execution_id

    def _remember_current(self, namespace_id: str, run_id: str, execution_id: str) -> None:
        self._current[(namespace_id, run_id)] = execution_id
        self._current.move_to_end((namespace_id, run_id))
        while len(self._current) > self.config.cache_size:
            self._current.popitem(last=False)

    @contextlib.asynccontextmanager
    async def locked(
        self, namespace_id: str, run_id: str, execution_id: str
    ) -> AsyncIterator[Execution]:
        """The execution, loaded and exclusively ours for the block."""
        self.check_owned()
        entry = self.execution_entry(namespace_id, run_id, execution_id)
        async with entry.lock:
            if entry.loaded is None:
                entry.last_batch = []
                await self.settled()
                try:
                    entry.loaded = await self.manager.get_execution(
                        self.shard_id, namespace_id, run_id, execution_id
                    )
                except store.NotFound as e:
                    raise NotFound(
                        f"run {run_id!r} execution {execution_id} not found",
                        reason="RUN_NOT_FOUND",
                    ) from e
                except store.Unavailable as e:
                    raise Unavailable(str(e)) from e
            yield entry

    async def update(
        self,
        namespace_id: str,
        run_id: str,
        execution_id: str,
        action: Callable[[Execution, RunStep], Awaitable[T]],
        *,
        salvaged: bool = False,
    ) -> T:
        """Run `action` on a fresh step of the execution and commit what it did; on a
        db_version conflict, reload and run it again. `salvaged`: even on what could be read
        of a state that does not parse (an action that only closes the run)."""
        for _ in range(MAX_CONFLICT_RETRIES):
            with observability.decision(self.shard_id, run_id) as span:
                async with self.locked(namespace_id, run_id, execution_id) as entry:
                    step = self.new_step(entry, salvaged=salvaged)
                    result = await action(entry, step)
                    try:
                        await self.commit(entry, step)
                    except Conflict:
                        continue
                    span.set_attribute("tideflow.events", len(step.events))
                    return result
        raise Unavailable(f"run {run_id!r} is changing too fast; try again", reason="CONFLICT")

    def new_step(self, entry: Execution, *, salvaged: bool = False) -> RunStep:
        state = records_pb2.MutableState()
        state.CopyFrom(entry.salvaged.state if salvaged else entry.state)
        return RunStep(state, now=utcnow())

    # -- commits -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _allocating(self, step: RunStep) -> AsyncIterator[None]:
        if step.events:
            step.info.last_batch_event_id = step.events[0].event_id
        tasks: list[records_pb2.TransferTask | records_pb2.TimerTask] = [
            *step.transfer_tasks,
            *step.timer_tasks,
        ]
        self._inflight_seq += 1
        token = self._inflight_seq
        # Registered before allocation: queues must not ack past ids about to be allocated.
        self._inflight[token] = (self.lease.range_id << 20, int(step.now.timestamp() * 1000))
        try:
            if tasks:
                ids = await self.manager.allocate_task_ids(self.lease, len(tasks))
                for task, task_id in zip(tasks, ids, strict=True):
                    task.task_id = task_id
                self._inflight[token] = (ids[0], self._inflight[token][1])
                if step.block_timer is not None:
                    step.info.block_timer.task_id = step.block_timer.task_id
            yield
        finally:
            del self._inflight[token]

    def min_inflight_task_id(self) -> int | None:
        return min((t for t, _ in self._inflight.values()), default=None)

    def min_inflight_time_ms(self) -> int | None:
        return min((ms for _, ms in self._inflight.values()), default=None)

    def _translate(self, e: store.PersistenceError, entry: Execution, step: RunStep) -> Exception:
        if isinstance(e, store.ShardOwnershipLost):
            self.mark_lost()
            return Unavailable(
                f"shard {self.shard_id} moved to another host", reason="SHARD_OWNERSHIP_LOST"
            )
        # The outcome is unknown: the write may have landed. Read the state again next time,
        # and hand its tasks to the queues anyway: once this call returns, the queues may
        # acknowledge past these ids, so a landed write's tasks would otherwise never run.
        # Delivering a task whose write did not land is harmless (receivers check state).
        log.info(
            "commit outcome unknown; settling the shard",
            shard_id=self.shard_id,
            run_id=entry.run_id,
            error=str(e),
        )
        entry.loaded = None
        self._unsettle()
        step.direct_tasks.clear()  # a landed direct start is taken over by the poll instead
        self._queue(step)
        return Unavailable(str(e))

    def _queue(self, step: RunStep) -> None:
        if self.transfer is not None and step.transfer_tasks:
            self.transfer.submit(step.transfer_tasks, direct=step.direct_tasks)
        if self.timers is not None and step.timer_tasks:
            self.timers.submit(step.timer_tasks)

    async def commit(self, entry: Execution, step: RunStep) -> None:
        """Commit the step. Shielded: a caller cancelled mid-commit (a client that went away)
        must not stop the write halfway, with the database updated but its timers and outbox
        tasks never queued and the cached state left behind."""
        if not step.changed:
            return
        await asyncio.shield(self._commit(entry, step))

    def _before_write(self, step: RunStep) -> None:
        """What every commit of a step adds last: direct starts, then the block timer row
        for the deadlines as they now stand."""
        self._start_directly(step)
        blocks.arm_block_timer(step, self.redispatch)

    def _start_directly(self, step: RunStep) -> None:
        """Direct dispatch (see shard/direct.py) for the blocks this step schedules now."""
        direct = self.direct
        if direct is None or not step.transfer_tasks or not step.is_open:
            return
        namespace_id = step.info.namespace_id
        started = blocks.start_directly(step, lambda tq: direct.wanted(namespace_id, tq))
        for pending, scheduled in started:
            step.direct_tasks[pending.scheduled_event_id] = blocks.worker_task(
                step, pending, scheduled
            )

    async def _apply_namespace(self, step: RunStep) -> namespace_pb2.NamespaceLimits:
        """What the run's namespace adds to the step's write (its record comes from the
        namespace cache, from memory but once every few seconds): the run's deletion when
        the step closes it (its retention), and the limits the manager applies under the
        server's, returned."""
        config = (await self.namespaces.by_id(step.info.namespace_id)).config
        closing.arm_deletion(step, config.retention)
        return config.limits

    async def _commit(self, entry: Execution, step: RunStep) -> None:
        assert entry.loaded is not None
        self._before_write(step)
        own_limits = await self._apply_namespace(step)
        async with self._allocating(step):
            try:
                loaded = await self.manager.update_execution(
                    self.lease,
                    state=step.state,
                    expected_db_version=entry.loaded.db_version,
                    events=step.events,
                    transfer_tasks=step.transfer_tasks,
                    timer_tasks=step.timer_tasks,
                    namespace_limits=own_limits,
                )
            except store.ConditionFailed as e:
                entry.loaded = None
                raise Conflict() from e
            except store.SizeLimitExceeded:
                raise  # nothing was written; the caller knows which field made it too big
            except store.PersistenceError as e:
                raise self._translate(e, entry, step) from e
        self._committed(entry, loaded, step)

    async def create(
        self,
        entry: Execution,
        step: RunStep,
        *,
        mode: CreateMode,
        previous_execution_id: str | None,
        flow_check: FlowCheck | None = None,
    ) -> None:
        """Commit a new execution (its pointer is checked by the store). Raises the store's
        CurrentRunConditionFailed for the caller to apply the reuse policy, and FlowChanged
        if `flow_check` failed. Shielded, like `commit`."""
        await asyncio.shield(
            self._create(
                entry,
                step,
                mode=mode,
                previous_execution_id=previous_execution_id,
                flow_check=flow_check,
            )
        )

    async def _create(
        self,
        entry: Execution,
        step: RunStep,
        *,
        mode: CreateMode,
        previous_execution_id: str | None,
        flow_check: FlowCheck | None,
    ) -> None:
        self._before_write(step)
        own_limits = await self._apply_namespace(step)
        async with self._allocating(step):
            try:
                loaded = await self.manager.create_execution(
                    self.lease,
                    state=step.state,
                    events=step.events,
                    transfer_tasks=step.transfer_tasks,
                    timer_tasks=step.timer_tasks,
                    mode=mode,
                    previous_execution_id=previous_execution_id,
                    flow_check=flow_check,
                    namespace_limits=own_limits,
                )
            except (store.ConditionFailed, store.SizeLimitExceeded):
                raise
            except store.PersistenceError as e:
                # The pointer may or may not have moved: read it again next time.
                self._current.pop((entry.namespace_id, entry.run_id), None)
                raise self._translate(e, entry, step) from e
        self._remember_current(entry.namespace_id, entry.run_id, entry.execution_id)
        self._committed(entry, loaded, step)

    def _committed(self, entry: Execution, loaded: LoadedExecution, step: RunStep) -> None:
        entry.loaded = loaded
        if step.events:
            entry.last_batch = step.events
            observability.count_runs(
                step.events, lambda: self.namespaces.cached_name(entry.namespace_id)
            )
        for event in step.events:
            if event.event_type == history_pb2.EVENT_TYPE_BLOCK_SCHEDULED:
                entry.scheduled_events[event.event_id] = event
        for scheduled_id in list(entry.scheduled_events):
            if scheduled_id not in loaded.state.pending_blocks:
                del entry.scheduled_events[scheduled_id]
        entry.notify()
        self._queue(step)

    async def scheduled_event(
        self, entry: Execution, scheduled_event_id: int
    ) -> history_pb2.HistoryEvent:
        """The BLOCK_SCHEDULED event of a pending block (cached, else read from history)."""
        cached = entry.scheduled_events.get(scheduled_event_id)
        if cached is not None:
            return cached
        pending = entry.state.pending_blocks[scheduled_event_id]
        page = await self.manager.read_history(
            self.shard_id,
            entry.state.execution_info,
            min_event_id=pending.scheduled_batch_event_id or 1,
            page_size=1 if pending.scheduled_batch_event_id else 1_000,
        )
        for event in page.events:
            if event.event_id == scheduled_event_id:
                entry.scheduled_events[scheduled_event_id] = event
                return event
        raise NotFound(f"scheduled event {scheduled_event_id} not found", reason="EVENT_NOT_FOUND")

    def now_ms(self) -> int:
        return int(time.time() * 1000)
