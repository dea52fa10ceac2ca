from __future__ import annotations

from tideflow_server.persistence.errors import ConditionFailed, NotFound
from tideflow_server.persistence.records import BacklogTaskRow, TaskQueueKey, TaskQueueRow
from tideflow_server.persistence.sql._database import SqlConn, SqlDatabase

_KEY = "namespace_id = ? AND name = ? AND kind = ? AND partition_id = ?"
_BACKLOG_KEY = "namespace_id = ? AND task_queue = ? AND kind = ? AND partition_id = ?"


def _key_args(key: TaskQueueKey) -> tuple[object, ...]:
    return (key.namespace_id, key.name, key.kind, key.partition)


class SqlTaskStore:
    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    async def create_task_queue(self, row: TaskQueueRow) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                "INSERT INTO task_queues (namespace_id, name, kind, partition_id, range_id, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                *_key_args(row.key),
                row.range_id,
                row.data,
            )

    async def get_task_queue(self, key: TaskQueueKey) -> TaskQueueRow:
        async with self._db.read() as conn:
            found = await conn.fetchone(
                f"SELECT range_id, data FROM task_queues WHERE {_KEY}", *_key_args(key)
            )
        if found is None:
            raise NotFound(f"task queue {key.name!r} partition {key.partition} not found")
        return TaskQueueRow(key=key, range_id=found[0], data=bytes(found[1]))

    async def update_task_queue(self, row: TaskQueueRow, *, previous_range_id: int) -> None:
        async with self._db.write() as conn:
            changed = await conn.execute(
                f"UPDATE task_queues SET range_id = ?, data = ? WHERE {_KEY} AND range_id = ?",
                row.range_id,
                row.data,
                *_key_args(row.key),
                previous_range_id,
            )
        if changed != 1:
            raise ConditionFailed(
                f"task queue {row.key.name!r} partition {row.key.partition}: range_id is no "
                f"longer {previous_range_id}"
            )

    async def delete_task_queue(self, key: TaskQueueKey, *, range_id: int) -> None:
        async with self._db.write() as conn:
            changed = await conn.execute(
                f"DELETE FROM task_queues WHERE {_KEY} AND range_id = ?", *_key_args(key), range_id
            )
        if changed != 1:
            raise ConditionFailed(f"task queue {key.name!r}: range_id is no longer {range_id}")

    async def create_backlog_tasks(
        self, key: TaskQueueKey, *, range_id: int, tasks: list[BacklogTaskRow]
    ) -> None:
        async with self._db.write() as conn:
            await _check_queue_range(self._db, conn, key, range_id)
            await conn.executemany(
                "INSERT INTO backlog_tasks (namespace_id, task_queue, kind, partition_id,"
                " task_id, expiry_ms, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*_key_args(key), t.task_id, t.expiry_ms, t.data) for t in tasks],
            )

    async def get_backlog_tasks(
        self, key: TaskQueueKey, *, after_task_id: int, max_task_id: int, limit: int
    ) -> list[BacklogTaskRow]:
        async with self._db.read() as conn:
            rows = await conn.fetchall(
                "SELECT task_id, expiry_ms, data FROM backlog_tasks"
                f" WHERE {_BACKLOG_KEY} AND task_id > ? AND task_id <= ?"
                " ORDER BY task_id LIMIT ?",
                *_key_args(key),
                after_task_id,
                max_task_id,
                limit,
            )
        return [BacklogTaskRow(task_id=r[0], expiry_ms=r[1], data=bytes(r[2])) for r in rows]

    async def complete_backlog_tasks(self, key: TaskQueueKey, *, max_task_id: int) -> int:
        async with self._db.write() as conn:
            return await conn.execute(
                f"DELETE FROM backlog_tasks WHERE {_BACKLOG_KEY} AND task_id <= ?",
                *_key_args(key),
                max_task_id,
            )

    async def count_backlog_tasks(self, key: TaskQueueKey) -> int:
        async with self._db.read() as conn:
            found = await conn.fetchone(
                f"SELECT COUNT(*) FROM backlog_tasks WHERE {_BACKLOG_KEY}", *_key_args(key)
            )
        return 0 if found is None else int(found[0])


async def _check_queue_range(
    db: SqlDatabase, conn: SqlConn, key: TaskQueueKey, range_id: int
) -> None:
    found = await conn.fetchone(
        f"SELECT range_id FROM task_queues WHERE {_KEY}{db.for_share}", *_key_args(key)
    )
    if found is None or found[0] != range_id:
        raise ConditionFailed(
            f"task queue {key.name!r} partition {key.partition}: leased at range_id "
            f"{None if found is None else found[0]}, not {range_id}"
        )
