"""PostgreSQL's fast paths for decisions and for a new run: one statement, one round trip.

The shared SQL store commits a decision as a transaction of several statements (fence read,
conditional update, one insert per table). Here the same steps are one data-modifying CTE in
one implicit transaction: the shard row is share-locked and checked, the execution updated
on its db_version, and the history batch and outbox rows inserted only if that update
happened. Fencing is unchanged: an acquisition (which updates the shard row) waits for this
statement or makes its fence check fail.

Concurrent decisions go together (group commit, see persistence/group.py), and a lone one is a group
of one: the statement updates any number of runs, of any of the host's shards, each on its
own db_version and behind its own shard's fence, and inserts the outputs of those whose
update happened; it returns the fences it saw and which updates happened, so each decision
gets the outcome it would have had alone.

A brand-new run is one CTE too: the run_id's pointer is inserted if the fence holds, no
pointer exists and (with a flow check) no newer version of the flow is registered, and
everything else only if it was. When it was not, nothing was written and
the shared transactional path runs instead, to report the exact condition that failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tideflow_server.persistence.errors import (
    ConditionFailed,
    PersistenceError,
    ShardOwnershipLost,
)
from tideflow_server.persistence.group import GroupCommit
from tideflow_server.persistence.records import (
    CreateExecution,
    CreateMode,
    UpdateExecution,
    write_bytes,
)
from tideflow_server.persistence.sql._database import Row
from tideflow_server.persistence.sql._execution import SqlExecutionStore

if TYPE_CHECKING:
    from tideflow_server.persistence.postgres._database import PostgresDatabase


def _outputs(guard: str, first: int) -> str:
    """The CTEs that insert a commit's history batches and outbox tasks, only if the CTE
    `guard` returned a row; their nine arrays are parameters $first.. (see `_output_args`)."""
    p = [f"${first + i}" for i in range(9)]
    return f"""
), hist AS (
  INSERT INTO history_batches
    (shard_id, namespace_id, run_id, execution_id, first_event_id, txn_id, event_count, data)
  SELECT $1, $2, $3, $4, h.f, h.t, h.c, h.d
  FROM unnest({p[0]}::bigint[], {p[1]}::bigint[], {p[2]}::int[], {p[3]}::bytea[]) AS h(f, t, c, d)
  WHERE EXISTS (SELECT 1 FROM {guard})
  RETURNING 1
), transfer AS (
  INSERT INTO transfer_tasks (shard_id, task_id, data)
  SELECT $1, x.i, x.d FROM unnest({p[4]}::bigint[], {p[5]}::bytea[]) AS x(i, d)
  WHERE EXISTS (SELECT 1 FROM {guard})
  RETURNING 1
), timer AS (
  INSERT INTO timer_tasks (shard_id, fire_time_ms, task_id, data)
  SELECT $1, x.f, x.i, x.d
  FROM unnest({p[6]}::bigint[], {p[7]}::bigint[], {p[8]}::bytea[]) AS x(f, i, d)
  WHERE EXISTS (SELECT 1 FROM {guard})
  RETURNING 1
)"""


def _output_args(request: CreateExecution | UpdateExecution) -> list[list[Any]]:
    return [
        [b.first_event_id for b in request.events],
        [b.txn_id for b in request.events],
        [b.event_count for b in request.events],
        [b.data for b in request.events],
        [t.task_id for t in request.transfer_tasks],
        [t.data for t in request.transfer_tasks],
        [t.fire_time_ms for t in request.timer_tasks],
        [t.task_id for t in request.timer_tasks],
        [t.data for t in request.timer_tasks],
    ]


def _fenced(found: Row | None, request: CreateExecution | UpdateExecution) -> int:
    """The rows a fast-path statement wrote, once its fence check is known to have held:
    its result row is (the shard's range_id, the count)."""
    assert found is not None
    fenced_at, count = found[0], found[1]
    if fenced_at != request.range_id:
        raise ShardOwnershipLost(
            shard_id=request.shard_id,
            expected_range_id=request.range_id,
            actual_range_id=fenced_at,
        )
    return int(count)


_CREATE = f"""
WITH fence AS (
  SELECT range_id FROM shards WHERE shard_id = $1 FOR SHARE
), cur AS (
  INSERT INTO current_runs
    (shard_id, namespace_id, run_id, execution_id, state, status, start_request_id)
  SELECT $1, $2, $3, $4, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM fence WHERE range_id = $5)
    AND ($22::text IS NULL OR NOT EXISTS (
      SELECT 1 FROM flows WHERE namespace_id = $2 AND name = $22 AND version > $23))
  ON CONFLICT DO NOTHING
  RETURNING 1
), ex AS (
  INSERT INTO executions
    (shard_id, namespace_id, run_id, execution_id, next_event_id, db_version, state, data)
  SELECT $1, $2, $3, $4, $9, $10, $11, $12 WHERE EXISTS (SELECT 1 FROM cur)
  RETURNING 1{_outputs("cur", 13)}
SELECT (SELECT range_id FROM fence), (SELECT count(*) FROM cur)
"""


_DECIDE_MANY = """
WITH req AS (
  SELECT * FROM unnest($1::int[], $2::int[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                       $7::bigint[], $8::bigint[], $9::int[], $10::bytea[], $11::bigint[])
    AS r(i, shard_id, namespace_id, run_id, execution_id, range_id,
         next_event_id, db_version, state, data, expected)
), fence AS (
  SELECT shard_id, range_id FROM shards WHERE shard_id IN (SELECT shard_id FROM req) FOR SHARE
), upd AS (
  UPDATE executions e
  SET next_event_id = r.next_event_id, db_version = r.db_version, state = r.state, data = r.data
  FROM req r JOIN fence f ON f.shard_id = r.shard_id AND f.range_id = r.range_id
  WHERE e.shard_id = r.shard_id AND e.namespace_id = r.namespace_id AND e.run_id = r.run_id
    AND e.execution_id = r.execution_id AND e.db_version = r.expected
  RETURNING r.i
), cur AS (
  UPDATE current_runs c SET state = x.state, status = x.status, start_request_id = x.request_id
  FROM unnest($12::int[], $13::int[], $14::int[], $15::text[]) AS x(i, state, status, request_id)
  JOIN req r ON r.i = x.i
  WHERE c.shard_id = r.shard_id AND c.namespace_id = r.namespace_id AND c.run_id = r.run_id
    AND c.execution_id = r.execution_id AND x.i IN (SELECT i FROM upd)
  RETURNING 1
), hist AS (
  INSERT INTO history_batches
    (shard_id, namespace_id, run_id, execution_id, first_event_id, txn_id, event_count, data)
  SELECT r.shard_id, r.namespace_id, r.run_id, r.execution_id, h.f, h.t, h.c, h.d
  FROM unnest($16::int[], $17::bigint[], $18::bigint[], $19::int[], $20::bytea[])
    AS h(i, f, t, c, d)
  JOIN req r ON r.i = h.i WHERE h.i IN (SELECT i FROM upd)
  RETURNING 1
), transfer AS (
  INSERT INTO transfer_tasks (shard_id, task_id, data)
  SELECT r.shard_id, x.t, x.d FROM unnest($21::int[], $22::bigint[], $23::bytea[]) AS x(i, t, d)
  JOIN req r ON r.i = x.i WHERE x.i IN (SELECT i FROM upd)
  RETURNING 1
), timer AS (
  INSERT INTO timer_tasks (shard_id, fire_time_ms, task_id, data)
  SELECT r.shard_id, x.f, x.t, x.d
  FROM unnest($24::int[], $25::bigint[], $26::bigint[], $27::bytea[]) AS x(i, f, t, d)
  JOIN req r ON r.i = x.i WHERE x.i IN (SELECT i FROM upd)
  RETURNING 1
)
SELECT (SELECT array_agg(shard_id) FROM fence), (SELECT array_agg(range_id) FROM fence),
       (SELECT array_agg(i) FROM upd)
"""


def _decide_many_args(requests: Sequence[UpdateExecution]) -> list[list[Any]]:
    """The 27 arrays of `_DECIDE_MANY`: one row per request (its index `i`), and each output
    row tagged with the index of its request."""
    args: list[list[Any]] = [[] for _ in range(27)]
    for i, request in enumerate(requests):
        ex = request.execution
        row = (
            i,
            request.shard_id,
            ex.namespace_id,
            ex.run_id,
            ex.execution_id,
            request.range_id,
            ex.next_event_id,
            ex.db_version,
            int(ex.state),
            ex.data,
            request.expected_db_version,
        )
        for column, value in enumerate(row):
            args[column].append(value)
        if request.current is not None:
            cur = request.current
            for column, value in enumerate((i, int(cur.state), cur.status, cur.start_request_id)):
                args[11 + column].append(value)
        for b in request.events:
            for column, value in enumerate((i, b.first_event_id, b.txn_id, b.event_count, b.data)):
                args[15 + column].append(value)
        for t in request.transfer_tasks:
            for column, value in enumerate((i, t.task_id, t.data)):
                args[20 + column].append(value)
        for timer in request.timer_tasks:
            for column, value in enumerate((i, timer.fire_time_ms, timer.task_id, timer.data)):
                args[23 + column].append(value)
    return args


def _outcomes(
    found: Row | None, requests: Sequence[UpdateExecution]
) -> list[PersistenceError | None]:
    """Each request's outcome from `_DECIDE_MANY`'s row (fenced shards and ranges, updated
    indexes): what the single statement would have raised for it, or None."""
    assert found is not None
    fences = dict(zip(found[0] or (), found[1] or (), strict=True))
    updated = set(found[2] or ())
    outcomes: list[PersistenceError | None] = []
    for i, request in enumerate(requests):
        fenced_at = fences.get(request.shard_id)
        if fenced_at != request.range_id:
            outcomes.append(
                ShardOwnershipLost(
                    shard_id=request.shard_id,
                    expected_range_id=request.range_id,
                    actual_range_id=fenced_at,
                )
            )
        elif i in updated:
            outcomes.append(None)
        else:
            outcomes.append(_stale(request))
    return outcomes


def _stale(request: UpdateExecution) -> ConditionFailed:
    return ConditionFailed(
        f"execution {request.execution.execution_id}: db_version is no longer "
        f"{request.expected_db_version}"
    )


MAX_GROUP = 64
"""Decisions in one statement at most."""
MAX_GROUP_BYTES = 4 * 1024 * 1024
"""Bytes of state, events and tasks in one statement at most (a larger decision goes alone)."""


class PostgresExecutionStore(SqlExecutionStore):
    def __init__(self, db: PostgresDatabase, *, group_commit_calls: int = 2) -> None:
        super().__init__(db)
        self._pg = db
        self._group: GroupCommit[UpdateExecution] | None = (
            GroupCommit(
                self._update_one,
                self._update_many,
                calls=group_commit_calls,
                max_group=MAX_GROUP,
                size=write_bytes,
                max_bytes=MAX_GROUP_BYTES,
            )
            if group_commit_calls > 0
            else None
        )

    @property
    def group(self) -> GroupCommit[UpdateExecution] | None:
        """The group commit of decisions (None when off)."""
        return self._group

    async def create_execution(self, request: CreateExecution) -> None:
        if request.mode is not CreateMode.BRAND_NEW:
            await super().create_execution(request)
            return
        ex = request.execution
        cur = request.current
        check = request.flow_check
        async with self._pg.read() as conn:  # autocommit: the statement is its transaction
            found = await conn.fetchone_native(
                _CREATE,
                request.shard_id,
                ex.namespace_id,
                ex.run_id,
                ex.execution_id,
                request.range_id,
                int(cur.state),
                cur.status,
                cur.start_request_id,
                ex.next_event_id,
                ex.db_version,
                int(ex.state),
                ex.data,
                *_output_args(request),
                check.name if check else None,
                check.version if check else 0,
            )
        if _fenced(found, request) != 1:
            # Nothing was written: the transactional path finds and reports the pointer that
            # is in the way or the newer flow version (or, if neither is there any more,
            # creates the run).
            await super().create_execution(request)

    async def update_execution(self, request: UpdateExecution) -> None:
        if self._group is None:
            await self._update_one(request)
        else:
            await self._group.write(request)

    async def _update_many(
        self, requests: Sequence[UpdateExecution]
    ) -> list[PersistenceError | None]:
        async with self._pg.read() as conn:  # autocommit: the statement is its transaction
            found = await conn.fetchone_native(_DECIDE_MANY, *_decide_many_args(requests))
        return _outcomes(found, requests)

    async def _update_one(self, request: UpdateExecution) -> None:
        """A lone decision: the group's statement with one row."""
        [outcome] = await self._update_many([request])
        if outcome is not None:
            raise outcome
