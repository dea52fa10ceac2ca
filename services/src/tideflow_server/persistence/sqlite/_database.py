from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NoReturn

import aiosqlite

from tideflow_server.persistence.errors import AlreadyExists, PersistenceError, Unavailable
from tideflow_server.persistence.sql import SqlPersistence
from tideflow_server.persistence.sql._database import Row


def _translate(e: sqlite3.Error) -> NoReturn:
    if isinstance(e, sqlite3.IntegrityError):
        raise AlreadyExists(str(e)) from e
    if isinstance(e, sqlite3.OperationalError):
        raise Unavailable(f"sqlite: {e}") from e
    raise PersistenceError(f"sqlite: {e}") from e


class _Conn:
    """Statements run shielded from cancellation: once started, a statement finishes and its
    cursor closes even if the caller is cancelled. An abandoned cursor would keep its read
    snapshot open, and every later read on the connection would see stale data."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def _execute(self, sql: str, args: Sequence[object]) -> int:
        async with self._conn.execute(sql, args) as cur:
            return cur.rowcount

    async def _fetch(self, sql: str, args: Sequence[object], *, one: bool) -> list[Row]:
        async with self._conn.execute(sql, args) as cur:
            if one:
                found = await cur.fetchone()
                return [] if found is None else [tuple(found)]
            return [tuple(r) for r in await cur.fetchall()]

    async def execute(self, sql: str, *args: object) -> int:
        try:
            return await asyncio.shield(self._execute(sql, args))
        except sqlite3.Error as e:
            _translate(e)

    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        try:
            await asyncio.shield(self._conn.executemany(sql, list(rows)))
        except sqlite3.Error as e:
            _translate(e)

    async def fetchall(self, sql: str, *args: object) -> list[Row]:
        try:
            return await asyncio.shield(self._fetch(sql, args, one=False))
        except sqlite3.Error as e:
            _translate(e)

    async def fetchone(self, sql: str, *args: object) -> Row | None:
        try:
            found = await asyncio.shield(self._fetch(sql, args, one=True))
        except sqlite3.Error as e:
            _translate(e)
        return found[0] if found else None


class SqliteDatabase:
    name = "sqlite"
    # BEGIN IMMEDIATE takes the database's write lock for the whole transaction, so rows read
    # in a write transaction cannot change under it: no row locks needed.
    for_share = ""
    for_update = ""

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[_Conn]:
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                _translate(e)
            try:
                yield _Conn(self._writer)
            except BaseException:
                await self._writer.rollback()
                raise
            try:
                await self._writer.commit()
            except sqlite3.Error as e:
                await self._writer.rollback()
                _translate(e)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[_Conn]:
        async with self._read_lock:
            yield _Conn(self._reader)

    async def table_exists(self, name: str) -> bool:
        async with self.read() as conn:
            found = await conn.fetchone(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", name
            )
        return found is not None

    async def run_script(self, script: str) -> None:
        async with self._write_lock:
            try:
                await self._writer.executescript(f"BEGIN IMMEDIATE;\n{script}\nCOMMIT;")
            except sqlite3.Error as e:
                if self._writer.in_transaction:
                    await self._writer.rollback()
                _translate(e)

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()


async def _connect(path: str, *, synchronous: str, busy_timeout_ms: int) -> aiosqlite.Connection:
    try:
        conn = await aiosqlite.connect(path, isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute(f"PRAGMA synchronous = {synchronous}")
    except sqlite3.Error as e:
        _translate(e)
    return conn


async def open_sqlite(
    path: str | Path, *, synchronous: str = "NORMAL", busy_timeout_ms: int = 5000
) -> SqlPersistence:
    """Open (creating the file if needed) a SQLite database; the schema is set up separately
    (`tideflow-server schema setup`)."""
    if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError(f"sqlite synchronous must be OFF, NORMAL, FULL or EXTRA: {synchronous}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = await _connect(str(path), synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
    reader = await _connect(str(path), synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
    return SqlPersistence(SqliteDatabase(writer, reader))
