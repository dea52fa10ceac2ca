"""Sticky queues: `affinity: run` sends a run's next block first to the worker that ran the
previous one.

Each worker process polls a queue of its own (kind STICKY, one partition, any name unique to
the process) besides the normal queue, and names it on its polls and completions; history
records it per run and task queue and puts it in the next block's TaskDispatch. Here, in
order:
1. The normal partition that receives such a task offers it to the sticky queue: in-process
   when the worker polls it on this host, else as an AddBlockTask of kind STICKY to the host
   that owns it (`forwarded_from` set). The offer waits up to the sticky timeout (the block's
   `sticky_schedule_to_start`, else the queue's, else the default) for the worker's sticky
   poll, which starts the task like any poll (RecordBlockStarted).
2. Taken: the add is answered (a sticky hit). Not taken (timeout, a sticky queue whose worker
   is gone, history busy, the owner unreachable): the normal partition dispatches the task
   as usual, marked `sticky_fallback` (a fallback). The add is answered only then, so the
   task is never only in memory: history's outbox holds it until it is taken or durable.
3. A sticky queue has no backlog. Its worker is gone when no poll of it is outstanding and
   none has been for `sticky_poller_gone_after`; an offer to it is answered "not taken" at
   once, so after a worker's death its runs wait at most the sticky timeout.

A direct task (started by history already) goes as it is only to a sticky queue on this host,
where the outcome is known exactly. Forwarded, and after any fallback, it travels as a plain
pointer: the poll that gets it asks RecordBlockStarted, so a worker never gets an attempt that
another worker got too (an offer whose answer was lost may still have been taken).

A task with an `affinity_key` (and no sticky queue of its run) takes the same path to the
sticky queue of its key's owner (affinity.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from tideflow.api.v1 import common_pb2, flow_service_pb2, task_queue_pb2
from tideflow_server import queue_config
from tideflow_server.internal.v1 import matching_service_pb2, records_pb2
from tideflow_server.matching._config import MatchingConfig
from tideflow_server.matching.partition import BlockTask, Poll
from tideflow_server.persistence.records import TaskQueueKey
from tideflow_server.rpc.errors import ResourceExhausted, ServiceError

if TYPE_CHECKING:
    from tideflow_server.rpc.clients import MatchingClient

log = structlog.get_logger(__name__)

STICKY = common_pb2.TASK_QUEUE_KIND_STICKY
_FORWARD_MARGIN_S = 1.0
"""How much longer than the sticky timeout a forwarded offer may take (the round trip)."""


def sticky_key(namespace_id: str, name: str) -> TaskQueueKey:
    return TaskQueueKey(namespace_id, name, STICKY, 0)


def offer_timeout_s(
    dispatch: records_pb2.TaskDispatch, config: task_queue_pb2.TaskQueueConfig
) -> float:
    """The block's sticky wait, else the queue's, else the default."""
    block_s = dispatch.sticky_schedule_to_start.ToNanoseconds() / 1e9
    return queue_config.sticky_schedule_to_start_s(config, block_s)


class StickyQueue:
    """One worker's sticky queue on this host. It serves the engine's poll loop like a
    partition does (register_poll, take, finish, ...), but holds only offers in memory, each
    waited on by the add that made it."""

    def __init__(
        self,
        key: TaskQueueKey,
        *,
        host_id: str,
        config: MatchingConfig,
        clock: Callable[[], float],
    ) -> None:
        self.key = key
        self.host_id = host_id
        self._config = config
        self._clock = clock
        self._polls: dict[str, Poll] = {}
        self._waiting: dict[str, Poll] = {}  # insertion order = arrival order
        self._offers: deque[BlockTask] = deque()
        self._polls_changed = asyncio.Event()
        self._last_poll = float("-inf")  # wall time a poll of it was last outstanding
        self._identity = ""
        self._rate = 0.0
        self.closed = False  # never unloaded while in use; the engine forgets idle ones

    # -- the worker's side ---------------------------------------------------------------

    def gone(self) -> bool:
        """No poll outstanding, and none for a while: the worker stopped polling."""
        idle = self._clock() - self._last_poll
        return not self._polls and idle > self._config.sticky_poller_gone_after

    def idle(self) -> bool:
        """Nothing here any more; forgettable once its worker is long gone."""
        idle = self._clock() - self._last_poll
        return not self._polls and not self._offers and idle > self._config.poller_expiry

    def register_poll(
        self,
        poller_id: str,
        *,
        identity: str,
        rate_per_second: float,
        sticky_task_queue: str = "",
        warm_keys: Sequence[str] = (),
    ) -> Poll:
        previous = self._polls.pop(poller_id, None)
        if previous is not None:
            self.cancel_poll(previous)
        if len(self._polls) >= self._config.max_outstanding_polls:
            raise ResourceExhausted(
                f"sticky queue has {len(self._polls)} outstanding polls, the limit",
                reason="TOO_MANY_OUTSTANDING_POLLS",
            )
        # RecordBlockStarted records the queue the task came through as the worker's own.
        poll = Poll(poller_id, identity, rate_per_second, sticky_task_queue or self.key.name)
        self._polls[poller_id] = poll
        self._last_poll = self._clock()
        self._identity, self._rate = identity, rate_per_second
        return poll

    def unregister_poll(self, poll: Poll) -> None:
        if self._polls.get(poll.poller_id) is poll:
            del self._polls[poll.poller_id]
        self._waiting.pop(poll.poller_id, None)
        self._last_poll = self._clock()

    def cancel_poll(self, poll: Poll) -> None:
        self._waiting.pop(poll.poller_id, None)
        poll.cancel()

    async def take(self, poll: Poll, deadline: float) -> BlockTask | None:
        """The oldest offer still waiting, or the next to come before `deadline` (loop
        time); None when the poll is cancelled or the deadline passes."""
        if poll.cancelled:
            return None
        while self._offers:
            task = self._offers.popleft()
            if task.sync_outcome is not None and not task.sync_outcome.done():
                task.held = False
                return task
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        waiter: asyncio.Future[BlockTask | None] = loop.create_future()
        poll.waiter = waiter
        self._waiting[poll.poller_id] = poll
        self._notify_polls()
        try:
            await asyncio.wait((waiter,), timeout=remaining)
        except asyncio.CancelledError:
            # Handed an offer in the same instant the caller went away: not taken.
            if waiter.done() and (handed := waiter.result()) is not None:
                self.finish(handed, consumed=False)
            raise
        finally:
            poll.waiter = None
            if self._waiting.pop(poll.poller_id, None) is not None:
                self._notify_polls()
            self._last_poll = self._clock()
        if not waiter.done():
            waiter.cancel()
            return None
        return waiter.result()

    def _notify_polls(self) -> None:
        changed, self._polls_changed = self._polls_changed, asyncio.Event()
        changed.set()

    async def wait_for_polls(self, *, waiting: int) -> None:
        """Until exactly `waiting` polls wait for an offer (for tests and tools)."""
        while len(self._waiting) != waiting:
            await self._polls_changed.wait()

    def finish(self, task: BlockTask, *, consumed: bool) -> None:
        """Started (or stale): the offer is taken. Otherwise it is not, and the normal
        partition dispatches it."""
        if task.sync_outcome is not None and not task.sync_outcome.done():
            task.sync_outcome.set_result(consumed)

    # -- the normal partition's side -----------------------------------------------------

    async def offer(
        self,
        info: records_pb2.BacklogTask,
        *,
        direct: flow_service_pb2.PollBlockTaskResponse | None,
        timeout_s: float,
    ) -> bool:
        """True once the worker's sticky poll took the task; False when it did not within
        `timeout_s`, or the worker is gone."""
        if self.gone():
            return False
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        task = BlockTask(info, sync_outcome=outcome, direct=direct)
        poll = next(
            (p for p in self._waiting.values() if p.waiter is not None and not p.waiter.done()),
            None,
        )
        if poll is not None:
            assert poll.waiter is not None
            del self._waiting[poll.poller_id]
            poll.waiter.set_result(task)
            self._notify_polls()
            return await outcome
        task.held = True
        self._offers.append(task)
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(outcome)
        except TimeoutError:
            if task.held:
                return False  # no poll came
        finally:
            if task.held:  # timed out, or the add was cancelled
                task.held = False
                with contextlib.suppress(ValueError):
                    self._offers.remove(task)
        return await outcome  # a poll took it just now: its start decides

    # -- describe ------------------------------------------------------------------------

    def describe(self) -> matching_service_pb2.DescribeTaskQueueResponse:
        pollers = []
        if self._identity:
            poller = task_queue_pb2.PollerInfo(
                identity=self._identity,
                rate_per_second=self._rate,
                sticky_task_queue=self.key.name,
            )
            seen = self._clock() if self._polls else self._last_poll
            poller.last_access_time.FromNanoseconds(int(seen * 1e9))
            pollers.append(poller)
        status = task_queue_pb2.TaskQueuePartitionStatus(
            partition=0, owner_host=self.host_id, backlog_count_hint=len(self._offers)
        )
        return matching_service_pb2.DescribeTaskQueueResponse(pollers=pollers, status=status)


@dataclass(slots=True)
class _Counts:
    hits: int = 0
    fallbacks: int = 0


class StickyRouter:
    """The sticky queues this host serves, and the offers its normal partitions make."""

    def __init__(
        self,
        *,
        host_id: str,
        config: MatchingConfig,
        clock: Callable[[], float],
        peers: MatchingClient | None,
    ) -> None:
        self._host_id = host_id
        self._config = config
        self._clock = clock
        self._peers = peers
        self._queues: dict[TaskQueueKey, StickyQueue] = {}
        self._counts: dict[TaskQueueKey, _Counts] = {}
        self._last_sweep = clock()

    def queue(self, key: TaskQueueKey) -> StickyQueue:
        """The sticky queue `key` on this host, made on first use."""
        queue = self._queues.get(key)
        if queue is None:
            self._sweep()
            queue = self._queues[key] = StickyQueue(
                key, host_id=self._host_id, config=self._config, clock=self._clock
            )
        return queue

    def _sweep(self) -> None:
        """Forget the queues of workers long gone (now and then, not on every call)."""
        now = self._clock()
        if now - self._last_sweep < self._config.poller_expiry:
            return
        self._last_sweep = now
        for key in [k for k, q in self._queues.items() if q.idle()]:
            del self._queues[key]

    async def offer_here(self, request: matching_service_pb2.AddBlockTaskRequest) -> bool:
        """An offer forwarded by a normal partition on another host (kind STICKY)."""
        key = sticky_key(request.namespace_id, request.task_queue.name)
        timeout_s = request.dispatch.sticky_schedule_to_start.ToNanoseconds() / 1e9
        return await self.queue(key).offer(_pointer(request), direct=None, timeout_s=timeout_s)

    async def offer(
        self,
        partition_key: TaskQueueKey,
        partition_config: task_queue_pb2.TaskQueueConfig,
        request: matching_service_pb2.AddBlockTaskRequest,
        info: records_pb2.BacklogTask,
        direct: flow_service_pb2.PollBlockTaskResponse | None,
        *,
        target: str,
    ) -> bool:
        """Offer a task of the normal partition `partition_key` to the sticky queue `target`
        (its run's, or its affinity key's owner's); counts the hit or the fallback."""
        key = sticky_key(request.namespace_id, target)
        timeout_s = offer_timeout_s(request.dispatch, partition_config)
        local = self._queues.get(key)
        if (local is not None and not local.gone()) or self._peers is None:
            # Its worker polls here (or there is no other host to ask).
            taken = await self.queue(key).offer(info, direct=direct, timeout_s=timeout_s)
        else:
            taken = await self._forward(partition_key, request, key, timeout_s)
        counts = self._counts.setdefault(partition_key, _Counts())
        if taken:
            counts.hits += 1
        else:
            counts.fallbacks += 1
        return taken

    async def _forward(
        self,
        partition_key: TaskQueueKey,
        request: matching_service_pb2.AddBlockTaskRequest,
        key: TaskQueueKey,
        timeout_s: float,
    ) -> bool:
        assert self._peers is not None
        forwarded = matching_service_pb2.AddBlockTaskRequest()
        forwarded.CopyFrom(request)
        forwarded.ClearField("direct_task")  # see the module's docstring
        forwarded.task_queue.CopyFrom(common_pb2.TaskQueue(name=key.name, kind=STICKY))
        forwarded.partition = 0
        forwarded.forwarded_from = f"{self._host_id}/{partition_key.name}/{partition_key.partition}"
        forwarded.dispatch.sticky_schedule_to_start.FromNanoseconds(int(timeout_s * 1e9))
        budget = timeout_s + _FORWARD_MARGIN_S
        try:
            async with asyncio.timeout(budget):
                answer = await self._peers.add_block_task(forwarded, timeout_s=budget)
        except (ServiceError, TimeoutError) as e:
            # Not taken as far as we know; if it was, the fallback's start is refused.
            log.info("sticky offer not answered", sticky_task_queue=key.name, error=repr(e))
            return False
        return answer.sync_matched

    def fill_status(
        self, partition_key: TaskQueueKey, status: task_queue_pb2.TaskQueuePartitionStatus
    ) -> None:
        counts = self._counts.get(partition_key)
        if counts is not None:
            status.sticky_hits, status.sticky_fallbacks = counts.hits, counts.fallbacks


def _pointer(request: matching_service_pb2.AddBlockTaskRequest) -> records_pb2.BacklogTask:
    """The task as a sticky queue hands it to its poll (never persisted)."""
    return records_pb2.BacklogTask(
        namespace_id=request.namespace_id,
        run_id=request.run.run_id,
        execution_id=request.run.execution_id,
        scheduled_event_id=request.scheduled_event_id,
        attempt=request.attempt,
        block_id=request.block_id,
        priority=request.priority,
        dispatch=request.dispatch,
    )
