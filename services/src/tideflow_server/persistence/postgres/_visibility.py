"""PostgreSQL's visibility upsert: a batch of rows as one statement in one implicit
transaction (rows as arrays through `unnest`), instead of a transaction that runs the upsert
once per row. The batch is merged first (one row per run), since one statement may not
update a row twice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tideflow_server.persistence.records import VisibilityRow
from tideflow_server.persistence.sql._visibility import (
    _COLUMNS,
    _UPSERT_CONFLICT,
    SqlVisibilityStore,
    merged,
    values,
)

if TYPE_CHECKING:
    from tideflow_server.persistence.postgres._database import PostgresDatabase

_TYPES = (
    "text[]",
    "text[]",
    "text[]",
    "text[]",
    "int[]",
    "text[]",
    "smallint[]",
    "bigint[]",
    "bigint[]",
    "bigint[]",
    "bytea[]",
)
_UPSERT = (
    f"INSERT INTO visibility ({_COLUMNS}) SELECT * FROM unnest("
    + ", ".join(f"${n}::{t}" for n, t in enumerate(_TYPES, start=1))
    + ")"
    + _UPSERT_CONFLICT
)


class PostgresVisibilityStore(SqlVisibilityStore):
    def __init__(self, db: PostgresDatabase) -> None:
        super().__init__(db)
        self._pg = db

    async def upsert_runs(self, rows: Sequence[VisibilityRow]) -> None:
        if not rows:
            return
        columns = list(zip(*(values(row) for row in merged(rows)), strict=True))
        async with self._pg.read() as conn:  # autocommit: the statement is its transaction
            await conn.fetchone_native(_UPSERT, *(list(c) for c in columns))
