"""History batches in their own table, one partition per execution."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tideflow_server.persistence.cassandra._database import CassandraDatabase
from tideflow_server.persistence.cassandra._driver import Params
from tideflow_server.persistence.errors import InvalidPageToken
from tideflow_server.persistence.records import ExecutionKey, HistoryBatch, Page
from tideflow_server.persistence.sql import _paging

_T = "{ks}.history_batches"
_KEY = "shard_id = ? AND namespace_id = ? AND run_id = ? AND execution_id = ?"


_INSERT = (
    f"INSERT INTO {_T} (shard_id, namespace_id, run_id, execution_id, first_event_id, txn_id,"
    " event_count, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
APPEND_BYTES = 32 * 1024
"""Event bytes in one request of `append_many` at most: under Cassandra's default 50 KiB
batch_size_fail_threshold for batches of several partitions."""


def _values(b: HistoryBatch) -> tuple[object, ...]:
    return (b.first_event_id, b.txn_id, b.event_count, b.data)


def _key_args(key: ExecutionKey) -> tuple[object, ...]:
    return (key.shard_id, key.namespace_id, key.run_id, key.execution_id)


class CassandraHistoryStore:
    def __init__(self, db: CassandraDatabase) -> None:
        self._db = db

    async def append_history(self, key: ExecutionKey, batches: list[HistoryBatch]) -> None:
        rows = [(_INSERT, (*_key_args(key), *_values(b))) for b in batches]
        if len(rows) == 1:
            await self._db.execute(*rows[0])
        elif rows:
            await self._db.batch(rows)  # one partition: applied together

    async def append_many(
        self, appends: Sequence[tuple[ExecutionKey, Sequence[HistoryBatch]]]
    ) -> None:
        """Several executions' batches in as few requests as fit (unlogged batches of at most
        APPEND_BYTES, each execution's rows in one of them, so applied together)."""
        requests: list[list[tuple[str, Params]]] = [[]]
        size = 0
        for key, batches in appends:
            rows = [(_INSERT, (*_key_args(key), *_values(b))) for b in batches]
            grows = sum(len(b.data) for b in batches)
            if requests[-1] and size + grows > APPEND_BYTES:
                requests.append([])
                size = 0
            requests[-1] += rows
            size += grows
        await asyncio.gather(
            *(
                self._db.execute(*rows[0]) if len(rows) == 1 else self._db.batch(rows, logged=False)
                for rows in requests
                if rows
            )
        )

    async def delete_batches(self, key: ExecutionKey, batches: Sequence[HistoryBatch]) -> None:
        """Delete exactly these batches (a failed decision's own), never another writer's
        batch that starts at the same event id."""
        delete = f"DELETE FROM {_T} WHERE {_KEY} AND first_event_id = ? AND txn_id = ?"
        await self._db.batch(
            [(delete, (*_key_args(key), b.first_event_id, b.txn_id)) for b in batches]
        )

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
            if not isinstance(start, int):
                raise InvalidPageToken("page token is not one this server issued")
            expected = start
        limit = page_size + 1
        found = await self._db.execute(
            f"SELECT first_event_id, txn_id, event_count, data FROM {_T}"
            f" WHERE {_KEY} AND first_event_id >= ? AND first_event_id < ? LIMIT ?",
            (*_key_args(key), start, next_event_id, limit),
        )
        rows = found.rows
        # The committed chain: each batch starts where the previous one ended; of the
        # batches at one start the newest txn_id (first in clustering order) counts.
        batches: list[HistoryBatch] = []
        for first_event_id, txn_id, event_count, data in rows:
            if expected is not None and first_event_id < expected:
                continue
            if expected is not None and first_event_id > expected:
                return Page(batches, None)
            if len(batches) == page_size:
                return Page(batches, _paging.encode(first_event_id))
            batches.append(HistoryBatch(first_event_id, event_count, txn_id, bytes(data)))
            expected = first_event_id + event_count
        if len(rows) == limit and expected is not None:
            return Page(batches, _paging.encode(expected))
        return Page(batches, None)

    async def trim_history(self, key: ExecutionKey, *, from_event_id: int) -> None:
        await self._db.execute(
            f"DELETE FROM {_T} WHERE {_KEY} AND first_event_id >= ?",
            (*_key_args(key), from_event_id),
        )

    async def delete_history(self, key: ExecutionKey) -> None:
        await self._db.execute(f"DELETE FROM {_T} WHERE {_KEY}", _key_args(key))
