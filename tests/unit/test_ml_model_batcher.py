"""The model worker's batcher: batches close at `max_batch` items, or `max_wait_s` after their
first item arrived, one batch at a time; closing hands over what is queued at once. Time is a
fake clock moved by hand, so nothing here sleeps."""

from __future__ import annotations

import asyncio

import pytest

from workers.ml_model.batcher import Batcher


class FakeTime:
    """A clock and a sleep: a sleep ends when `advance` moves the clock past its end."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self.sleeping = asyncio.Event()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.now + seconds, future))
        self.sleeping.set()
        await future

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for end, future in self.sleepers:
            if end <= self.now and not future.done():
                future.set_result(None)


class Recorder:
    """The batch handler: notes each batch; `gate`, when set, holds the handler until opened."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.handled = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def __call__(self, batch: list[int]) -> None:
        self.batches.append(batch)
        self.handled.set()
        if self.gate is not None:
            await self.gate.wait()


async def _settle() -> None:
    """Let every ready task run until none is (the batcher reacts to what was just done)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_full_batches_go_without_waiting() -> None:
    time = FakeTime()
    handled = Recorder()
    batcher: Batcher[int] = Batcher(
        handled, max_batch=4, max_wait_s=10.0, clock=time.clock, sleep=time.sleep
    )
    for i in range(10):
        batcher.put(i)
    running = asyncio.create_task(batcher.run())
    await _settle()
    # Two full batches at once; the rest waits for more or for its time.
    assert handled.batches == [[0, 1, 2, 3], [4, 5, 6, 7]]
    time.advance(10.0)
    await _settle()
    assert handled.batches[-1] == [8, 9]
    batcher.close()
    await running
    assert (batcher.stats.batches, batcher.stats.items) == (3, 10)
    assert batcher.stats.mean_batch_size == pytest.approx(10 / 3)


async def test_a_partial_batch_waits_max_wait_from_its_first_item() -> None:
    time = FakeTime()
    handled = Recorder()
    batcher: Batcher[int] = Batcher(
        handled, max_batch=8, max_wait_s=0.010, clock=time.clock, sleep=time.sleep
    )
    running = asyncio.create_task(batcher.run())
    batcher.put(1)
    await time.sleeping.wait()
    time.advance(0.006)
    batcher.put(2)  # joins the batch; the deadline stays the first item's
    await _settle()
    time.advance(0.003)
    await _settle()
    assert handled.batches == []  # 9 ms after the first: still waiting
    time.advance(0.001)
    await handled.handled.wait()
    assert handled.batches == [[1, 2]]
    batcher.close()
    await running


async def test_items_arriving_during_a_forward_pass_form_the_next_batch() -> None:
    time = FakeTime()
    handled = Recorder()
    handled.gate = asyncio.Event()
    batcher: Batcher[int] = Batcher(
        handled, max_batch=3, max_wait_s=0.0, clock=time.clock, sleep=time.sleep
    )
    running = asyncio.create_task(batcher.run())
    batcher.put(0)
    await handled.handled.wait()  # max_wait 0: a lone item goes at once
    for i in range(1, 6):
        batcher.put(i)  # while batch [0] is in its forward pass
    handled.gate.set()
    await _settle()
    assert handled.batches == [[0], [1, 2, 3], [4, 5]]
    batcher.close()
    await running


async def test_closing_hands_over_the_queue_at_once_and_stops() -> None:
    time = FakeTime()
    handled = Recorder()
    batcher: Batcher[int] = Batcher(
        handled, max_batch=4, max_wait_s=60.0, clock=time.clock, sleep=time.sleep
    )
    running = asyncio.create_task(batcher.run())
    for i in range(6):
        batcher.put(i)
    await _settle()
    assert handled.batches == [[0, 1, 2, 3]]
    batcher.close()  # no waiting for the 60 s: the drain answers what it has
    await running
    assert handled.batches == [[0, 1, 2, 3], [4, 5]]
    with pytest.raises(RuntimeError):
        batcher.put(7)


def test_bounds() -> None:
    async def handle(batch: list[int]) -> None: ...

    with pytest.raises(ValueError):
        Batcher(handle, max_batch=0, max_wait_s=0.0)
    with pytest.raises(ValueError):
        Batcher(handle, max_batch=1, max_wait_s=-1.0)
