"""The timer queue of a shard: block timeouts, retry backoffs and run timeouts.

Timers that fire within the look-ahead window are held in a heap: those committed by this
host are pushed right after their commit, and the store is scanned ahead of the clock for the
rest (earlier owners', or later ones entering the window). What a due timer does is the
executor the shard gives the queue (tasks/timer.py); it checks the run's current state, so a
stale or repeated timer does nothing. Fired timers are deleted in ranges below the earliest
timer that may still fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import time
from collections.abc import Awaitable, Callable

import structlog

from tideflow_server.history.shard.port import QueueOwner
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.persistence import errors as store

log = structlog.get_logger(__name__)

_COALESCE_MS = 50
"""How late a timer may fire so that it fires with others (timeouts are never early)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class TimerQueue:
    def __init__(
        self, shard: QueueOwner, fire: Callable[[records_pb2.TimerTask], Awaitable[None]]
    ) -> None:
        """`fire` is what a due timer does (tasks/timer.py): the queue runs it until it
        returns, or until the shard is lost."""
        self._shard = shard
        self._fire_timer = fire
        self._heap: list[tuple[int, int]] = []
        self._timers: dict[tuple[int, int], records_pb2.TimerTask] = {}
        self._firing: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._read_level_ms = 0
        self._cursor = (0, 0)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(), name=f"timers-{self._shard.shard_id}"),
            asyncio.create_task(self._cleanup_loop(), name=f"timers-gc-{self._shard.shard_id}"),
        ]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._firing.values()]:
            task.cancel()
        for task in [*self._tasks, *self._firing.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def lag(self, now_ms: int) -> tuple[float, int]:
        """Seconds the oldest due timer (firing, or due and waiting) has waited past its fire
        time, and the timers firing now."""
        due = [key[0] for key in self._firing]
        if self._heap and self._heap[0][0] <= now_ms:
            due.append(self._heap[0][0])
        return (max(0, now_ms - min(due)) / 1000 if due else 0.0), len(self._firing)

    def _push(self, timer: records_pb2.TimerTask) -> None:
        key = (timer.fire_time.ToMilliseconds(), timer.task_id)
        if key in self._timers or key in self._firing:
            return
        self._timers[key] = timer
        heapq.heappush(self._heap, key)

    def submit(self, timers: list[records_pb2.TimerTask]) -> None:
        """Timers just committed: those inside the scanned window go to the heap now; the
        others are found by a later scan."""
        earliest = self._heap[0][0] if self._heap else None
        for timer in timers:
            inside = timer.fire_time.ToMilliseconds() < self._read_level_ms
            log.debug(
                "timer submitted",
                shard_id=self._shard.shard_id,
                inside=inside,
                key=(timer.fire_time.ToMilliseconds(), timer.task_id),
                read_level=self._read_level_ms,
                run_id=timer.run_id,
            )
            if inside:
                self._push(timer)
        if self._heap and (earliest is None or self._heap[0][0] < earliest):
            self._wake.set()

    async def _scan(self, until_ms: int) -> None:
        manager = self._shard.manager
        # Raise the level first: a commit racing with this read either lands in the heap via
        # submit or is read here; the heap ignores the duplicate.
        self._read_level_ms = until_ms
        batch = self._shard.config.transfer_batch
        while True:
            timers = await manager.get_timer_tasks(
                self._shard.shard_id, after=self._cursor, fire_before_ms=until_ms, limit=batch
            )
            for timer in timers:
                self._push(timer)
            if timers:
                last = timers[-1]
                self._cursor = (last.fire_time.ToMilliseconds(), last.task_id)
            if len(timers) < batch:
                return

    async def _loop(self) -> None:
        while True:
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Never die quietly: a dead loop would leave every timer of the shard unfired.
                log.exception("timer loop failed; restarting", shard_id=self._shard.shard_id)
                await asyncio.sleep(1.0)

    async def _run(self) -> None:
        lookahead_ms = int(self._shard.config.timer_lookahead_s * 1000)
        while True:
            now = _now_ms()
            if now + lookahead_ms // 2 >= self._read_level_ms:
                try:
                    await self._scan(now + lookahead_ms)
                except store.PersistenceError:
                    log.warning("timer scan failed", shard_id=self._shard.shard_id)
                    await asyncio.sleep(1.0)
                    continue
            while self._heap and self._heap[0][0] <= now:
                key = heapq.heappop(self._heap)
                timer = self._timers.pop(key)
                log.debug(
                    "timer due",
                    shard_id=self._shard.shard_id,
                    key=key,
                    kind=timer.WhichOneof("task"),
                    run_id=timer.run_id,
                )
                self._firing[key] = asyncio.create_task(self._fire(key, timer))
            next_scan_ms = self._read_level_ms - lookahead_ms // 2
            # Wake a little after the next timer is due, so that the timers due within that
            # moment fire together: one wake-up for many, none of them early.
            next_due_ms = self._heap[0][0] + _COALESCE_MS if self._heap else next_scan_ms
            wake_at = min(next_due_ms, next_scan_ms)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, (wake_at - _now_ms()) / 1000))

    async def _fire(self, key: tuple[int, int], timer: records_pb2.TimerTask) -> None:
        backoff = 0.05
        try:
            while True:
                try:
                    await self._fire_timer(timer)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    if self._shard.lost:
                        return
                    log.info("timer failed, retrying", task_id=timer.task_id, error=str(e))
                    await asyncio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, 5.0)
        finally:
            self._firing.pop(key, None)

    def _deletable_before_ms(self) -> int:
        """Every timer firing before this has fired (or will be re-read if not deleted)."""
        bounds = [self._read_level_ms, _now_ms()]
        if self._heap:
            bounds.append(self._heap[0][0])
        if self._firing:
            bounds.append(min(k[0] for k in self._firing))
        inflight = self._shard.min_inflight_time_ms()
        if inflight is not None:
            bounds.append(inflight)
        return min(bounds)

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self._shard.config.ack_interval_s)
            try:
                await self._shard.manager.persistence.executions.range_complete_timer_tasks(
                    self._shard.shard_id, fire_before_ms=self._deletable_before_ms()
                )
            except store.PersistenceError:
                log.info("timer cleanup failed; will retry", shard_id=self._shard.shard_id)
