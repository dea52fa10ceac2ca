"""Shards, executions, current-run pointers and the outbox: rows of one shard partition.

A decision is one conditional batch in the shard's partition: the shard row's
`IF range_id = ?` fences the owner, the execution row's `IF db_version = ?` (or
`IF NOT EXISTS`) orders decisions, and pointer and outbox rows ride along. History is in its
own table, so it is appended before the batch and its rows are deleted again when the batch
is not applied (readers never see them meanwhile: they stop at the committed next_event_id).

Group commit: concurrent decisions and new runs of one shard go as one such batch (see
persistence/group.py), one fence and every run's own conditions, so a shard has one
lightweight transaction in flight at a time instead of one per run contending for the same
partition's Paxos round. A batch is all or nothing: when it is not applied and its fence
held, some run's own condition failed, and every run of it is tried again alone, so each
gets exactly the outcome it would have had alone and one stale run does not fail the others.
A run appears in a batch at most once (a second write for it waits and goes alone), since
two conditions on one row in one batch would both be checked against the row as it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from tideflow_server.persistence.cassandra._database import CassandraDatabase
from tideflow_server.persistence.cassandra._driver import Params, Result
from tideflow_server.persistence.cassandra._history import CassandraHistoryStore
from tideflow_server.persistence.errors import (
    AlreadyExists,
    ConditionFailed,
    CurrentRunConditionFailed,
    FlowChanged,
    NotFound,
    PersistenceError,
    ShardOwnershipLost,
)
from tideflow_server.persistence.group import GroupCommit
from tideflow_server.persistence.records import (
    CreateExecution,
    CreateMode,
    CurrentRunRow,
    ExecutionKey,
    ExecutionRow,
    RunState,
    ShardRow,
    TimerTaskRow,
    TransferTaskRow,
    UpdateExecution,
    write_bytes,
)

SHARD, EXECUTION, CURRENT, TRANSFER, TIMER = 1, 2, 3, 4, 5

_T = "{ks}.shard_partitions"
_ROW = (
    "shard_id = ? AND row_kind = ? AND namespace_id = ? AND run_id = ? AND execution_id = ?"
    " AND fire_time_ms = ? AND task_id = ?"
)
_KIND = "shard_id = ? AND row_kind = ? AND namespace_id = '' AND run_id = '' AND execution_id = ''"


def _shard_key(shard_id: int) -> tuple[object, ...]:
    return (shard_id, SHARD, "", "", "", 0, 0)


def _execution_key(shard_id: int, ns: str, run_id: str, execution_id: str) -> tuple[object, ...]:
    return (shard_id, EXECUTION, ns, run_id, execution_id, 0, 0)


def _current_key(shard_id: int, ns: str, run_id: str) -> tuple[object, ...]:
    return (shard_id, CURRENT, ns, run_id, "", 0, 0)


_FENCE = f"UPDATE {_T} SET range_id = ? WHERE {_ROW} IF range_id = ?"
_NEWER_FLOW = (
    "SELECT version FROM {ks}.flows WHERE namespace_id = ? AND name = ? AND version > ? LIMIT 1"
)
_INSERT_EXECUTION = (
    f"INSERT INTO {_T} (shard_id, row_kind, namespace_id, run_id, execution_id, fire_time_ms,"
    " task_id, next_event_id, db_version, state, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " IF NOT EXISTS"
)
_UPDATE_EXECUTION = (
    f"UPDATE {_T} SET next_event_id = ?, db_version = ?, state = ?, data = ? WHERE {_ROW}"
    " IF db_version = ?"
)
_INSERT_CURRENT = (
    f"INSERT INTO {_T} (shard_id, row_kind, namespace_id, run_id, execution_id, fire_time_ms,"
    " task_id, current_execution_id, state, status, start_request_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
)
_REUSE_CURRENT = (
    f"UPDATE {_T} SET current_execution_id = ?, state = ?, status = ?, start_request_id = ?"
    f" WHERE {_ROW} IF current_execution_id = ? AND state = ?"
)
_CLOSE_CURRENT = (
    f"UPDATE {_T} SET state = ?, status = ?, start_request_id = ?"
    f" WHERE {_ROW} IF current_execution_id = ?"
)
_INSERT_TRANSFER = (
    f"INSERT INTO {_T} (shard_id, row_kind, namespace_id, run_id, execution_id, fire_time_ms,"
    " task_id, data) VALUES (?, ?, '', '', '', 0, ?, ?)"
)
_INSERT_TIMER = (
    f"INSERT INTO {_T} (shard_id, row_kind, namespace_id, run_id, execution_id, fire_time_ms,"
    " task_id, data) VALUES (?, ?, '', '', '', ?, ?, ?)"
)


def _current_from(ns: str, run_id: str, row: dict[str, Any]) -> CurrentRunRow:
    return CurrentRunRow(
        namespace_id=ns,
        run_id=run_id,
        execution_id=row["current_execution_id"],
        state=RunState(row["state"]),
        status=row["status"],
        start_request_id=row["start_request_id"],
    )


def _rows_by_kind(result: Result) -> dict[int, dict[str, Any]]:
    """The current rows a failed conditional batch reports (only rows that exist)."""
    return {row["row_kind"]: row for row in result.dicts() if row.get("row_kind") is not None}


def _ownership_lost(result: Result, shard_id: int, expected: int) -> ShardOwnershipLost:
    """What a conditional write on the shard row that was not applied ran into."""
    actual = result.dicts()[0].get("range_id") if result.rows else None
    return ShardOwnershipLost(shard_id=shard_id, expected_range_id=expected, actual_range_id=actual)


class CassandraShardStore:
    def __init__(self, db: CassandraDatabase) -> None:
        self._db = db

    async def create_shard(self, row: ShardRow) -> None:
        result = await self._db.execute(
            f"INSERT INTO {_T} (shard_id, row_kind, namespace_id, run_id, execution_id,"
            " fire_time_ms, task_id, range_id, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " IF NOT EXISTS",
            (*_shard_key(row.shard_id), row.range_id, row.data),
        )
        if not result.applied:
            raise AlreadyExists(f"shard {row.shard_id} already exists")

    async def get_shard(self, shard_id: int) -> ShardRow:
        found = await self._db.execute(
            f"SELECT range_id, data FROM {_T} WHERE {_ROW}", _shard_key(shard_id)
        )
        if not found.rows:
            raise NotFound(f"shard {shard_id} does not exist")
        range_id, data = found.rows[0]
        return ShardRow(shard_id=shard_id, range_id=range_id, data=bytes(data or b""))

    async def update_shard(self, row: ShardRow, *, previous_range_id: int) -> None:
        result = await self._db.execute(
            f"UPDATE {_T} SET range_id = ?, data = ? WHERE {_ROW} IF range_id = ?",
            (row.range_id, row.data, *_shard_key(row.shard_id), previous_range_id),
        )
        if not result.applied:
            raise _ownership_lost(result, row.shard_id, previous_range_id)

    async def fence(self, shard_id: int, range_id: int) -> None:
        # A Paxos round of its own on the shard's partition: its prepare finds a proposal of
        # an earlier round left accepted but uncommitted (a batch whose reply was lost) and
        # commits it first, or its own commit supersedes one no quorum accepted.
        result = await self._db.execute(_FENCE, (range_id, *_shard_key(shard_id), range_id))
        if not result.applied:
            raise _ownership_lost(result, shard_id, range_id)


def _fence_held(rows: dict[int, dict[str, Any]], range_id: int) -> bool:
    shard = rows.get(SHARD)
    return shard is not None and shard.get("range_id") == range_id


def _version_held(rows: dict[int, dict[str, Any]], expected_db_version: int) -> bool:
    execution = rows.get(EXECUTION)
    return execution is not None and execution.get("db_version") == expected_db_version


def _create_failed(request: CreateExecution, rows: dict[int, dict[str, Any]]) -> None:
    """Raise what a new run's batch that was not applied (its fence held) ran into."""
    ex = request.execution
    pointer = rows.get(CURRENT)
    if request.mode is CreateMode.BRAND_NEW:
        if pointer is not None:
            raise CurrentRunConditionFailed(
                _current_from(ex.namespace_id, ex.run_id, pointer),
                f"run_id {ex.run_id!r} already has an execution",
            )
    else:
        if pointer is None:
            raise ConditionFailed(f"run_id {ex.run_id!r} has no previous execution")
        existing = _current_from(ex.namespace_id, ex.run_id, pointer)
        if (
            existing.execution_id != request.previous_execution_id
            or existing.state is not RunState.CLOSED
        ):
            raise CurrentRunConditionFailed(
                existing,
                f"run_id {ex.run_id!r}: current execution is "
                f"{existing.execution_id} in state {existing.state.name}",
            )
    if EXECUTION in rows:
        raise AlreadyExists(f"execution {ex.execution_id} already exists")
    raise ConditionFailed(f"run_id {ex.run_id!r} changed concurrently")


def _update_failed(request: UpdateExecution, rows: dict[int, dict[str, Any]]) -> None:
    """Raise what a decision's batch that was not applied (its fence held) ran into."""
    ex = request.execution
    execution = rows.get(EXECUTION)
    if execution is None or execution.get("db_version") != request.expected_db_version:
        raise ConditionFailed(
            f"execution {ex.execution_id}: db_version is no longer {request.expected_db_version}"
        )
    raise ConditionFailed(f"run_id {ex.run_id!r}: current-run pointer changed concurrently")


Write = CreateExecution | UpdateExecution
"""A decision or a new run: a write with its own conditions in the shard's partition."""

MAX_GROUP = 64
"""Runs in one batch at most."""
MAX_GROUP_BYTES = 4 * 1024 * 1024
"""Bytes of state, events and tasks in one batch at most (a larger write goes alone). A
single-partition batch is exempt from Cassandra's batch size thresholds; this bounds the
mutation well under commitlog_segment_size / 2."""


def _key(request: Write) -> ExecutionKey:
    ex = request.execution
    return ExecutionKey(request.shard_id, ex.namespace_id, ex.run_id, ex.execution_id)


class _SplitGroup(PersistenceError):
    """A group's batch was not applied though its fence held: each write goes alone."""


class CassandraExecutionStore:
    def __init__(
        self, db: CassandraDatabase, history: CassandraHistoryStore, *, group_commit: bool = True
    ) -> None:
        self._db = db
        self._history = history
        self._group_commit = group_commit
        self._groups: dict[int, tuple[int, GroupCommit[Write]]] = {}
        """Per shard: the range_id its group fences with, and the group."""

    def group(self, shard_id: int) -> GroupCommit[Write] | None:
        """The group commit of a shard's writes (None when off or before its first write)."""
        found = self._groups.get(shard_id)
        return None if found is None else found[1]

    async def _write(self, request: Write) -> None:
        if not self._group_commit:
            await self._write_alone(request)
            return
        found = self._groups.get(request.shard_id)
        if found is None or found[0] != request.range_id:
            # A new owner's range: a fresh group (the old one's batches still finish, and
            # fail their fence, on their own).
            group = GroupCommit(
                self._write_alone,
                self._write_many,
                calls=1,  # one Paxos round per shard partition at a time
                max_group=MAX_GROUP,
                size=write_bytes,
                max_bytes=MAX_GROUP_BYTES,
            )
            found = self._groups[request.shard_id] = (request.range_id, group)
        await found[1].write(request)

    async def _write_many(self, requests: Sequence[Write]) -> list[PersistenceError | None]:
        """One batch for a group: each write's conditions behind one fence."""
        first = requests[0]
        shard_id, range_id = first.shard_id, first.range_id
        outcomes: list[PersistenceError | None] = [None] * len(requests)
        built = await asyncio.gather(
            *(self._statements(r) for r in requests), return_exceptions=True
        )
        batch: list[int] = []
        later: list[int] = []
        runs: set[tuple[str, str]] = set()
        for i, (request, statements) in enumerate(zip(requests, built, strict=True)):
            if isinstance(statements, PersistenceError):
                outcomes[i] = statements  # a read before the batch said no (a newer flow)
            elif isinstance(statements, BaseException):
                raise statements
            elif (run := (request.execution.namespace_id, request.execution.run_id)) in runs:
                later.append(i)
            else:
                runs.add(run)
                batch.append(i)
        statements_of = {i: built[i] for i in batch}
        all_statements: list[tuple[str, Params]] = [self._fence(shard_id, range_id)]
        for i in batch:
            listed = statements_of[i]
            assert isinstance(listed, list)
            all_statements += listed
        appended = [requests[i] for i in batch if requests[i].events]
        await self._history.append_many([(_key(r), r.events) for r in appended])
        result = await self._db.batch(all_statements)
        if not result.applied:
            shard = _rows_by_kind(result).get(SHARD)
            actual = None if shard is None else shard.get("range_id")
            if actual == range_id:
                raise _SplitGroup("a run's condition failed: each write goes alone")
            await asyncio.gather(
                *(self._history.delete_batches(_key(r), r.events) for r in appended)
            )
            lost = ShardOwnershipLost(
                shard_id=shard_id, expected_range_id=range_id, actual_range_id=actual
            )
            for i in batch:
                outcomes[i] = lost
        for i in later:
            try:
                await self._write_alone(requests[i])
            except PersistenceError as e:
                outcomes[i] = e
        return outcomes

    async def _statements(
        self, request: Write, *, pointer: bool = True
    ) -> list[tuple[str, Params]]:
        """A write's rows and conditions, without the fence (`pointer`: a closing decision
        closes the current-run pointer too, on the condition that it names this execution)."""
        if isinstance(request, CreateExecution):
            return await self._create_statements(request)
        return self._update_statements(request, pointer=pointer)

    async def _write_alone(self, request: Write) -> None:
        if request.events:
            await self._history.append_history(_key(request), list(request.events))
        pointer = True
        while True:
            statements = [
                self._fence(request.shard_id, request.range_id),
                *await self._statements(request, pointer=pointer),
            ]
            # A timeout raises (outcome unknown): the events stay; if the batch did not
            # commit they are leftovers that readers skip, since next_event_id never
            # covered them.
            result = await self._db.batch(statements)
            if result.applied:
                return
            rows = _rows_by_kind(result)
            if (
                pointer
                and isinstance(request, UpdateExecution)
                and request.current is not None
                and _fence_held(rows, request.range_id)
                and _version_held(rows, request.expected_db_version)
            ):
                pointer = False  # the pointer names another execution now: leave it
                continue
            if request.events:
                await self._history.delete_batches(_key(request), request.events)
            self._check_fence(rows, request.shard_id, request.range_id)
            if isinstance(request, CreateExecution):
                _create_failed(request, rows)
            else:
                _update_failed(request, rows)

    def _fence(self, shard_id: int, range_id: int) -> tuple[str, Params]:
        return (_FENCE, (range_id, *_shard_key(shard_id), range_id))

    def _outbox(
        self,
        shard_id: int,
        transfer: Sequence[TransferTaskRow],
        timers: Sequence[TimerTaskRow],
    ) -> list[tuple[str, Params]]:
        out: list[tuple[str, Params]] = [
            (_INSERT_TRANSFER, (shard_id, TRANSFER, t.task_id, t.data)) for t in transfer
        ]
        out += [
            (_INSERT_TIMER, (shard_id, TIMER, t.fire_time_ms, t.task_id, t.data)) for t in timers
        ]
        return out

    def _check_fence(self, rows: dict[int, dict[str, Any]], shard_id: int, range_id: int) -> None:
        shard = rows.get(SHARD)
        actual = None if shard is None else shard.get("range_id")
        if actual != range_id:
            raise ShardOwnershipLost(
                shard_id=shard_id, expected_range_id=range_id, actual_range_id=actual
            )

    async def create_execution(self, request: CreateExecution) -> None:
        await self._write(request)

    async def _create_statements(self, request: CreateExecution) -> list[tuple[str, Params]]:
        ex, cur, shard_id = request.execution, request.current, request.shard_id
        if request.flow_check is not None:
            # A read before the batch: flows live outside the shard's partition, so a
            # lightweight transaction cannot check them (a start racing a registration may
            # take either version, as with a read of the latest).
            check = request.flow_check
            newer = await self._db.execute(
                _NEWER_FLOW, (ex.namespace_id, check.name, check.version)
            )
            if newer.rows:
                raise FlowChanged(
                    f"flow {check.name!r}: version {newer.rows[0][0]} is newer than {check.version}"
                )
        current_key = _current_key(shard_id, ex.namespace_id, ex.run_id)
        statements: list[tuple[str, Params]] = []
        if request.mode is CreateMode.BRAND_NEW:
            statements.append(
                (
                    _INSERT_CURRENT,
                    (
                        *current_key,
                        cur.execution_id,
                        int(cur.state),
                        cur.status,
                        cur.start_request_id,
                    ),
                )
            )
        else:
            statements.append(
                (
                    _REUSE_CURRENT,
                    (
                        cur.execution_id,
                        int(cur.state),
                        cur.status,
                        cur.start_request_id,
                        *current_key,
                        request.previous_execution_id,
                        int(RunState.CLOSED),
                    ),
                )
            )
        statements.append(
            (
                _INSERT_EXECUTION,
                (
                    *_execution_key(shard_id, ex.namespace_id, ex.run_id, ex.execution_id),
                    ex.next_event_id,
                    ex.db_version,
                    int(ex.state),
                    ex.data,
                ),
            )
        )
        statements += self._outbox(shard_id, request.transfer_tasks, request.timer_tasks)
        return statements

    async def update_execution(self, request: UpdateExecution) -> None:
        await self._write(request)

    def _update_statements(
        self, request: UpdateExecution, *, pointer: bool
    ) -> list[tuple[str, Params]]:
        ex, shard_id = request.execution, request.shard_id
        statements: list[tuple[str, Params]] = [
            (
                _UPDATE_EXECUTION,
                (
                    ex.next_event_id,
                    ex.db_version,
                    int(ex.state),
                    ex.data,
                    *_execution_key(shard_id, ex.namespace_id, ex.run_id, ex.execution_id),
                    request.expected_db_version,
                ),
            ),
        ]
        if request.current is not None and pointer:
            # The pointer is only rewritten while it still names this execution. It nearly
            # always does (a run_id's pointer only moves away from an execution once that
            # execution is closed, and a closed execution makes no further decisions that
            # rewrite it), so the condition rides in the batch; when it alone fails, the
            # decision goes again without it.
            cur = request.current
            statements.append(
                (
                    _CLOSE_CURRENT,
                    (
                        int(cur.state),
                        cur.status,
                        cur.start_request_id,
                        *_current_key(shard_id, cur.namespace_id, cur.run_id),
                        ex.execution_id,
                    ),
                )
            )
        statements += self._outbox(shard_id, request.transfer_tasks, request.timer_tasks)
        return statements

    async def get_execution(self, key: ExecutionKey) -> ExecutionRow:
        found = await self._db.execute(
            f"SELECT next_event_id, db_version, state, data FROM {_T} WHERE {_ROW}",
            _execution_key(key.shard_id, key.namespace_id, key.run_id, key.execution_id),
        )
        if not found.rows or found.rows[0][1] is None:
            raise NotFound(f"execution {key.execution_id} of run_id {key.run_id!r} not found")
        next_event_id, db_version, state, data = found.rows[0]
        return ExecutionRow(
            namespace_id=key.namespace_id,
            run_id=key.run_id,
            execution_id=key.execution_id,
            next_event_id=next_event_id,
            db_version=db_version,
            state=RunState(state),
            data=bytes(data or b""),
        )

    async def get_current_run(self, shard_id: int, namespace_id: str, run_id: str) -> CurrentRunRow:
        found = await self._db.execute(
            f"SELECT current_execution_id, state, status, start_request_id FROM {_T} WHERE {_ROW}",
            _current_key(shard_id, namespace_id, run_id),
        )
        if not found.rows or found.rows[0][0] is None:
            raise NotFound(f"run_id {run_id!r} not found")
        execution_id, state, status, request_id = found.rows[0]
        return CurrentRunRow(
            namespace_id, run_id, execution_id, RunState(state), status, request_id
        )

    async def delete_execution(self, key: ExecutionKey) -> None:
        await self._db.execute(
            f"DELETE FROM {_T} WHERE {_ROW}",
            _execution_key(key.shard_id, key.namespace_id, key.run_id, key.execution_id),
        )
        result = await self._db.execute(
            f"DELETE FROM {_T} WHERE {_ROW} IF current_execution_id = ?",
            (*_current_key(key.shard_id, key.namespace_id, key.run_id), key.execution_id),
        )
        del result  # not applied: the pointer names another execution (or none)

    async def get_transfer_tasks(
        self, shard_id: int, *, min_task_id: int, max_task_id: int, limit: int
    ) -> list[TransferTaskRow]:
        found = await self._db.execute(
            f"SELECT task_id, data FROM {_T} WHERE {_KIND} AND fire_time_ms = 0"
            " AND task_id > ? AND task_id <= ? LIMIT ?",
            (shard_id, TRANSFER, min_task_id, max_task_id, limit),
        )
        return [TransferTaskRow(task_id=r[0], data=bytes(r[1] or b"")) for r in found.rows]

    async def complete_transfer_task(self, shard_id: int, task_id: int) -> None:
        await self._db.execute(
            f"DELETE FROM {_T} WHERE {_KIND} AND fire_time_ms = 0 AND task_id = ?",
            (shard_id, TRANSFER, task_id),
        )

    async def range_complete_transfer_tasks(self, shard_id: int, *, max_task_id: int) -> None:
        await self._db.execute(
            f"DELETE FROM {_T} WHERE {_KIND} AND fire_time_ms = 0 AND task_id <= ?",
            (shard_id, TRANSFER, max_task_id),
        )

    async def get_timer_tasks(
        self,
        shard_id: int,
        *,
        after: tuple[int, int],
        fire_before_ms: int,
        limit: int,
    ) -> list[TimerTaskRow]:
        found = await self._db.execute(
            f"SELECT fire_time_ms, task_id, data FROM {_T} WHERE {_KIND}"
            " AND (fire_time_ms, task_id) > (?, ?) AND (fire_time_ms, task_id) < (?, ?) LIMIT ?",
            (shard_id, TIMER, after[0], after[1], fire_before_ms, -(2**63), limit),
        )
        return [
            TimerTaskRow(fire_time_ms=r[0], task_id=r[1], data=bytes(r[2] or b""))
            for r in found.rows
        ]

    async def complete_timer_task(self, shard_id: int, *, fire_time_ms: int, task_id: int) -> None:
        await self._db.execute(
            f"DELETE FROM {_T} WHERE {_KIND} AND fire_time_ms = ? AND task_id = ?",
            (shard_id, TIMER, fire_time_ms, task_id),
        )

    async def range_complete_timer_tasks(self, shard_id: int, *, fire_before_ms: int) -> None:
        await self._db.execute(
            f"DELETE FROM {_T} WHERE {_KIND} AND fire_time_ms < ?",
            (shard_id, TIMER, fire_before_ms),
        )
