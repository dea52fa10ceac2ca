"""Dynamic batching: collect items until `max_batch` of them or until `max_wait_s` has passed
since the first of the batch arrived, then hand the batch over, one batch at a time.

While a batch is being handled (a forward pass), new items queue; the next batch starts with
them, so under load batches fill without waiting and a lone item waits at most `max_wait_s`.
The clock and the sleep are injectable so that tests drive time by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class BatchStats:
    """Batches handed over and the items in them: their ratio is the mean batch size."""

    batches: int = 0
    items: int = 0

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "batches": self.batches,
            "items": self.items,
            "mean_batch_size": round(self.mean_batch_size, 3),
        }


class Batcher(Generic[T]):
    """`put` items; `run()` hands each batch to `handle` and returns once `close()` was called
    and every item put before it has been handled (a closing batcher waits for nothing: what is
    queued goes at once)."""

    def __init__(
        self,
        handle: Callable[[list[T]], Awaitable[None]],
        *,
        max_batch: int,
        max_wait_s: float,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        self._handle = handle
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._sleep = sleep
        self._queue: list[tuple[float, T]] = []
        self._arrived = asyncio.Event()
        self._closed = False
        self.stats = BatchStats()

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def put(self, item: T) -> None:
        if self._closed:
            raise RuntimeError("batcher closed")
        self._queue.append((self._now(), item))
        self._arrived.set()

    def close(self) -> None:
        self._closed = True
        self._arrived.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        while True:
            while not self._queue:
                if self._closed:
                    return
                self._arrived.clear()
                await self._arrived.wait()
            await self._fill()
            batch = [item for _, item in self._queue[: self.max_batch]]
            del self._queue[: self.max_batch]
            self.stats.batches += 1
            self.stats.items += len(batch)
            await self._handle(batch)

    async def _fill(self) -> None:
        """Until the batch is full, the first item has waited `max_wait_s`, or closing."""
        first_arrived = self._queue[0][0]
        while len(self._queue) < self.max_batch and not self._closed:
            remaining = first_arrived + self.max_wait_s - self._now()
            if remaining <= 0:
                return
            self._arrived.clear()
            arrival = asyncio.ensure_future(self._arrived.wait())
            timer = asyncio.ensure_future(self._sleep(remaining))
            try:
                await asyncio.wait((arrival, timer), return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrival.cancel()
                timer.cancel()
