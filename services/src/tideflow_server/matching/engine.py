"""The matching engine: task queue partitions of one matching host, and the block task
dispatch that runs through them (add, long poll, RecordBlockStarted, ack)."""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import structlog

from tideflow.api.v1 import common_pb2, flow_service_pb2
from tideflow_server import observability
from tideflow_server.internal.v1 import (
    history_service_pb2,
    matching_service_pb2,
    records_pb2,
)
from tideflow_server.matching import concurrency
from tideflow_server.matching._config import MatchingConfig
from tideflow_server.matching._history import HistoryClient
from tideflow_server.matching.affinity import Affinity
from tideflow_server.matching.forwarding import Forwarder, forwards_poll, is_leaf
from tideflow_server.matching.partition import BlockTask, Poll, TaskQueuePartition
from tideflow_server.matching.queue_configs import push
from tideflow_server.matching.sticky import STICKY, StickyQueue, StickyRouter
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.persistence.records import TaskQueueKey
from tideflow_server.rpc.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from tideflow_server.tokens import block_task_response

if TYPE_CHECKING:
    from tideflow_server.rpc.clients import MatchingClient

__all__ = ["MatchingConfig", "MatchingEngine", "task_queue_key"]

log = structlog.get_logger(__name__)

MAX_REST_S = 2.0
"""The longest a backlog task rests after history could not start it (see `_keep`)."""

# RecordBlockStarted answers that make a task stale: drop it. Nothing else drops a task.
_STALE = (NotFound, FailedPrecondition, AlreadyExists)
# Answers that say "not now": keep the task (as is any other failure).
_TRY_LATER = (Unavailable, DeadlineExceeded, ResourceExhausted)


class _NotStarted(enum.Enum):
    DROPPED = "dropped"
    KEPT = "kept"


_Attempt = tuple[str, str, str, int, int]


def _attempt_of(
    namespace_id: str, run: common_pb2.RunRef, scheduled_event_id: int, attempt: int
) -> _Attempt:
    return (namespace_id, run.run_id, run.execution_id, scheduled_event_id, attempt)


def _backlog_attempt(info: records_pb2.BacklogTask) -> _Attempt:
    return (
        info.namespace_id,
        info.run_id,
        info.execution_id,
        info.scheduled_event_id,
        info.attempt,
    )


def task_queue_key(
    namespace_id: str, task_queue: common_pb2.TaskQueue, partition: int
) -> TaskQueueKey:
    kind = task_queue.kind or common_pb2.TASK_QUEUE_KIND_NORMAL
    return TaskQueueKey(namespace_id, task_queue.name, int(kind), partition)


class MatchingEngine:
    """Every public method raises only `tideflow_server.rpc.errors` types."""

    def __init__(
        self,
        manager: PersistenceManager,
        history: HistoryClient,
        *,
        host_id: str,
        config: MatchingConfig | None = None,
        clock: Callable[[], float] = time.time,
        peers: MatchingClient | None = None,
        owns_root: Callable[[TaskQueueKey], bool] | None = None,
    ) -> None:
        """`clock` is wall time in seconds (task expiry, poller access times). `peers`
        reaches the other matching hosts: a queue's config pushed to its partitions' owners,
        a leaf's forwards to a root another host owns, offers to a sticky queue another host
        owns. Without it only this host's partitions hear of a config change at once, and
        every root and sticky queue is taken to be here. Leaves forward in this process when
        `owns_root` says this host owns the root."""
        self.host_id = host_id
        self.config = config or MatchingConfig()
        self._manager = manager
        self._history = history
        self._clock = clock
        self._peers = peers
        self._partitions: dict[TaskQueueKey, TaskQueuePartition] = {}
        observability.watch_matching(self._gauges)
        self._loading: dict[TaskQueueKey, asyncio.Future[TaskQueuePartition]] = {}
        self._polls: dict[str, tuple[TaskQueuePartition | StickyQueue, Poll]] = {}
        self._sticky = StickyRouter(host_id=host_id, config=self.config, clock=clock, peers=peers)
        self._affinity = Affinity(
            live_for=self.config.affinity_live_for,
            forget_after=self.config.poller_expiry,
            clock=clock,
        )
        # Attempts handed to a poll by direct dispatch, with when (monotonic): the same
        # attempt added again (history retried the add, or a new shard owner redelivered it)
        # is already out, and must not reach a second worker.
        self._dispatched: OrderedDict[_Attempt, float] = OrderedDict()
        self._stopped = False
        self._forwarder = Forwarder(
            config=self.config,
            partition=self.partition,
            poll_here=lambda request, end: self.poll_block_task(request, deadline=end),
            client=peers,
            owns_root=owns_root,
        )

    # -- partitions ----------------------------------------------------------------------

    async def partition(self, key: TaskQueueKey) -> TaskQueuePartition:
        """The loaded partition for `key`, leased on first use."""
        if self._stopped:
            raise Unavailable("matching host is stopping")
        loaded = self._partitions.get(key)
        if loaded is not None:
            if not loaded.closed:
                return loaded
            # Unloading: let it write its last ack level before the partition is leased again.
            await loaded.wait_closed()
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(key))
            self._loading[key] = loading
        return await asyncio.shield(loading)

    async def _load(self, key: TaskQueueKey) -> TaskQueuePartition:
        try:
            partition = TaskQueuePartition(
                key,
                manager=self._manager,
                host_id=self.host_id,
                config=self.config,
                clock=self._clock,
                on_closed=self._forget,
                forwarder=self._forwarder if is_leaf(key) else None,
            )
            await partition.start()
            if self._stopped:
                await partition.stop()
                raise Unavailable("matching host is stopping")
            self._partitions[key] = partition
            return partition
        finally:
            self._loading.pop(key, None)

    def _forget(self, partition: TaskQueuePartition) -> None:
        if self._partitions.get(partition.key) is partition:
            del self._partitions[partition.key]

    def sticky_queue(self, key: TaskQueueKey) -> StickyQueue:
        """The sticky queue `key` (kind STICKY) on this host."""
        return self._sticky.queue(key)

    def loaded_partitions(self) -> list[TaskQueueKey]:
        return list(self._partitions)

    async def stop(self) -> None:
        """Stop every partition: waiting polls return empty, pending adds are written, ack
        levels are persisted; later calls answer UNAVAILABLE."""
        self._stopped = True
        await asyncio.gather(*self._loading.values(), return_exceptions=True)
        await asyncio.gather(*(p.stop() for p in list(self._partitions.values())))

    # -- RPCs ----------------------------------------------------------------------------

    async def add_block_task(
        self, request: matching_service_pb2.AddBlockTaskRequest
    ) -> matching_service_pb2.AddBlockTaskResponse:
        attempt = _attempt_of(
            request.namespace_id,
            request.run,
            request.scheduled_event_id,
            request.attempt,
        )
        if self._was_dispatched(attempt):
            return matching_service_pb2.AddBlockTaskResponse(sync_matched=True)
        key = task_queue_key(request.namespace_id, request.task_queue, request.partition)
        if key.kind == STICKY:  # a normal partition's offer (see sticky.py)
            taken = await self._sticky.offer_here(request)
            return matching_service_pb2.AddBlockTaskResponse(sync_matched=taken)
        partition = await self.partition(key)
        now_ns = int(self._clock() * 1e9)
        task = records_pb2.BacklogTask(
            namespace_id=request.namespace_id,
            run_id=request.run.run_id,
            execution_id=request.run.execution_id,
            scheduled_event_id=request.scheduled_event_id,
            attempt=request.attempt,
            block_id=request.block_id,
            priority=request.priority,
        )
        if request.HasField("dispatch"):  # else an older sender's: `priority` is all there is
            task.dispatch.CopyFrom(request.dispatch)
        task.create_time.FromNanoseconds(now_ns)
        timeout_ns = request.schedule_to_start_timeout.ToNanoseconds()
        if timeout_ns > 0:
            task.expiry_time.FromNanoseconds(now_ns + timeout_ns)
        direct = request.direct_task if request.HasField("direct_task") else None
        dispatch = request.dispatch
        if request.forwarded_from:
            # A leaf's offer: a waiting poll takes it or the leaf keeps it.
            matched = await partition.offer(
                task, preferred_identity=request.preferred_worker_identity, direct=direct
            )
        else:
            # Offered once, by the partition history sent it to (not again after a fallback).
            # A queue with concurrency limits counts every start at its root: no sticky offer.
            # A keyed task goes to its owner's sticky queue (affinity.py) the same way.
            target = ""
            if not dispatch.sticky_fallback and not concurrency.has_limits(partition.queue_config):
                target = dispatch.sticky_task_queue
                if not target and dispatch.affinity_key:
                    target = self._affinity.sticky_task_queue(key, dispatch.affinity_key)
            if target:
                config = partition.queue_config
                if await self._sticky.offer(key, config, request, task, direct, target=target):
                    observability.task_added(key.name, sync_matched=True)
                    return matching_service_pb2.AddBlockTaskResponse(sync_matched=True)
                task.dispatch.sticky_fallback = True
                direct = None  # a plain pointer from here on (see sticky.py)
            matched = await partition.add(
                task, preferred_identity=request.preferred_worker_identity, direct=direct
            )
        if matched and direct is not None:
            # Handed out, maybe by the root on another host: a redelivered add of the same
            # attempt comes here again (history adds an attempt to the same partition).
            self._note_dispatched(attempt)
        if not request.forwarded_from:  # counted once, where history sent it
            observability.task_added(key.name, sync_matched=matched)
        return matching_service_pb2.AddBlockTaskResponse(sync_matched=matched)

    def _was_dispatched(self, attempt: _Attempt) -> bool:
        at = self._dispatched.get(attempt)
        return at is not None and time.monotonic() - at < self.config.direct_dedupe_s

    def _note_dispatched(self, attempt: _Attempt) -> None:
        now = time.monotonic()
        self._dispatched[attempt] = now
        horizon = now - self.config.direct_dedupe_s
        while self._dispatched and (
            len(self._dispatched) > self.config.direct_dedupe_max
            or next(iter(self._dispatched.values())) < horizon
        ):
            self._dispatched.popitem(last=False)

    async def poll_block_task(
        self,
        request: matching_service_pb2.PollBlockTaskRequest,
        *,
        deadline: float | None = None,
    ) -> matching_service_pb2.PollBlockTaskResponse:
        """Long poll. `deadline` is in event loop time; the configured long poll timeout caps
        it. An empty response (no task_token) means no task came in time."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.config.long_poll_timeout
        if deadline is not None:
            end = min(end, deadline)
        worker = request.request
        key = task_queue_key(request.namespace_id, worker.task_queue, request.partition)
        partition: TaskQueuePartition | StickyQueue
        if key.kind == STICKY:
            partition = self._sticky.queue(key)
        else:
            partition = await self.partition(key)
        self.cancel_outstanding_poll(request.poller_id)  # a retried poll replaces its original
        poll = partition.register_poll(
            request.poller_id,
            identity=worker.identity,
            rate_per_second=worker.max_tasks_per_second,
            sticky_task_queue=worker.sticky_task_queue,
            warm_keys=worker.warm_keys,
        )
        self._polls[request.poller_id] = (partition, poll)
        if key.kind != STICKY:
            self._affinity.poll_started(key, worker)
        # At a leaf, a poll takes what is there now and else waits at the root.
        forward = forwards_poll(request)
        try:
            while True:
                task = await partition.take(poll, loop.time() if forward else end)
                if task is None:
                    if not forward or poll.cancelled or partition.closed:
                        break
                    forward = False  # once; if the root is unreachable, wait here
                    forwarded = await self._forwarder.poll(request, key, end)
                    if forwarded is not None:
                        return forwarded
                    continue
                attempt = _backlog_attempt(task.info)
                if self._was_dispatched(attempt):
                    # The same attempt, added again, was handed out directly meanwhile.
                    partition.finish(task, consumed=True)
                    continue
                if task.direct is not None:
                    return self._hand_direct(partition, key, task, attempt, task.direct)
                started = await self._record_started(partition, key, poll, task)
                if isinstance(started, flow_service_pb2.PollBlockTaskResponse):
                    return matching_service_pb2.PollBlockTaskResponse(response=started)
                if (
                    started is _NotStarted.KEPT
                    and task.task_id is not None
                    and not isinstance(partition, StickyQueue)
                ):
                    continue  # the task rests in its partition; the poll takes the next one
                if started is _NotStarted.KEPT:
                    # History asked to come back later; the task is back in the partition.
                    pause = self.config.retry_backoff
                    if end - loop.time() <= pause or await poll.cancelled_within(pause):
                        break
            return matching_service_pb2.PollBlockTaskResponse()
        finally:
            partition.unregister_poll(poll)
            if key.kind != STICKY:
                self._affinity.poll_ended(key, worker.identity)
            if self._polls.get(request.poller_id) == (partition, poll):
                del self._polls[request.poller_id]

    def _gauges(self) -> Iterator[tuple[str, float, dict[str, str]]]:
        """Per task queue (its partitions here summed): backlog, oldest task age, pollers."""
        by_queue: dict[str, list[float]] = {}  # count, age, pollers
        for key, partition in list(self._partitions.items()):
            count, age, pollers = partition.backlog_estimate()
            totals = by_queue.setdefault(key.name, [0.0, 0.0, 0.0])
            totals[0] += count
            totals[1] = max(totals[1], age)
            totals[2] += pollers
        for name, (backlog, oldest, polling) in by_queue.items():
            attrs = {"tideflow.task_queue": name}
            yield "backlog", backlog, attrs
            yield "age", oldest, attrs
            yield "pollers", polling, attrs

    def _hand_direct(
        self,
        partition: TaskQueuePartition | StickyQueue,
        key: TaskQueueKey,
        task: BlockTask,
        attempt: _Attempt,
        direct: flow_service_pb2.PollBlockTaskResponse,
    ) -> matching_service_pb2.PollBlockTaskResponse:
        """A task history started already (direct dispatch): nothing to ask it."""
        self._note_dispatched(attempt)
        partition.finish(task, consumed=True)
        response = matching_service_pb2.PollBlockTaskResponse(response=direct)
        response.response.started_time.FromNanoseconds(int(self._clock() * 1e9))
        observability.direct_dispatched(key.name, response.response)
        return response

    def _keep(self, partition: TaskQueuePartition | StickyQueue, task: BlockTask) -> None:
        """History could not start `task`: back to its partition, where a backlog task rests
        (the retry back-off, doubling up to MAX_REST_S while history keeps failing it)."""
        if isinstance(partition, TaskQueuePartition) and task.task_id is not None:
            rest = min(self.config.retry_backoff * 2**task.setbacks, MAX_REST_S)
            task.setbacks += 1
            partition.finish(task, consumed=False, rest_s=rest)
        else:
            partition.finish(task, consumed=False)

    async def _record_started(
        self,
        partition: TaskQueuePartition | StickyQueue,
        key: TaskQueueKey,
        poll: Poll,
        task: BlockTask,
    ) -> flow_service_pb2.PollBlockTaskResponse | _NotStarted:
        info = task.info
        request = history_service_pb2.RecordBlockStartedRequest(
            namespace_id=info.namespace_id,
            run=common_pb2.RunRef(run_id=info.run_id, execution_id=info.execution_id),
            scheduled_event_id=info.scheduled_event_id,
            attempt=info.attempt,
            request_id=poll.poller_id,
            identity=poll.identity,
            task_queue=common_pb2.TaskQueue(
                name=key.name, kind=common_pb2.TaskQueueKind.ValueType(key.kind)
            ),
            worker_sticky_task_queue=poll.sticky_task_queue,
            concurrency_limited=task.slot_reserved,
        )
        fields = {
            "run_id": info.run_id,
            "execution_id": info.execution_id,
            "scheduled_event_id": info.scheduled_event_id,
            "attempt": info.attempt,
        }
        try:
            started = await self._history.record_block_started(request)
        except asyncio.CancelledError:
            partition.finish(task, consumed=False)
            raise
        except _STALE as e:
            log.debug("stale block task dropped", reason=e.reason, **fields)
            partition.finish(task, consumed=True)
            return _NotStarted.DROPPED
        except _TRY_LATER as e:
            log.info("block task kept, history busy", error=e.message, **fields)
            self._keep(partition, task)
            return _NotStarted.KEPT
        except Exception as e:
            # Not an answer about the task (a bug, a failure of some other layer): only
            # history's "stale" may consume a task, since history keeps the block scheduled
            # and waits for it. Kept, it is tried again after the back-off, like "not now".
            log.warning("RecordBlockStarted failed, block task kept", error=repr(e), **fields)
            self._keep(partition, task)
            return _NotStarted.KEPT
        try:
            if isinstance(partition, TaskQueuePartition):  # a sticky queue holds no slots
                await partition.confirm_slot(task)
        except asyncio.CancelledError:
            partition.finish(task, consumed=True)
            raise
        except ServiceError as e:
            # Handed out, the task would run on a slot a new owner of the partition may not
            # know of. Not handed out, its started attempt times out in history, which then
            # releases the slot (held here meanwhile).
            log.warning(
                "concurrency slot not written, block task dropped", error=e.message, **fields
            )
            partition.finish(task, consumed=True)
            return _NotStarted.DROPPED
        partition.finish(task, consumed=True)
        observability.task_dispatched(key.name, started, info.block_id)
        return block_task_response(
            namespace_id=info.namespace_id,
            run=common_pb2.RunRef(run_id=info.run_id, execution_id=info.execution_id),
            scheduled_event_id=info.scheduled_event_id,
            started=started,
            attempt=info.attempt,
            block_id=info.block_id,
        )

    async def describe_task_queue(
        self, request: matching_service_pb2.DescribeTaskQueueRequest
    ) -> matching_service_pb2.DescribeTaskQueueResponse:
        key = task_queue_key(request.namespace_id, request.task_queue, request.partition)
        if key.kind == STICKY:
            return self._sticky.queue(key).describe()
        partition = await self.partition(key)
        described = await partition.describe()
        self._sticky.fill_status(key, described.status)
        return described

    async def update_task_queue_config(
        self, request: matching_service_pb2.UpdateTaskQueueConfigRequest
    ) -> matching_service_pb2.UpdateTaskQueueConfigResponse:
        """At the root partition's owner: persist the merged config, enforce it, and tell the
        other partitions (every one that adds or polls may still use)."""
        root = await self.partition(task_queue_key(request.namespace_id, request.task_queue, 0))
        info, previous = await root.update_config(request.config, request.update_mask)
        log.info(
            "task queue config changed",
            key=root.key,
            version=info.config_version,
            identity=request.identity,
        )
        await push(
            root,
            request,
            partitions=max(previous, info.read_partitions),
            loaded=self._loaded,
            peers=self._peers,
        )
        return matching_service_pb2.UpdateTaskQueueConfigResponse(
            config=info.config, config_version=info.config_version
        )

    def apply_task_queue_config(
        self, request: matching_service_pb2.ApplyTaskQueueConfigRequest
    ) -> None:
        """A partition not loaded here has nothing to apply: it reads the config as it loads."""
        key = task_queue_key(request.namespace_id, request.task_queue, request.partition)
        partition = self._loaded(key)
        if partition is not None:
            partition.apply_config(request.config, request.config_version)

    def _loaded(self, key: TaskQueueKey) -> TaskQueuePartition | None:
        partition = self._partitions.get(key)
        return partition if partition is not None and not partition.closed else None

    async def release_concurrency_slot(
        self, request: matching_service_pb2.ReleaseConcurrencySlotRequest
    ) -> matching_service_pb2.ReleaseConcurrencySlotResponse:
        """Free a slot of the queue; the root partition keeps them. Idempotent."""
        key = task_queue_key(request.namespace_id, request.task_queue, concurrency.ROOT_PARTITION)
        partition = await self.partition(key)
        await partition.release_slot(request.slot)
        return matching_service_pb2.ReleaseConcurrencySlotResponse()

    def cancel_outstanding_poll(self, poller_id: str) -> bool:
        """End the poll `poller_id` with an empty response; False if there is none."""
        entry = self._polls.get(poller_id)
        if entry is None:
            return False
        partition, poll = entry
        partition.cancel_poll(poll)
        return True
