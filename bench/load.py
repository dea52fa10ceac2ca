"""Load shapes over any "run one to completion" coroutine: sequential, closed loop, open loop.

Every shape has the same timeline on the event loop's monotonic clock:

    |-- warm-up --|======== window ========|-- drain --|-- quiesce --|
                  ^ edges: probes read CPU and database counters

- A run *counts* when its start was due inside the window (open loop) or issued inside it
  (closed loop); only counted runs give latencies, failures and schedule-to-start samples.
- During the drain the load goes on unchanged, uncounted, until every counted run has closed
  (at most `drain_s`), so the last counted runs see the same load as the first.
- Then no new run starts and the ones in flight are awaited (at most `quiesce_s`), so the next
  window starts on an idle system.
- `completions` is every run (counted or not) that completed inside the window: the rate the
  system sustained between the two probe readings, which falls below the counted runs' rate
  when it falls behind an open loop and the counted runs complete during the drain.

Closed loop: `inflight` lanes each start a run, wait for it to close, start the next.
Open loop: starts are due at t0 + i / rate on the clock, whatever is in flight; a start that
falls due while the driver is busy is issued late, its latency still measured from when it was
due (so a slow driver cannot hide queueing), and the lateness is reported as start lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

logger = logging.getLogger("bench.load")

RunOnce = Callable[[str], Awaitable[bool]]
"""Start run `key`, wait until it closes; True when it completed successfully. Exceptions are
counted as failures."""

Edge = Callable[[], Awaitable[None]]


@dataclass
class Sample:
    key: str
    due: float
    """When the start was due (open loop) or issued (closed loop and sequential)."""
    issued: float
    closed: float | None = None
    ok: bool = False


@dataclass
class Measured:
    """What one window produced, before summarising."""

    mode: str
    inflight: int | None
    target_rate: float | None
    window_s: float
    counted: list[Sample] = field(default_factory=list)
    completions: int = 0
    """Runs of any start time that closed successfully inside the window."""
    window_start: float = 0.0
    """When the window opened, on the event loop's clock."""
    all_samples: list[Sample] = field(default_factory=list)
    """Every run of the shape, counted or not (warm-up and drain too)."""

    def latency_by_second(self) -> list[tuple[int, list[float]]]:
        """The counted runs' latencies grouped by the second of the window their start was
        due in, for every second of the window (a stall shows as a second of high latencies,
        or of none)."""
        if not math.isfinite(self.window_start):
            return []
        seconds: list[list[float]] = [[] for _ in range(max(1, math.ceil(self.window_s)))]
        for s in self.counted:
            if s.ok and s.closed is not None:
                second = min(int(s.due - self.window_start), len(seconds) - 1)
                seconds[max(0, second)].append((s.closed - s.due) * 1000)
        return list(enumerate(seconds))

    @property
    def latencies_ms(self) -> list[float]:
        return [(s.closed - s.due) * 1000 for s in self.counted if s.ok and s.closed is not None]

    @property
    def completed_keys(self) -> set[str]:
        return {s.key for s in self.counted if s.ok}

    @property
    def failed(self) -> int:
        return sum(1 for s in self.counted if s.closed is not None and not s.ok)

    @property
    def unfinished(self) -> int:
        return sum(1 for s in self.counted if s.closed is None)

    @property
    def start_lag_ms(self) -> list[float]:
        return [(s.issued - s.due) * 1000 for s in self.counted]


class _Tracker:
    """Runs in flight, their samples, and whether every counted one has closed."""

    def __init__(self, run_once: RunOnce, prefix: str) -> None:
        self.run_once = run_once
        self.prefix = prefix
        self.numbers = itertools.count()
        self.samples: list[Sample] = []
        self.tasks: set[asyncio.Task[Sample]] = set()
        self.window: tuple[float, float] = (float("inf"), float("inf"))
        self.counted_open = 0
        self.counted_closed = asyncio.Event()

    def counts(self, sample: Sample) -> bool:
        return self.window[0] <= sample.due < self.window[1]

    async def one(self, due: float) -> Sample:
        loop = asyncio.get_running_loop()
        sample = Sample(f"{self.prefix}-{next(self.numbers)}", due, loop.time())
        self.samples.append(sample)
        counted = self.counts(sample)
        if counted:
            self.counted_open += 1
        try:
            sample.ok = bool(await self.run_once(sample.key))
        except Exception as e:  # a failed run is a result, not a crash of the bench
            logger.debug("run %s failed: %r", sample.key, e)
        finally:
            sample.closed = loop.time()
            if counted:
                self.counted_open -= 1
                if self.counted_open == 0 and sample.closed >= self.window[1]:
                    self.counted_closed.set()
        return sample

    def spawn(self, due: float) -> asyncio.Task[Sample]:
        task = asyncio.create_task(self.one(due))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def drain(self, drain_s: float) -> None:
        if self.counted_open == 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.counted_closed.wait(), drain_s)

    async def quiesce(self, quiesce_s: float) -> None:
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=quiesce_s)
        if pending:
            logger.warning(
                "%d runs still open after %.0fs; abandoning them", len(pending), quiesce_s
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def measured(
        self, mode: str, inflight: int | None, rate: float | None, window_s: float
    ) -> Measured:
        start, end = self.window
        return Measured(
            mode=mode,
            inflight=inflight,
            target_rate=rate,
            window_s=window_s,
            counted=[s for s in self.samples if self.counts(s)],
            completions=sum(
                1 for s in self.samples if s.ok and s.closed is not None and start <= s.closed < end
            ),
            window_start=start,
            all_samples=list(self.samples),
        )


async def _at(when: float, edge: Edge) -> None:
    delay = when - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)
    await edge()


async def sequential(run_once: RunOnce, runs: int, *, prefix: str) -> Measured:
    """One run at a time; every run counts."""
    tracker = _Tracker(run_once, prefix)
    tracker.window = (float("-inf"), float("inf"))
    for _ in range(runs):
        await tracker.one(asyncio.get_running_loop().time())
    return tracker.measured("sequential", 1, None, 0.0)


async def closed_loop(
    run_once: RunOnce,
    *,
    inflight: int,
    warmup_s: float,
    window_s: float,
    drain_s: float,
    quiesce_s: float,
    on_window_start: Edge,
    on_window_end: Edge,
    prefix: str,
) -> Measured:
    loop = asyncio.get_running_loop()
    tracker = _Tracker(run_once, prefix)
    start = loop.time() + warmup_s
    tracker.window = (start, start + window_s)
    stopping = False

    async def lane() -> None:
        while not stopping:
            sample = await tracker.spawn(loop.time())
            if not sample.ok:
                await asyncio.sleep(0.01)  # a system that fails at once must not spin a lane

    lanes = [asyncio.create_task(lane()) for _ in range(inflight)]
    try:
        await _at(tracker.window[0], on_window_start)
        await _at(tracker.window[1], on_window_end)
        await tracker.drain(drain_s)
    finally:
        stopping = True
        await tracker.quiesce(quiesce_s)
        for task in lanes:
            task.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
    return tracker.measured("closed", inflight, None, window_s)


async def open_loop(
    run_once: RunOnce,
    *,
    rate: float,
    warmup_s: float,
    window_s: float,
    drain_s: float,
    quiesce_s: float,
    on_window_start: Edge,
    on_window_end: Edge,
    prefix: str,
) -> Measured:
    loop = asyncio.get_running_loop()
    tracker = _Tracker(run_once, prefix)
    t0 = loop.time()
    tracker.window = (t0 + warmup_s, t0 + warmup_s + window_s)
    edges = asyncio.gather(
        _at(tracker.window[0], on_window_start), _at(tracker.window[1], on_window_end)
    )
    drain_until = tracker.window[1] + drain_s
    try:
        for i in itertools.count():
            due = t0 + i / rate
            if due >= tracker.window[1] and (
                tracker.counted_closed.is_set() or tracker.counted_open == 0 or due >= drain_until
            ):
                break
            # Sleeps even when late (0 s), so runs started while catching up make progress.
            await asyncio.sleep(max(0.0, due - loop.time()))
            tracker.spawn(due)
        await edges
    finally:
        if not edges.done():
            edges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await edges
        await tracker.quiesce(quiesce_s)
    return tracker.measured("open", None, rate, window_s)
