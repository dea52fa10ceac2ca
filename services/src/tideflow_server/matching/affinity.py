"""Key affinity: which live worker of a task queue a task with an `affinity_key` goes to first.

Workers are known by their polls: each poll of a queue names the worker (identity), its own
sticky queue and the keys it holds warm. A worker is live while it has a poll outstanding on
this host, or polled within `live_for` seconds. The owner of a key is, in order:
1. a live worker that advertises the key warm (if several do, the one rendezvous hashing
   ranks highest among them), so a worker that loaded a model keeps getting its tasks;
2. else the live worker rendezvous hashing ranks highest for the key, so a worker joining or
   leaving moves only the keys it wins or held.
Only workers with a sticky queue can own keys: the task reaches the owner through it, and
falls back to the whole queue when the owner does not take it in time (see `sticky.py`).

The registry is per matching host and per queue (over all its partitions on the host): every
host sees every worker within a few polls, since a worker's polls spread over the partitions.
`Affinity` keeps one per queue, fed by every poll of a normal queue (forwarded ones too); the
engine asks it for a keyed task's target when the task is added, not when it is read back
from the backlog: a task that fell back (or was written) goes to any poll.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tideflow.api.v1 import flow_service_pb2
from tideflow_server.membership import stable_hash
from tideflow_server.persistence.records import TaskQueueKey


@dataclass(slots=True)
class Worker:
    identity: str
    sticky_task_queue: str
    warm_keys: frozenset[str] = frozenset()
    last_seen: float = 0.0
    """Clock seconds of the last poll's arrival or end."""
    outstanding: int = 0
    """Polls of this worker waiting on this host now."""


def _rank(key: str, worker: Worker) -> tuple[int, str]:
    return stable_hash(key, worker.identity), worker.identity


def owner(key: str, workers: Iterable[Worker]) -> Worker | None:
    """The worker a task with `key` goes to first, among `workers` (the live ones)."""
    live = [w for w in workers if w.sticky_task_queue]
    if not live:
        return None
    warm = [w for w in live if key in w.warm_keys]
    return max(warm or live, key=lambda w: _rank(key, w))


@dataclass(slots=True)
class QueueWorkers:
    """The workers polling one task queue on this host."""

    live_for: float
    """A worker without an outstanding poll counts as live this long after its last one."""
    _workers: dict[str, Worker] = field(default_factory=dict)

    def poll_started(
        self, identity: str, *, sticky_task_queue: str, warm_keys: Iterable[str], now: float
    ) -> None:
        worker = self._workers.get(identity)
        if worker is None:
            worker = self._workers[identity] = Worker(identity, sticky_task_queue)
        worker.sticky_task_queue = sticky_task_queue
        worker.warm_keys = frozenset(warm_keys)
        worker.last_seen = now
        worker.outstanding += 1

    def poll_ended(self, identity: str, *, now: float) -> None:
        worker = self._workers.get(identity)
        if worker is not None:
            worker.outstanding = max(0, worker.outstanding - 1)
            worker.last_seen = now

    def live(self, now: float) -> list[Worker]:
        return [
            w for w in self._workers.values() if w.outstanding or now - w.last_seen <= self.live_for
        ]

    def owner(self, key: str, now: float) -> Worker | None:
        return owner(key, self.live(now))

    def __len__(self) -> int:
        return len(self._workers)

    def forget_gone(self, now: float, *, after: float) -> None:
        """Drop workers not seen for `after` seconds (bounded memory)."""
        for identity in [
            i for i, w in self._workers.items() if not w.outstanding and now - w.last_seen > after
        ]:
            del self._workers[identity]


class Affinity:
    """The workers of each normal task queue polled on this host, by (namespace, queue)."""

    def __init__(self, *, live_for: float, forget_after: float, clock: Callable[[], float]):
        self._live_for = live_for
        self._forget_after = forget_after
        self._clock = clock
        self._queues: dict[tuple[str, str], QueueWorkers] = {}
        self._last_sweep = clock()

    def poll_started(
        self, key: TaskQueueKey, request: flow_service_pb2.PollBlockTaskRequest
    ) -> None:
        now = self._clock()
        self._sweep(now)
        queue = self._queues.get((key.namespace_id, key.name))
        if queue is None:
            queue = self._queues[key.namespace_id, key.name] = QueueWorkers(self._live_for)
        queue.poll_started(
            request.identity,
            sticky_task_queue=request.sticky_task_queue,
            warm_keys=request.warm_keys,
            now=now,
        )

    def poll_ended(self, key: TaskQueueKey, identity: str) -> None:
        queue = self._queues.get((key.namespace_id, key.name))
        if queue is not None:
            queue.poll_ended(identity, now=self._clock())

    def sticky_task_queue(self, key: TaskQueueKey, affinity_key: str) -> str:
        """The sticky queue of `affinity_key`'s owner among the queue's live workers; empty
        when no live worker has one."""
        queue = self._queues.get((key.namespace_id, key.name))
        worker = queue.owner(affinity_key, self._clock()) if queue is not None else None
        return worker.sticky_task_queue if worker is not None else ""

    def _sweep(self, now: float) -> None:
        """Forget workers long gone, now and then (not on every poll)."""
        if now - self._last_sweep < self._forget_after:
            return
        self._last_sweep = now
        for name, queue in list(self._queues.items()):
            queue.forget_gone(now, after=self._forget_after)
            if not queue:
                del self._queues[name]
