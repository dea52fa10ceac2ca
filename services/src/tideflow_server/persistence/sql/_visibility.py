from __future__ import annotations

from collections.abc import Sequence

from tideflow_server.persistence.errors import NotFound
from tideflow_server.persistence.records import Page, VisibilityFilter, VisibilityRow
from tideflow_server.persistence.sql import _paging
from tideflow_server.persistence.sql._database import Row, SqlDatabase
from tideflow_server.persistence.sql._deletes import GroupedDelete

_COLUMNS = (
    "namespace_id, run_id, execution_id, flow_name, flow_version, task_queue, status,"
    " start_time_ms, close_time_ms, history_length, memo"
)


def _row(r: Row) -> VisibilityRow:
    return VisibilityRow(
        namespace_id=r[0],
        run_id=r[1],
        execution_id=r[2],
        flow_name=r[3],
        flow_version=r[4],
        task_queue=r[5],
        status=r[6],
        start_time_ms=r[7],
        close_time_ms=r[8],
        history_length=r[9],
        memo=bytes(r[10]),
    )


def _where(namespace_id: str, f: VisibilityFilter) -> tuple[str, list[object]]:
    clauses = ["namespace_id = ?"]
    args: list[object] = [namespace_id]
    if f.statuses:
        statuses = sorted(f.statuses)
        clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
        args.extend(statuses)
    if f.flow_name is not None:
        clauses.append("flow_name = ?")
        args.append(f.flow_name)
    if f.run_id is not None:
        clauses.append("run_id = ?")
        args.append(f.run_id)
    if f.start_time_min_ms is not None:
        clauses.append("start_time_ms >= ?")
        args.append(f.start_time_min_ms)
    if f.start_time_max_ms is not None:
        clauses.append("start_time_ms < ?")
        args.append(f.start_time_max_ms)
    return " AND ".join(clauses), args


_UPSERT_CONFLICT = (
    " ON CONFLICT (namespace_id, execution_id) DO UPDATE SET"
    " status = excluded.status, close_time_ms = excluded.close_time_ms,"
    " history_length = excluded.history_length, memo = excluded.memo,"
    " task_queue = excluded.task_queue"
    " WHERE visibility.close_time_ms IS NULL OR excluded.close_time_ms IS NOT NULL"
)
"""A closed row wins over an open one whatever order the visibility tasks arrive in."""


def merged(rows: Sequence[VisibilityRow]) -> list[VisibilityRow]:
    """What upserting `rows` one by one would leave, one row per run: a later row replaces an
    earlier one, except an open row after a closed one. A run that started and closed within
    one batch is written once, closed."""
    out: dict[tuple[str, str], VisibilityRow] = {}
    for row in rows:
        key = (row.namespace_id, row.execution_id)
        before = out.get(key)
        if before is not None and before.close_time_ms is not None and row.close_time_ms is None:
            continue
        out[key] = row
    return list(out.values())


def values(row: VisibilityRow) -> tuple[object, ...]:
    """A row's values in `_COLUMNS` order."""
    return (
        row.namespace_id,
        row.run_id,
        row.execution_id,
        row.flow_name,
        row.flow_version,
        row.task_queue,
        row.status,
        row.start_time_ms,
        row.close_time_ms,
        row.history_length,
        row.memo,
    )


class SqlVisibilityStore:
    def __init__(self, db: SqlDatabase) -> None:
        self._db = db
        self._deletes: GroupedDelete[tuple[str, str]] = GroupedDelete(
            db,
            ["DELETE FROM visibility WHERE namespace_id = ? AND execution_id = ?"],
            lambda key: key,
        )

    async def upsert_run(self, row: VisibilityRow) -> None:
        await self.upsert_runs([row])

    async def upsert_runs(self, rows: Sequence[VisibilityRow]) -> None:
        if not rows:
            return
        async with self._db.write() as conn:
            await conn.executemany(
                f"INSERT INTO visibility ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                + _UPSERT_CONFLICT,
                [values(row) for row in merged(rows)],
            )

    async def get_run(self, namespace_id: str, execution_id: str) -> VisibilityRow:
        async with self._db.read() as conn:
            found = await conn.fetchone(
                f"SELECT {_COLUMNS} FROM visibility WHERE namespace_id = ? AND execution_id = ?",
                namespace_id,
                execution_id,
            )
        if found is None:
            raise NotFound(f"run execution {execution_id} not found in visibility")
        return _row(found)

    async def list_runs(
        self,
        namespace_id: str,
        filter: VisibilityFilter,
        *,
        page_size: int,
        page_token: bytes | None = None,
    ) -> Page[VisibilityRow]:
        where, args = _where(namespace_id, filter)
        if page_token is not None:
            start_time_ms, execution_id = _paging.decode(page_token, int, str)
            where += " AND (start_time_ms, execution_id) < (?, ?)"
            args += [start_time_ms, execution_id]
        async with self._db.read() as conn:
            rows = await conn.fetchall(
                f"SELECT {_COLUMNS} FROM visibility WHERE {where}"
                " ORDER BY start_time_ms DESC, execution_id DESC LIMIT ?",
                *args,
                page_size + 1,
            )
        items = [_row(r) for r in rows[:page_size]]
        if len(rows) <= page_size:
            return Page(items, None)
        last = items[-1]
        return Page(items, _paging.encode(last.start_time_ms, last.execution_id))

    async def count_runs(self, namespace_id: str, filter: VisibilityFilter) -> int:
        where, args = _where(namespace_id, filter)
        async with self._db.read() as conn:
            found = await conn.fetchone(f"SELECT COUNT(*) FROM visibility WHERE {where}", *args)
        return 0 if found is None else int(found[0])

    async def delete_run(self, namespace_id: str, execution_id: str) -> None:
        # With the others due now (sql/_deletes.py).
        await self._deletes.delete((namespace_id, execution_id))
