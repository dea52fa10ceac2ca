from __future__ import annotations

from collections.abc import Sequence

from tideflow_server.persistence.errors import (
    ConditionFailed,
    CurrentRunConditionFailed,
    FlowChanged,
    NotFound,
)
from tideflow_server.persistence.records import (
    CreateExecution,
    CreateMode,
    CurrentRunRow,
    ExecutionKey,
    ExecutionRow,
    FlowCheck,
    HistoryBatch,
    RunState,
    TimerTaskRow,
    TransferTaskRow,
    UpdateExecution,
)
from tideflow_server.persistence.sql._database import Row, SqlConn, SqlDatabase
from tideflow_server.persistence.sql._deletes import GroupedDelete
from tideflow_server.persistence.sql._shard import check_range

_CURRENT_COLUMNS = "execution_id, state, status, start_request_id"


def _current(namespace_id: str, run_id: str, found: Row) -> CurrentRunRow:
    return CurrentRunRow(
        namespace_id=namespace_id,
        run_id=run_id,
        execution_id=found[0],
        state=RunState(found[1]),
        status=found[2],
        start_request_id=found[3],
    )


async def _check_flow(conn: SqlConn, namespace_id: str, check: FlowCheck) -> None:
    newer = await conn.fetchone(
        "SELECT version FROM flows WHERE namespace_id = ? AND name = ? AND version > ?"
        " ORDER BY version DESC LIMIT 1",
        namespace_id,
        check.name,
        check.version,
    )
    if newer is not None:
        raise FlowChanged(f"flow {check.name!r}: version {newer[0]} is newer than {check.version}")


EXECUTION_KEY = "shard_id = ? AND namespace_id = ? AND run_id = ? AND execution_id = ?"
"""The WHERE clause of one execution's rows, in every table keyed by execution."""


def execution_key_args(key: ExecutionKey) -> tuple[object, ...]:
    """The parameters of EXECUTION_KEY."""
    return (key.shard_id, key.namespace_id, key.run_id, key.execution_id)


class SqlExecutionStore:
    def __init__(self, db: SqlDatabase) -> None:
        self._db = db
        # The pointer goes only while it names this execution (its run may have started again).
        self._deletes: GroupedDelete[ExecutionKey] = GroupedDelete(
            db,
            [f"DELETE FROM {t} WHERE {EXECUTION_KEY}" for t in ("executions", "current_runs")],
            execution_key_args,
        )

    async def create_execution(self, request: CreateExecution) -> None:
        ex = request.execution
        cur = request.current
        async with self._db.write() as conn:
            await check_range(self._db, conn, request.shard_id, request.range_id)
            if request.flow_check is not None:
                await _check_flow(conn, ex.namespace_id, request.flow_check)
            found = await conn.fetchone(
                f"SELECT {_CURRENT_COLUMNS} FROM current_runs "
                f"WHERE shard_id = ? AND namespace_id = ? AND run_id = ?{self._db.for_update}",
                request.shard_id,
                ex.namespace_id,
                ex.run_id,
            )
            if request.mode is CreateMode.BRAND_NEW:
                if found is not None:
                    existing = _current(ex.namespace_id, ex.run_id, found)
                    raise CurrentRunConditionFailed(
                        existing, f"run_id {ex.run_id!r} already has an execution"
                    )
                # A concurrent create of the same run_id finds no row to lock above; the
                # insert is where the two meet, and the loser reports the winner's pointer.
                inserted = await conn.execute(
                    "INSERT INTO current_runs (shard_id, namespace_id, run_id, execution_id,"
                    " state, status, start_request_id) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    request.shard_id,
                    cur.namespace_id,
                    cur.run_id,
                    cur.execution_id,
                    int(cur.state),
                    cur.status,
                    cur.start_request_id,
                )
                if inserted != 1:
                    winner = await conn.fetchone(
                        f"SELECT {_CURRENT_COLUMNS} FROM current_runs"
                        " WHERE shard_id = ? AND namespace_id = ? AND run_id = ?",
                        request.shard_id,
                        ex.namespace_id,
                        ex.run_id,
                    )
                    if winner is None:
                        raise ConditionFailed(f"run_id {ex.run_id!r} changed concurrently")
                    raise CurrentRunConditionFailed(
                        _current(ex.namespace_id, ex.run_id, winner),
                        f"run_id {ex.run_id!r} already has an execution",
                    )
            else:
                if found is None:
                    raise ConditionFailed(f"run_id {ex.run_id!r} has no previous execution")
                existing = _current(ex.namespace_id, ex.run_id, found)
                if (
                    existing.execution_id != request.previous_execution_id
                    or existing.state is not RunState.CLOSED
                ):
                    raise CurrentRunConditionFailed(
                        existing,
                        f"run_id {ex.run_id!r}: current execution is "
                        f"{existing.execution_id} in state {existing.state.name}",
                    )
                await conn.execute(
                    "UPDATE current_runs SET execution_id = ?, state = ?, status = ?,"
                    " start_request_id = ? WHERE shard_id = ? AND namespace_id = ? AND run_id = ?",
                    cur.execution_id,
                    int(cur.state),
                    cur.status,
                    cur.start_request_id,
                    request.shard_id,
                    cur.namespace_id,
                    cur.run_id,
                )
            await conn.execute(
                "INSERT INTO executions (shard_id, namespace_id, run_id, execution_id,"
                " next_event_id, db_version, state, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                request.shard_id,
                ex.namespace_id,
                ex.run_id,
                ex.execution_id,
                ex.next_event_id,
                ex.db_version,
                int(ex.state),
                ex.data,
            )
            key = ExecutionKey(request.shard_id, ex.namespace_id, ex.run_id, ex.execution_id)
            await _insert_outputs(
                conn, key, request.events, request.transfer_tasks, request.timer_tasks
            )

    async def update_execution(self, request: UpdateExecution) -> None:
        ex = request.execution
        async with self._db.write() as conn:
            await check_range(self._db, conn, request.shard_id, request.range_id)
            changed = await conn.execute(
                "UPDATE executions SET next_event_id = ?, db_version = ?, state = ?, data = ?"
                " WHERE shard_id = ? AND namespace_id = ? AND run_id = ? AND execution_id = ?"
                " AND db_version = ?",
                ex.next_event_id,
                ex.db_version,
                int(ex.state),
                ex.data,
                request.shard_id,
                ex.namespace_id,
                ex.run_id,
                ex.execution_id,
                request.expected_db_version,
            )
            if changed != 1:
                raise ConditionFailed(
                    f"execution {ex.execution_id}: db_version is no longer "
                    f"{request.expected_db_version}"
                )
            if request.current is not None:
                cur = request.current
                # Only while the pointer still names this execution: a newer execution of the
                # run_id may have taken it over (reuse after close).
                await conn.execute(
                    "UPDATE current_runs SET state = ?, status = ?, start_request_id = ?"
                    " WHERE shard_id = ? AND namespace_id = ? AND run_id = ?"
                    " AND execution_id = ?",
                    int(cur.state),
                    cur.status,
                    cur.start_request_id,
                    request.shard_id,
                    cur.namespace_id,
                    cur.run_id,
                    ex.execution_id,
                )
            key = ExecutionKey(request.shard_id, ex.namespace_id, ex.run_id, ex.execution_id)
            await _insert_outputs(
                conn, key, request.events, request.transfer_tasks, request.timer_tasks
            )

    async def get_execution(self, key: ExecutionKey) -> ExecutionRow:
        async with self._db.read() as conn:
            found = await conn.fetchone(
                "SELECT next_event_id, db_version, state, data FROM executions"
                " WHERE shard_id = ? AND namespace_id = ? AND run_id = ? AND execution_id = ?",
                key.shard_id,
                key.namespace_id,
                key.run_id,
                key.execution_id,
            )
        if found is None:
            raise NotFound(f"execution {key.execution_id} of run_id {key.run_id!r} not found")
        return ExecutionRow(
            namespace_id=key.namespace_id,
            run_id=key.run_id,
            execution_id=key.execution_id,
            next_event_id=found[0],
            db_version=found[1],
            state=RunState(found[2]),
            data=bytes(found[3]),
        )

    async def get_current_run(self, shard_id: int, namespace_id: str, run_id: str) -> CurrentRunRow:
        async with self._db.read() as conn:
            found = await conn.fetchone(
                f"SELECT {_CURRENT_COLUMNS} FROM current_runs"
                " WHERE shard_id = ? AND namespace_id = ? AND run_id = ?",
                shard_id,
                namespace_id,
                run_id,
            )
        if found is None:
            raise NotFound(f"run_id {run_id!r} not found")
        return _current(namespace_id, run_id, found)

    async def delete_execution(self, key: ExecutionKey) -> None:
        await self._deletes.delete(key)  # with the others due now (sql/_deletes.py)

    async def get_transfer_tasks(
        self, shard_id: int, *, min_task_id: int, max_task_id: int, limit: int
    ) -> list[TransferTaskRow]:
        async with self._db.read() as conn:
            rows = await conn.fetchall(
                "SELECT task_id, data FROM transfer_tasks"
                " WHERE shard_id = ? AND task_id > ? AND task_id <= ? ORDER BY task_id LIMIT ?",
                shard_id,
                min_task_id,
                max_task_id,
                limit,
            )
        return [TransferTaskRow(task_id=r[0], data=bytes(r[1])) for r in rows]

    async def complete_transfer_task(self, shard_id: int, task_id: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                "DELETE FROM transfer_tasks WHERE shard_id = ? AND task_id = ?", shard_id, task_id
            )

    async def range_complete_transfer_tasks(self, shard_id: int, *, max_task_id: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                "DELETE FROM transfer_tasks WHERE shard_id = ? AND task_id <= ?",
                shard_id,
                max_task_id,
            )

    async def get_timer_tasks(
        self,
        shard_id: int,
        *,
        after: tuple[int, int],
        fire_before_ms: int,
        limit: int,
    ) -> list[TimerTaskRow]:
        async with self._db.read() as conn:
            rows = await conn.fetchall(
                "SELECT fire_time_ms, task_id, data FROM timer_tasks"
                " WHERE shard_id = ? AND (fire_time_ms, task_id) > (?, ?) AND fire_time_ms < ?"
                " ORDER BY fire_time_ms, task_id LIMIT ?",
                shard_id,
                after[0],
                after[1],
                fire_before_ms,
                limit,
            )
        return [TimerTaskRow(fire_time_ms=r[0], task_id=r[1], data=bytes(r[2])) for r in rows]

    async def complete_timer_task(self, shard_id: int, *, fire_time_ms: int, task_id: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                "DELETE FROM timer_tasks WHERE shard_id = ? AND fire_time_ms = ? AND task_id = ?",
                shard_id,
                fire_time_ms,
                task_id,
            )

    async def range_complete_timer_tasks(self, shard_id: int, *, fire_before_ms: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                "DELETE FROM timer_tasks WHERE shard_id = ? AND fire_time_ms < ?",
                shard_id,
                fire_before_ms,
            )


async def _insert_outputs(
    conn: SqlConn,
    key: ExecutionKey,
    events: Sequence[HistoryBatch],
    transfer_tasks: Sequence[TransferTaskRow],
    timer_tasks: Sequence[TimerTaskRow],
) -> None:
    if events:
        await insert_history(conn, key, events)
    if transfer_tasks:
        await conn.executemany(
            "INSERT INTO transfer_tasks (shard_id, task_id, data) VALUES (?, ?, ?)",
            [(key.shard_id, t.task_id, t.data) for t in transfer_tasks],
        )
    if timer_tasks:
        await conn.executemany(
            "INSERT INTO timer_tasks (shard_id, fire_time_ms, task_id, data) VALUES (?, ?, ?, ?)",
            [(key.shard_id, t.fire_time_ms, t.task_id, t.data) for t in timer_tasks],
        )


async def insert_history(conn: SqlConn, key: ExecutionKey, batches: Sequence[HistoryBatch]) -> None:
    await conn.executemany(
        "INSERT INTO history_batches (shard_id, namespace_id, run_id, execution_id,"
        " first_event_id, txn_id, event_count, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                key.shard_id,
                key.namespace_id,
                key.run_id,
                key.execution_id,
                b.first_event_id,
                b.txn_id,
                b.event_count,
                b.data,
            )
            for b in batches
        ],
    )
