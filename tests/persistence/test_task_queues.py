"""Task queues and their backlog: leased by range_id, read in order after the ack level,
deleted below it."""

from __future__ import annotations

import pytest

from tideflow_server.persistence import AlreadyExists, ConditionFailed, NotFound
from tideflow_server.persistence.records import BacklogTaskRow, TaskQueueKey, TaskQueueRow
from tideflow_server.persistence.sql import SqlPersistence

QUEUE = TaskQueueKey(namespace_id="ns-1", name="gpu-ocr", kind=1, partition=0)


async def _leased(persistence: SqlPersistence) -> TaskQueueRow:
    row = TaskQueueRow(key=QUEUE, range_id=1, data=b"ack 0")
    await persistence.tasks.create_task_queue(row)
    return row


async def test_task_queue_lease_is_conditional(persistence: SqlPersistence) -> None:
    with pytest.raises(NotFound):
        await persistence.tasks.get_task_queue(QUEUE)
    row = await _leased(persistence)
    with pytest.raises(AlreadyExists):
        await persistence.tasks.create_task_queue(row)
    taken = TaskQueueRow(key=QUEUE, range_id=2, data=b"host b")
    await persistence.tasks.update_task_queue(taken, previous_range_id=1)
    with pytest.raises(ConditionFailed):
        await persistence.tasks.update_task_queue(
            TaskQueueRow(key=QUEUE, range_id=2, data=b"host a"), previous_range_id=1
        )
    assert await persistence.tasks.get_task_queue(QUEUE) == taken


async def test_backlog_reads_in_order_after_the_ack_level(persistence: SqlPersistence) -> None:
    row = await _leased(persistence)
    tasks = [
        BacklogTaskRow(task_id=i, expiry_ms=None, data=f"task {i}".encode()) for i in range(1, 9)
    ]
    await persistence.tasks.create_backlog_tasks(QUEUE, range_id=row.range_id, tasks=tasks[4:])
    await persistence.tasks.create_backlog_tasks(QUEUE, range_id=row.range_id, tasks=tasks[:4])
    got = await persistence.tasks.get_backlog_tasks(
        QUEUE, after_task_id=2, max_task_id=100, limit=3
    )
    assert got == tasks[2:5]
    got = await persistence.tasks.get_backlog_tasks(QUEUE, after_task_id=5, max_task_id=7, limit=9)
    assert got == tasks[5:7]
    other = TaskQueueKey(namespace_id="ns-1", name="gpu-ocr", kind=1, partition=1)
    assert (
        await persistence.tasks.get_backlog_tasks(other, after_task_id=0, max_task_id=99, limit=9)
        == []
    )


async def test_backlog_deleted_below_the_ack_level(persistence: SqlPersistence) -> None:
    row = await _leased(persistence)
    tasks = [BacklogTaskRow(task_id=i, expiry_ms=60_000 * i, data=b"") for i in range(1, 11)]
    await persistence.tasks.create_backlog_tasks(QUEUE, range_id=row.range_id, tasks=tasks)
    assert await persistence.tasks.complete_backlog_tasks(QUEUE, max_task_id=6) == 6
    assert await persistence.tasks.count_backlog_tasks(QUEUE) == 4
    left = await persistence.tasks.get_backlog_tasks(
        QUEUE, after_task_id=0, max_task_id=99, limit=99
    )
    assert [t.task_id for t in left] == [7, 8, 9, 10]
    assert left[0].expiry_ms == 420_000


async def test_backlog_write_is_fenced_by_the_queue_lease(persistence: SqlPersistence) -> None:
    row = await _leased(persistence)
    await persistence.tasks.update_task_queue(
        TaskQueueRow(key=QUEUE, range_id=2, data=b""), previous_range_id=row.range_id
    )
    with pytest.raises(ConditionFailed):
        await persistence.tasks.create_backlog_tasks(
            QUEUE,
            range_id=row.range_id,
            tasks=[BacklogTaskRow(task_id=1, expiry_ms=None, data=b"")],
        )
    assert await persistence.tasks.count_backlog_tasks(QUEUE) == 0
