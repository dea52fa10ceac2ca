"""A caller cancelled in the middle of a database call leaves the store as it was: later
reads see later writes."""

from __future__ import annotations

import asyncio

from tideflow_server.persistence.records import BacklogTaskRow, TaskQueueKey, TaskQueueRow
from tideflow_server.persistence.sql import SqlPersistence

KEY = TaskQueueKey("ns-1", "cancel", 1, 0)


async def test_cancelled_reads_leave_no_stale_snapshot(persistence: SqlPersistence) -> None:
    tasks = persistence.tasks
    await tasks.create_task_queue(TaskQueueRow(KEY, 1, b"v0"))
    rows = [BacklogTaskRow(i, None, b"x" * 100) for i in range(1, 50)]
    await tasks.create_backlog_tasks(KEY, range_id=1, tasks=rows)
    stale = []
    for n in range(24):
        read = asyncio.create_task(
            tasks.get_backlog_tasks(KEY, after_task_id=0, max_task_id=10**9, limit=20)
        )
        # Cancel at a different point of the read each time; no event marks "mid-read", so
        # the loop yields a varying number of times (the reason for these sleeps).
        for _ in range(n % 8):
            await asyncio.sleep(0)
        read.cancel()
        await asyncio.gather(read, return_exceptions=True)
        version = f"v{n + 1}".encode()
        await tasks.update_task_queue(TaskQueueRow(KEY, 1, version), previous_range_id=1)
        if (await tasks.get_task_queue(KEY)).data != version:
            stale.append(n)
    assert stale == []
