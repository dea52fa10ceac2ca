"""Visibility rows of every shard of a host, written in groups.

A run's start and close each change its visibility row. Written one by one that is two
commits per run; here a row waits only for the write already in progress, and every row that
arrived meanwhile goes into the next write (group commit). An idle host writes at once; a busy
one writes once per batch. The transfer task that asked for the row completes when its write
does, so the outbox still acknowledges only what is stored.
"""

from __future__ import annotations

import asyncio

from tideflow_server.persistence.interfaces import VisibilityStore
from tideflow_server.persistence.records import VisibilityRow

MAX_BATCH = 256


class VisibilityWriter:
    def __init__(self, store: VisibilityStore, *, max_batch: int = MAX_BATCH) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queued: list[tuple[VisibilityRow, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def upsert(self, row: VisibilityRow) -> None:
        """Store `row` (see VisibilityStore.upsert_run); raises the store's error if its
        write failed. A caller cancelled while waiting leaves the write to finish."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((row, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all(), name="visibility-writer")
        await asyncio.shield(done)

    async def _write_all(self) -> None:
        try:
            while self._queued:
                batch = self._queued[: self._max_batch]
                del self._queued[: self._max_batch]
                try:
                    await self._store.upsert_runs([row for row, _ in batch])
                except Exception as e:
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(e)
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._writer = None
