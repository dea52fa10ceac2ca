from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol


class Row(Protocol):
    """A result row: a tuple (SQLite) or an asyncpg Record, read by position."""

    def __getitem__(self, index: int, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


class SqlConn(Protocol):
    """A connection inside a transaction. Statements use `?` placeholders; drivers rewrite
    them for their database. Driver errors come out as persistence errors."""

    async def execute(self, sql: str, *args: object) -> int:
        """Run a statement; return the number of rows it changed."""

    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None: ...

    async def fetchall(self, sql: str, *args: object) -> list[Row]: ...

    async def fetchone(self, sql: str, *args: object) -> Row | None: ...


class SqlDatabase(Protocol):
    name: str
    for_share: str
    """Suffix that locks a row against concurrent writers until commit ('' where the whole
    write transaction is already exclusive, as in SQLite)."""
    for_update: str

    def write(self) -> AbstractAsyncContextManager[SqlConn]:
        """A read-write transaction, committed when the block exits cleanly."""

    def read(self) -> AbstractAsyncContextManager[SqlConn]:
        """A read-only snapshot."""

    async def table_exists(self, name: str) -> bool: ...

    async def run_script(self, script: str) -> None:
        """Run several statements (DDL) in one transaction."""

    async def close(self) -> None: ...
