"""The order in which a partition hands out the backlog tasks it has read (its buffer).

The rule, in full:
1. **Priority.** A task of a lower level (1..5) always goes before one of a higher level.
   Rows written before `TaskDispatch` existed carry only `BacklogTask.priority`; it is read as
   the level, 0 as 3, clamped to 1..5 (the old "higher first" meaning is not kept).
2. **Weighted fairness within a level**, by stride scheduling over the fairness keys that have
   tasks buffered at that level. Each such key has a *pass*. The next task comes from the key
   with the lowest pass (ties: the key whose next task is first by rule 3), and that key's pass
   grows by `1 / weight` (weights from the queue's `fairness_weights`, 1 for a key absent).
   The level's *virtual time* is the highest pass a key was served at (before growing). A key
   that had no task buffered and gets one starts at the level's virtual time, so a key that was
   idle does not bank credit and a new key does not wait behind the passes busy keys have run
   up. Over a busy stretch each key gets tasks in proportion to its weight.
3. **Within a key**: by task id (backlog order); with `in_flight_first`, by (run start time,
   task id), so blocks of runs that started earlier go before the first blocks of newer runs.
A task handed out but not taken (`push_back`: history could not start it, the poll went away)
gets its place back: its key's pass drops by the stride it was charged.

Only tasks the partition has read can be ordered; the partition reads up to
`matching.fair_window` tasks ahead for this. Nothing here reads a clock.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tideflow_server import queue_config
from tideflow_server.internal.v1 import records_pb2

T = TypeVar("T")

_LEVELS = range(queue_config.MIN_PRIORITY, queue_config.MAX_PRIORITY + 1)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a task stands in the order: its level, key, run start (ns) and task id."""

    priority: int
    fairness_key: str
    run_start_ns: int
    task_id: int


def placement(info: records_pb2.BacklogTask, task_id: int) -> Placement:
    # A row written before TaskDispatch existed has only `priority`.
    level = info.dispatch.priority if info.HasField("dispatch") else info.priority
    level = min(max(queue_config.priority(level), queue_config.MIN_PRIORITY), _LEVELS[-1])
    run_start = info.dispatch.run_start_time
    return Placement(level, info.dispatch.fairness_key, run_start.ToNanoseconds(), task_id)


_Sort = tuple[int, int]


@dataclass(slots=True)
class _Key(Generic[T]):
    pass_: float
    tasks: list[tuple[_Sort, int, T]] = field(default_factory=list)
    entry: tuple[float, _Sort, int, str] | None = None
    """This key's live entry in its level's heap; older entries of the key are stale."""


class _Level(Generic[T]):
    def __init__(self) -> None:
        self.vtime = 0.0
        self.keys: dict[str, _Key[T]] = {}  # only keys with tasks
        self._heap: list[tuple[float, _Sort, int, str]] = []
        self._seq = itertools.count()
        self.size = 0

    def push(self, key: str, sort: _Sort, item: T, *, refund: float = 0.0) -> None:
        state = self.keys.get(key)
        if state is None:
            state = self.keys[key] = _Key(self.vtime)  # (re)activated: no banked credit
        head = state.tasks[0][0] if state.tasks else None
        heapq.heappush(state.tasks, (sort, next(self._seq), item))
        self.size += 1
        if refund or state.tasks[0][0] != head:
            state.pass_ -= refund
            self._reindex(key, state)

    def _reindex(self, key: str, state: _Key[T]) -> None:
        state.entry = (state.pass_, state.tasks[0][0], next(self._seq), key)
        heapq.heappush(self._heap, state.entry)
        if len(self._heap) > 2 * len(self.keys) + 64:
            self._heap = [s.entry for s in self.keys.values() if s.entry is not None]
            heapq.heapify(self._heap)

    def _top(self) -> tuple[str, _Key[T]] | None:
        while self._heap:
            entry = self._heap[0]
            state = self.keys.get(entry[3])
            if state is not None and state.entry is entry:
                return entry[3], state
            heapq.heappop(self._heap)
        return None

    def peek(self) -> T | None:
        top = self._top()
        return None if top is None else top[1].tasks[0][2]

    def pop(self, stride: Callable[[str], float]) -> T | None:
        top = self._top()
        if top is None:
            return None
        key, state = top
        heapq.heappop(self._heap)
        _, _, item = heapq.heappop(state.tasks)
        self.size -= 1
        self.vtime = max(self.vtime, state.pass_)
        state.pass_ += stride(key)
        if state.tasks:
            self._reindex(key, state)
        else:
            state.entry = None
            del self.keys[key]  # idle: forgotten, it comes back at the virtual time
        return item

    def resort(self, sort: Callable[[T], _Sort]) -> None:
        for key, state in self.keys.items():
            state.tasks = [(sort(item), n, item) for _, n, item in state.tasks]
            heapq.heapify(state.tasks)
            self._reindex(key, state)


def _free(key: str) -> float:
    return 0.0


class DispatchOrder(Generic[T]):
    """The buffered tasks of one partition in dispatch order (see the module doc)."""

    def __init__(self) -> None:
        self._levels: dict[int, _Level[T]] = {level: _Level() for level in _LEVELS}
        self._placements: dict[int, Placement] = {}  # by id(item), while buffered
        self._weights: Mapping[str, float] = {}
        self._in_flight_first = False

    def __len__(self) -> int:
        return sum(level.size for level in self._levels.values())

    def __bool__(self) -> bool:
        return any(level.size for level in self._levels.values())

    def configure(self, *, weights: Mapping[str, float], in_flight_first: bool) -> None:
        """Weights apply to strides charged from now on; a change of `in_flight_first`
        re-sorts what is buffered."""
        self._weights = dict(weights)
        if in_flight_first == self._in_flight_first:
            return
        self._in_flight_first = in_flight_first
        for level in self._levels.values():
            level.resort(lambda item: self._sort(self._placements[id(item)]))

    def rank(self, at: Placement) -> tuple[int, int]:
        """How a task outside the buffer (an add held for a poll, see partition.py) compares
        with the buffered ones: by level, then run start with in-flight first. Fairness has no
        say there: a held add waits a moment at most."""
        return (at.priority, at.run_start_ns if self._in_flight_first else 0)

    def _sort(self, at: Placement) -> _Sort:
        return (at.run_start_ns if self._in_flight_first else 0, at.task_id)

    def _stride(self, key: str) -> float:
        return 1.0 / self._weights.get(key, 1.0)

    def push(self, item: T, at: Placement) -> None:
        self._placements[id(item)] = at
        self._levels[at.priority].push(at.fairness_key, self._sort(at), item)

    def push_back(self, item: T, at: Placement) -> None:
        """`item`, handed out by `pop`, was not taken: it gets its place back."""
        self._placements[id(item)] = at
        level = self._levels[at.priority]
        level.push(at.fairness_key, self._sort(at), item, refund=self._stride(at.fairness_key))

    def peek(self) -> T | None:
        for level in self._levels.values():
            if level.size:
                return level.peek()
        return None

    def __iter__(self) -> Iterator[T]:
        """Every buffered task, in no particular order (for describe)."""
        for level in self._levels.values():
            for state in level.keys.values():
                for _, _, item in state.tasks:
                    yield item

    def pop_eligible(self, eligible: Callable[[T], bool]) -> T | None:
        """The first task in order that is `eligible` (its key charged); the ones before it
        stay, uncharged, in their places (a concurrency limit holds their block type)."""
        skipped: list[tuple[T, Placement]] = []
        found: T | None = None
        while (item := self.peek()) is not None:
            if eligible(item):
                found = self.pop()
                break
            at = self._placements[id(item)]
            self.pop(charge=False)
            skipped.append((item, at))
        for item, at in skipped:
            self.push(item, at)
        return found

    def pop(self, *, charge: bool = True) -> T | None:
        """The next task, its key charged one stride; `charge=False` removes it uncharged
        (dropped unread, e.g. expired)."""
        for level in self._levels.values():
            if not level.size:
                continue
            item = level.pop(self._stride if charge else _free)
            if item is not None:
                del self._placements[id(item)]
            return item
        return None
