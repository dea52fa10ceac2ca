"""The outbox: transfer tasks in task_id order, timer tasks in fire-time order."""

from __future__ import annotations

import random

from tests.persistence.builders import acquire, new_execution
from tideflow_server.persistence.records import TimerTaskRow, TransferTaskRow
from tideflow_server.persistence.sql import SqlPersistence


async def test_transfer_tasks_read_in_order_and_completed(persistence: SqlPersistence) -> None:
    r = await acquire(persistence)
    base = r << 20
    tasks = [TransferTaskRow(task_id=base + i, data=f"t{i}".encode()) for i in range(1, 11)]
    shuffled = random.Random(7).sample(tasks, len(tasks))
    await persistence.executions.create_execution(
        new_execution("outbox-1", range_id=r, transfer=shuffled[:5])
    )
    await persistence.executions.create_execution(
        new_execution("outbox-2", range_id=r, transfer=shuffled[5:])
    )
    ex = persistence.executions
    assert (
        await ex.get_transfer_tasks(1, min_task_id=0, max_task_id=base + 99, limit=4) == (tasks[:4])
    )
    assert (
        await ex.get_transfer_tasks(1, min_task_id=base + 4, max_task_id=base + 8, limit=9)
        == (tasks[4:8])
    )
    await ex.complete_transfer_task(1, base + 9)
    await ex.range_complete_transfer_tasks(1, max_task_id=base + 5)
    remaining = await ex.get_transfer_tasks(1, min_task_id=0, max_task_id=base + 99, limit=99)
    assert [t.task_id - base for t in remaining] == [6, 7, 8, 10]
    # Shards are separate outboxes.
    assert await ex.get_transfer_tasks(2, min_task_id=0, max_task_id=base + 99, limit=99) == []


async def test_timer_tasks_come_back_in_fire_time_order(persistence: SqlPersistence) -> None:
    r = await acquire(persistence)
    base = r << 20
    rng = random.Random(11)
    timers = [
        TimerTaskRow(
            fire_time_ms=rng.choice([1_000, 2_000, 3_000, 4_000]),
            task_id=base + i,
            data=f"timer {i}".encode(),
        )
        for i in range(1, 21)
    ]
    await persistence.executions.create_execution(
        new_execution("timers", range_id=r, timers=timers)
    )
    expected = sorted(timers, key=lambda t: (t.fire_time_ms, t.task_id))

    got: list[TimerTaskRow] = []
    cursor = (0, 0)
    while True:
        page = await persistence.executions.get_timer_tasks(
            1, after=cursor, fire_before_ms=10_000, limit=6
        )
        if not page:
            break
        got += page
        cursor = (page[-1].fire_time_ms, page[-1].task_id)
    assert got == expected

    due = await persistence.executions.get_timer_tasks(
        1, after=(0, 0), fire_before_ms=3_000, limit=100
    )
    assert due == [t for t in expected if t.fire_time_ms < 3_000]


async def test_timer_tasks_completed_one_by_one_and_by_range(persistence: SqlPersistence) -> None:
    r = await acquire(persistence)
    base = r << 20
    timers = [TimerTaskRow(fire_time_ms=1_000 * i, task_id=base + i, data=b"") for i in range(1, 6)]
    await persistence.executions.create_execution(
        new_execution("timers-done", range_id=r, timers=timers)
    )
    ex = persistence.executions
    await ex.complete_timer_task(1, fire_time_ms=4_000, task_id=base + 4)
    await ex.range_complete_timer_tasks(1, fire_before_ms=3_000)
    left = await ex.get_timer_tasks(1, after=(0, 0), fire_before_ms=10_000, limit=10)
    assert [t.fire_time_ms for t in left] == [3_000, 5_000]
