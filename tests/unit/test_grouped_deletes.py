"""Retention's deletes on the SQL backends go in groups (persistence/sql/_deletes.py): the
calls that arrive together are one transaction, and a refused group is retried key by key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tideflow_server.persistence import PersistenceError, schema
from tideflow_server.persistence.sql import SqlDatabase
from tideflow_server.persistence.sql._deletes import GroupedDelete
from tideflow_server.persistence.sqlite import open_sqlite

DELETE = "DELETE FROM kept WHERE name = ?"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqlDatabase]:
    """A table `kept` of the names r0 to r29."""
    opened = await open_sqlite(tmp_path / "d.db")
    try:
        await schema.setup_schema(opened.db)
        async with opened.db.write() as conn:
            await conn.execute("CREATE TABLE kept (name TEXT PRIMARY KEY)")
            await conn.executemany("INSERT INTO kept VALUES (?)", [(f"r{i}",) for i in range(30)])
        yield opened.db
    finally:
        await opened.close()


async def _names(db: SqlDatabase) -> list[str]:
    async with db.read() as conn:
        return [r[0] for r in await conn.fetchall("SELECT name FROM kept ORDER BY name")]


async def test_calls_that_arrive_together_are_one_transaction(db: SqlDatabase) -> None:
    grouped: GroupedDelete[str] = GroupedDelete(db, [DELETE], lambda name: (name,))
    await grouped.delete("r0")  # alone: an idle store deletes at once
    assert grouped.transactions == 1
    await asyncio.gather(*(grouped.delete(f"r{i}") for i in range(1, 25)))
    assert grouped.transactions <= 3  # 24 keys: a group, or two while one is in flight
    assert await _names(db) == sorted(f"r{i}" for i in range(25, 30))


async def test_a_refused_group_fails_only_its_bad_key(db: SqlDatabase) -> None:
    # A key the statement cannot bind (two values for one placeholder) is refused.
    grouped: GroupedDelete[tuple[str, ...]] = GroupedDelete(db, [DELETE], lambda key: key)
    outcomes = await asyncio.gather(
        grouped.delete(("r1",)),
        grouped.delete(("r2", "extra")),
        grouped.delete(("r3",)),
        return_exceptions=True,
    )
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], PersistenceError)
    assert "r2" in await _names(db)
    assert not {"r1", "r3"} & set(await _names(db))
