"""Published events (by id for idempotent publishes, and by type and key for finding them) and
the event blocks waiting for them. Events expire by TTL, so nothing deletes them."""

from __future__ import annotations

import time

from tideflow_server.persistence.cassandra._database import CassandraDatabase
from tideflow_server.persistence.records import EventRow, EventWaitRow

_COLUMNS = "namespace_id, event_id, event_type, correlation_key, publish_time_ms, expire_ms, data"
_WAIT_KEY = "namespace_id = ? AND event_type = ? AND correlation_key = ?"
_MIN_TTL_S = 1
_MAX_TTL_S = 630_720_000
"""Cassandra's longest TTL (20 years): an event kept longer is kept that long."""


def _ttl_s(row: EventRow) -> int:
    left_s = (row.expire_ms - int(time.time() * 1000)) // 1000
    return min(_MAX_TTL_S, max(_MIN_TTL_S, left_s))


class CassandraEventStore:
    def __init__(self, db: CassandraDatabase) -> None:
        self._db = db

    async def publish(self, row: EventRow) -> EventRow:
        values = (
            row.namespace_id,
            row.event_id,
            row.event_type,
            row.correlation_key,
            row.publish_time_ms,
            row.expire_ms,
            row.data,
        )
        claimed = await self._db.execute(
            f"INSERT INTO {{ks}}.events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " IF NOT EXISTS USING TTL ?",
            (*values, _ttl_s(row)),
        )
        kept = row
        if not claimed.applied:
            found = await self._db.execute(
                f"SELECT {_COLUMNS} FROM {{ks}}.events WHERE namespace_id = ? AND event_id = ?",
                (row.namespace_id, row.event_id),
                serial_read=True,
            )
            r = found.rows[0]
            kept = EventRow(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]))
        # Written again on a retried publish: a publish that stopped between the two writes
        # is completed by its retry.
        await self._db.execute(
            f"INSERT INTO {{ks}}.events_by_key ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " USING TTL ?",
            (
                kept.namespace_id,
                kept.event_id,
                kept.event_type,
                kept.correlation_key,
                kept.publish_time_ms,
                kept.expire_ms,
                kept.data,
                _ttl_s(kept),
            ),
        )
        return kept

    async def find_events(
        self,
        namespace_id: str,
        event_type: str,
        correlation_key: str,
        *,
        now_ms: int,
        limit: int,
    ) -> list[EventRow]:
        # Expired rows are gone by TTL, to the second: the rest are filtered here. A page
        # larger than `limit` leaves room for those.
        found = await self._db.execute(
            f"SELECT {_COLUMNS} FROM {{ks}}.events_by_key WHERE {_WAIT_KEY} LIMIT ?",
            (namespace_id, event_type, correlation_key, limit + 16),
        )
        rows = [EventRow(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6])) for r in found.rows]
        return [r for r in rows if r.expire_ms > now_ms][:limit]

    async def delete_expired_events(self, *, now_ms: int, limit: int) -> int:
        return 0  # TTL

    async def add_event_wait(self, row: EventWaitRow) -> None:
        await self._db.execute(
            "INSERT INTO {ks}.event_waits (namespace_id, event_type, correlation_key, run_id,"
            " execution_id, block_id) VALUES (?, ?, ?, ?, ?, ?)",
            _wait_key(row),
        )

    async def remove_event_wait(self, row: EventWaitRow) -> None:
        await self._db.execute(
            f"DELETE FROM {{ks}}.event_waits WHERE {_WAIT_KEY} AND run_id = ?"
            " AND execution_id = ? AND block_id = ?",
            _wait_key(row),
        )

    async def event_waits(
        self, namespace_id: str, event_type: str, correlation_key: str, *, limit: int
    ) -> list[EventWaitRow]:
        found = await self._db.execute(
            "SELECT namespace_id, event_type, correlation_key, run_id, execution_id, block_id"
            f" FROM {{ks}}.event_waits WHERE {_WAIT_KEY} LIMIT ?",
            (namespace_id, event_type, correlation_key, limit),
        )
        return [EventWaitRow(*r) for r in found.rows]


def _wait_key(row: EventWaitRow) -> tuple[str, ...]:
    return (
        row.namespace_id,
        row.event_type,
        row.correlation_key,
        row.run_id,
        row.execution_id,
        row.block_id,
    )
