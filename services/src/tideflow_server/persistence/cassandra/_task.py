"""Task queue partitions: the lease row and its backlog share one Cassandra partition, so a
backlog write is fenced by the lease's range_id in one conditional batch."""

from __future__ import annotations

from tideflow_server.persistence.cassandra._database import CassandraDatabase
from tideflow_server.persistence.cassandra._driver import Params
from tideflow_server.persistence.errors import AlreadyExists, ConditionFailed, NotFound
from tideflow_server.persistence.records import BacklogTaskRow, TaskQueueKey, TaskQueueRow

_T = "{ks}.task_queues"
_PART = "namespace_id = ? AND name = ? AND kind = ? AND partition_id = ?"
_LEASE = f"{_PART} AND row_kind = 0 AND task_id = 0"
_BACKLOG = f"{_PART} AND row_kind = 1"


def _key_args(key: TaskQueueKey) -> tuple[object, ...]:
    return (key.namespace_id, key.name, key.kind, key.partition)


class CassandraTaskStore:
    def __init__(self, db: CassandraDatabase) -> None:
        self._db = db

    async def create_task_queue(self, row: TaskQueueRow) -> None:
        result = await self._db.execute(
            f"INSERT INTO {_T} (namespace_id, name, kind, partition_id, row_kind, task_id,"
            " range_id, data) VALUES (?, ?, ?, ?, 0, 0, ?, ?) IF NOT EXISTS",
            (*_key_args(row.key), row.range_id, row.data),
        )
        if not result.applied:
            raise AlreadyExists(f"task queue {row.key.name!r} partition {row.key.partition}")

    async def get_task_queue(self, key: TaskQueueKey) -> TaskQueueRow:
        found = await self._db.execute(
            f"SELECT range_id, data FROM {_T} WHERE {_LEASE}", _key_args(key)
        )
        if not found.rows or found.rows[0][0] is None:
            raise NotFound(f"task queue {key.name!r} partition {key.partition} not found")
        return TaskQueueRow(key=key, range_id=found.rows[0][0], data=bytes(found.rows[0][1]))

    async def update_task_queue(self, row: TaskQueueRow, *, previous_range_id: int) -> None:
        result = await self._db.execute(
            f"UPDATE {_T} SET range_id = ?, data = ? WHERE {_LEASE} IF range_id = ?",
            (row.range_id, row.data, *_key_args(row.key), previous_range_id),
        )
        if not result.applied:
            raise ConditionFailed(
                f"task queue {row.key.name!r} partition {row.key.partition}: range_id is no "
                f"longer {previous_range_id}"
            )

    async def delete_task_queue(self, key: TaskQueueKey, *, range_id: int) -> None:
        result = await self._db.execute(
            f"DELETE FROM {_T} WHERE {_LEASE} IF range_id = ?", (*_key_args(key), range_id)
        )
        if not result.applied:
            raise ConditionFailed(f"task queue {key.name!r}: range_id is no longer {range_id}")

    async def create_backlog_tasks(
        self, key: TaskQueueKey, *, range_id: int, tasks: list[BacklogTaskRow]
    ) -> None:
        statements: list[tuple[str, Params]] = [
            (
                f"UPDATE {_T} SET range_id = ? WHERE {_LEASE} IF range_id = ?",
                (range_id, *_key_args(key), range_id),
            )
        ]
        insert = (
            f"INSERT INTO {_T} (namespace_id, name, kind, partition_id, row_kind, task_id,"
            " expiry_ms, data) VALUES (?, ?, ?, ?, 1, ?, ?, ?)"
        )
        statements += [(insert, (*_key_args(key), t.task_id, t.expiry_ms, t.data)) for t in tasks]
        result = await self._db.batch(statements)
        if not result.applied:
            actual = result.dicts()[0].get("range_id") if result.rows else None
            raise ConditionFailed(
                f"task queue {key.name!r} partition {key.partition}: leased at range_id "
                f"{actual}, not {range_id}"
            )

    async def get_backlog_tasks(
        self, key: TaskQueueKey, *, after_task_id: int, max_task_id: int, limit: int
    ) -> list[BacklogTaskRow]:
        found = await self._db.execute(
            f"SELECT task_id, expiry_ms, data FROM {_T} WHERE {_BACKLOG}"
            " AND task_id > ? AND task_id <= ? LIMIT ?",
            (*_key_args(key), after_task_id, max_task_id, limit),
        )
        return [BacklogTaskRow(task_id=r[0], expiry_ms=r[1], data=bytes(r[2])) for r in found.rows]

    async def complete_backlog_tasks(self, key: TaskQueueKey, *, max_task_id: int) -> int:
        found = await self._db.execute(
            f"SELECT COUNT(*) FROM {_T} WHERE {_BACKLOG} AND task_id <= ?",
            (*_key_args(key), max_task_id),
        )
        await self._db.execute(
            f"DELETE FROM {_T} WHERE {_BACKLOG} AND task_id <= ?", (*_key_args(key), max_task_id)
        )
        return int(found.rows[0][0]) if found.rows else 0

    async def count_backlog_tasks(self, key: TaskQueueKey) -> int:
        found = await self._db.execute(
            f"SELECT COUNT(*) FROM {_T} WHERE {_BACKLOG}", _key_args(key)
        )
        return int(found.rows[0][0]) if found.rows else 0
