"""The visibility writer groups rows that arrive while a write is in progress, on a real
SQLite store; every caller returns only once its row is stored, or with the write's error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from tideflow.api.v1 import common_pb2
from tideflow_server.history.visibility import VisibilityWriter
from tideflow_server.persistence import schema
from tideflow_server.persistence.errors import Unavailable
from tideflow_server.persistence.records import VisibilityFilter, VisibilityRow
from tideflow_server.persistence.sql import SqlPersistence
from tideflow_server.persistence.sql._visibility import SqlVisibilityStore
from tideflow_server.persistence.sqlite import open_sqlite


class CountingStore(SqlVisibilityStore):
    """The real store, recording the size of each write and able to fail the next ones."""

    def __init__(self, persistence: SqlPersistence) -> None:
        super().__init__(persistence.db)
        self.writes: list[int] = []
        self.fail = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def upsert_runs(self, rows: Sequence[VisibilityRow]) -> None:
        await self.gate.wait()
        self.writes.append(len(rows))
        if self.fail:
            raise Unavailable("visibility database away")
        await super().upsert_runs(rows)


def _row(i: int) -> VisibilityRow:
    return VisibilityRow(
        namespace_id="ns",
        run_id=f"run-{i}",
        execution_id=f"exec-{i}",
        flow_name="intake",
        flow_version=1,
        task_queue="cpu",
        status=common_pb2.RUN_STATUS_RUNNING,
        start_time_ms=i,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    persistence = await open_sqlite(tmp_path / "v.db")
    await schema.setup_schema(persistence.db)
    try:
        yield CountingStore(persistence)
    finally:
        await persistence.close()


async def test_rows_arriving_during_a_write_go_in_the_next_one(store: CountingStore) -> None:
    writer = VisibilityWriter(store)
    store.gate.clear()
    first = asyncio.create_task(writer.upsert(_row(0)))
    await asyncio.sleep(0)  # the first write starts and waits at the gate
    rest = [asyncio.create_task(writer.upsert(_row(i))) for i in range(1, 50)]
    await asyncio.sleep(0)
    assert not first.done() and not any(t.done() for t in rest)
    store.gate.set()
    await asyncio.gather(first, *rest)
    assert store.writes == [1, 49]
    assert await store.count_runs("ns", VisibilityFilter()) == 50


async def test_batches_are_bounded(store: CountingStore) -> None:
    writer = VisibilityWriter(store, max_batch=20)
    store.gate.clear()
    tasks = [asyncio.create_task(writer.upsert(_row(i))) for i in range(45)]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(*tasks)
    assert store.writes == [20, 20, 5]


async def test_a_failed_write_fails_its_callers_and_the_next_write_goes_on(
    store: CountingStore,
) -> None:
    writer = VisibilityWriter(store)
    store.fail = True
    results = await asyncio.gather(
        *(writer.upsert(_row(i)) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, Unavailable) for r in results)
    store.fail = False
    await writer.upsert(_row(9))
    assert [
        r.run_id for r in (await store.list_runs("ns", VisibilityFilter(), page_size=10)).items
    ] == ["run-9"]
