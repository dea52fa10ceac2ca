"""Published events of each namespace and the event blocks waiting for them."""

from __future__ import annotations

from tideflow_server.persistence.records import EventRow, EventWaitRow
from tideflow_server.persistence.sql._database import Row, SqlDatabase

_EVENT_COLUMNS = (
    "namespace_id, event_id, event_type, correlation_key, publish_time_ms, expire_ms, data"
)
_WAIT_COLUMNS = "namespace_id, event_type, correlation_key, run_id, execution_id, block_id"


def _event(r: Row) -> EventRow:
    return EventRow(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]))


class SqlEventStore:
    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    async def publish(self, row: EventRow) -> EventRow:
        async with self._db.write() as conn:
            await conn.execute(
                f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                row.namespace_id,
                row.event_id,
                row.event_type,
                row.correlation_key,
                row.publish_time_ms,
                row.expire_ms,
                row.data,
            )
            kept = await conn.fetchone(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE namespace_id = ? AND event_id = ?",
                row.namespace_id,
                row.event_id,
            )
        assert kept is not None  # inserted or found, in the same transaction
        return _event(kept)

    async def find_events(
        self,
        namespace_id: str,
        event_type: str,
        correlation_key: str,
        *,
        now_ms: int,
        limit: int,
    ) -> list[EventRow]:
        async with self._db.read() as conn:
            rows = await conn.fetchall(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE namespace_id = ?"
                " AND event_type = ? AND correlation_key = ? AND expire_ms > ?"
                " ORDER BY publish_time_ms, event_id LIMIT ?",
                namespace_id,
                event_type,
                correlation_key,
                now_ms,
                limit,
            )
        return [_event(r) for r in rows]

    async def delete_expired_events(self, *, now_ms: int, limit: int) -> int:
        async with self._db.write() as conn:
            return await conn.execute(
                "DELETE FROM events WHERE (namespace_id, event_id) IN (SELECT namespace_id,"
                " event_id FROM events WHERE expire_ms <= ? ORDER BY expire_ms LIMIT ?)",
                now_ms,
                limit,
            )

    async def add_event_wait(self, row: EventWaitRow) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                f"INSERT INTO event_waits ({_WAIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                *_wait_key(row),
            )

    async def remove_event_wait(self, row: EventWaitRow) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                "DELETE FROM event_waits WHERE namespace_id = ? AND event_type = ?"
                " AND correlation_key = ? AND run_id = ? AND execution_id = ? AND block_id = ?",
                *_wait_key(row),
            )

    async def event_waits(
        self, namespace_id: str, event_type: str, correlation_key: str, *, limit: int
    ) -> list[EventWaitRow]:
        async with self._db.read() as conn:
            rows = await conn.fetchall(
                f"SELECT {_WAIT_COLUMNS} FROM event_waits WHERE namespace_id = ?"
                " AND event_type = ? AND correlation_key = ? LIMIT ?",
                namespace_id,
                event_type,
                correlation_key,
                limit,
            )
        return [EventWaitRow(*r) for r in rows]


def _wait_key(row: EventWaitRow) -> tuple[str, ...]:
    return (
        row.namespace_id,
        row.event_type,
        row.correlation_key,
        row.run_id,
        row.execution_id,
        row.block_id,
    )
