from __future__ import annotations

from tideflow_server.persistence.records import ExecutionKey, HistoryBatch, Page
from tideflow_server.persistence.sql import _paging
from tideflow_server.persistence.sql._database import SqlDatabase
from tideflow_server.persistence.sql._deletes import GroupedDelete
from tideflow_server.persistence.sql._execution import (
    EXECUTION_KEY,
    execution_key_args,
    insert_history,
)


class SqlHistoryStore:
    def __init__(self, db: SqlDatabase) -> None:
        self._db = db
        self._deletes: GroupedDelete[ExecutionKey] = GroupedDelete(
            db, [f"DELETE FROM history_batches WHERE {EXECUTION_KEY}"], execution_key_args
        )

    async def append_history(self, key: ExecutionKey, batches: list[HistoryBatch]) -> None:
        async with self._db.write() as conn:
            await insert_history(conn, key, batches)

    async def read_history(
        self,
        key: ExecutionKey,
        *,
        min_event_id: int,
        next_event_id: int,
        page_size: int,
        page_token: bytes | None = None,
    ) -> Page[HistoryBatch]:
        expected: int | None = None
        start = min_event_id
        if page_token is not None:
            (start,) = _paging.decode(page_token, int)
            expected = start
        limit = page_size + 1
        async with self._db.read() as conn:
            rows = await conn.fetchall(
                "SELECT first_event_id, txn_id, event_count, data FROM history_batches"
                f" WHERE {EXECUTION_KEY} AND first_event_id >= ? AND first_event_id < ?"
                " ORDER BY first_event_id, txn_id DESC LIMIT ?",
                *execution_key_args(key),
                start,
                next_event_id,
                limit,
            )
        # Follow the chain of committed batches: each starts where the previous one ended.
        # A failed writer's leftovers either share a start with a committed batch (and sort
        # after it, by lower txn_id) or start inside one; both are skipped.
        batches: list[HistoryBatch] = []
        for first_event_id, txn_id, event_count, data in rows:
            if expected is not None and first_event_id < expected:
                continue
            if expected is not None and first_event_id > expected:
                return Page(batches, None)  # a hole: committed history ends before it
            if len(batches) == page_size:
                return Page(batches, _paging.encode(first_event_id))
            batches.append(HistoryBatch(first_event_id, event_count, txn_id, bytes(data)))
            expected = first_event_id + event_count
        if len(rows) == limit and expected is not None:
            return Page(batches, _paging.encode(expected))
        return Page(batches, None)

    async def trim_history(self, key: ExecutionKey, *, from_event_id: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                f"DELETE FROM history_batches WHERE {EXECUTION_KEY} AND first_event_id >= ?",
                *execution_key_args(key),
                from_event_id,
            )

    async def delete_history(self, key: ExecutionKey) -> None:
        await self._deletes.delete(key)  # with the others due now (sql/_deletes.py)
