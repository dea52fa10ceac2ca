from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, NoReturn, TypeAlias

import asyncpg

from tideflow_server.persistence.errors import (
    AlreadyExists,
    ConditionFailed,
    PersistenceError,
    Unavailable,
)
from tideflow_server.persistence.postgres._execution import PostgresExecutionStore
from tideflow_server.persistence.postgres._visibility import PostgresVisibilityStore
from tideflow_server.persistence.sql import SqlPersistence
from tideflow_server.persistence.sql._database import Row

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
)


def _translate(e: BaseException) -> NoReturn:
    if isinstance(e, asyncpg.UniqueViolationError):
        raise AlreadyExists(str(e)) from e
    if isinstance(e, asyncpg.SerializationError | asyncpg.DeadlockDetectedError):
        # The transaction was rolled back: nothing was written, reload and decide again.
        raise ConditionFailed(f"postgres: {e}") from e
    if isinstance(e, _UNAVAILABLE):
        raise Unavailable(f"postgres: {e}") from e
    raise PersistenceError(f"postgres: {e}") from e


_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *_UNAVAILABLE)


@functools.lru_cache(maxsize=1024)
def _numbered(sql: str) -> str:
    """Rewrite `?` placeholders as `$1, $2, ...` (our statements have no `?` in literals)."""
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def _rowcount(status: str) -> int:
    # asyncpg returns the command tag: "UPDATE 1", "DELETE 0", "INSERT 0 1".
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    _Connection: TypeAlias = (
        asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    )


class _Conn:
    def __init__(self, conn: _Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: object) -> int:
        try:
            return _rowcount(await self._conn.execute(_numbered(sql), *args))
        except _ERRORS as e:
            _translate(e)

    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        try:
            await self._conn.executemany(_numbered(sql), rows)
        except _ERRORS as e:
            _translate(e)

    async def fetchall(self, sql: str, *args: object) -> list[Row]:
        try:
            return list(await self._conn.fetch(_numbered(sql), *args))
        except _ERRORS as e:
            _translate(e)

    async def fetchone_native(self, sql: str, *args: object) -> Row | None:
        """A statement already written with `$n` placeholders (PostgreSQL-only SQL)."""
        try:
            found: Row | None = await self._conn.fetchrow(sql, *args)
            return found
        except _ERRORS as e:
            _translate(e)

    async def fetchone(self, sql: str, *args: object) -> Row | None:
        try:
            found: Row | None = await self._conn.fetchrow(_numbered(sql), *args)
            return found
        except _ERRORS as e:
            _translate(e)


class PostgresDatabase:
    name = "postgres"
    for_share = " FOR SHARE"
    for_update = " FOR UPDATE"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @asynccontextmanager
    async def write(self) -> AsyncIterator[_Conn]:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                yield _Conn(conn)
        except _ERRORS as e:
            _translate(e)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[_Conn]:
        try:
            async with self._pool.acquire() as conn:
                yield _Conn(conn)
        except _ERRORS as e:
            _translate(e)

    async def table_exists(self, name: str) -> bool:
        async with self.read() as conn:
            found = await conn.fetchone("SELECT to_regclass(?) IS NOT NULL", name)
        return bool(found and found[0])

    async def run_script(self, script: str) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(script)
        except _ERRORS as e:
            _translate(e)

    async def close(self) -> None:
        await self._pool.close()


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Given to the pool in place of asyncpg's reset on release, a round trip per checkout
    (`RESET ALL`, `UNLISTEN *`, ...) that undoes session state this store never creates. An
    open transaction is still rolled back by the pool before this is called."""


async def open_postgres(
    dsn: str,
    *,
    min_connections: int = 2,
    max_connections: int = 20,
    connect_timeout_s: float = 10.0,
    statement_timeout_s: float = 30.0,
    group_commit_calls: int = 2,
) -> SqlPersistence:
    """Open a connection pool; the schema is set up separately (`tideflow-server schema`).
    `group_commit_calls` is PostgresConfig's (0 turns group commit off)."""
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_connections,
            max_size=max_connections,
            timeout=connect_timeout_s,
            command_timeout=statement_timeout_s,
            reset=_keep_session,
        )
    except _ERRORS as e:
        _translate(e)
    db = PostgresDatabase(pool)
    return SqlPersistence(
        db,
        executions=PostgresExecutionStore(db, group_commit_calls=group_commit_calls),
        visibility=PostgresVisibilityStore(db),
    )
