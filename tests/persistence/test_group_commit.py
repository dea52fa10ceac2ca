"""PostgreSQL's group commit of decisions: concurrent decisions of many runs go as one
statement, and each still gets exactly the outcome it would have had alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import pytest

from tests.persistence.builders import (
    NAMESPACE,
    acquire,
    batch,
    created_runs,
    group_decision,
    key,
    landed,
    new_execution,
    next_step,
)
from tideflow_server.persistence import (
    AlreadyExists,
    ConditionFailed,
    ShardOwnershipLost,
    Unavailable,
)
from tideflow_server.persistence.postgres import open_postgres
from tideflow_server.persistence.postgres._execution import PostgresExecutionStore
from tideflow_server.persistence.records import (
    RunState,
    TransferTaskRow,
)
from tideflow_server.persistence.sql import SqlPersistence


@pytest.fixture
async def pg(postgres_dsn: str) -> AsyncIterator[SqlPersistence]:
    opened = await open_postgres(postgres_dsn, min_connections=1, max_connections=4)
    try:
        yield opened
    finally:
        await opened.close()


def _statements(persistence: SqlPersistence) -> int:
    store = persistence.executions
    assert isinstance(store, PostgresExecutionStore) and store.group is not None
    return store.group.statements


async def _task_ids(persistence: SqlPersistence, shard_id: int) -> tuple[set[int], set[int]]:
    transfer = await persistence.executions.get_transfer_tasks(
        shard_id, min_task_id=0, max_task_id=2**62, limit=1000
    )
    timers = await persistence.executions.get_timer_tasks(
        shard_id, after=(0, 0), fire_before_ms=10**12, limit=1000
    )
    return {t.task_id for t in transfer}, {t.task_id for t in timers}


async def test_concurrent_decisions_of_two_shards_land_in_fewer_statements(
    pg: SqlPersistence,
) -> None:
    r1 = await acquire(pg, 1)
    r2 = await acquire(pg, 2)
    creates = await created_runs(pg, 12, shard_id=1, range_id=r1) + await created_runs(
        pg, 12, shard_id=2, range_id=r2
    )
    decisions = [group_decision(c, n, close=n % 3 == 0) for n, c in enumerate(creates)]
    before = _statements(pg)

    results = await asyncio.gather(*(pg.executions.update_execution(d) for d in decisions))

    assert results == [None] * len(decisions)
    assert _statements(pg) - before < len(decisions)
    for d in decisions:
        assert await landed(pg, d)
    for shard_id in (1, 2):
        transfer, timers = await _task_ids(pg, shard_id)
        mine = [d for d in decisions if d.shard_id == shard_id]
        assert transfer == {t.task_id for d in mine for t in d.transfer_tasks}
        assert timers == {t.task_id for d in mine for t in d.timer_tasks}
    closed = await pg.executions.get_current_run(1, NAMESPACE, creates[0].execution.run_id)
    assert closed is not None and closed.state == RunState.CLOSED
    still_open = await pg.executions.get_current_run(1, NAMESPACE, creates[1].execution.run_id)
    assert still_open is not None and still_open.state == RunState.RUNNING


async def test_a_group_gives_each_decision_its_own_outcome(pg: SqlPersistence) -> None:
    """A stale decision fails with ConditionFailed and one for a shard another host took
    with ShardOwnershipLost; neither writes anything, and the others of the group land."""
    r1 = await acquire(pg, 1)
    old_r2 = await acquire(pg, 2)
    good = await created_runs(pg, 4, shard_id=1, range_id=r1)
    [moved] = await created_runs(pg, 1, shard_id=2, range_id=old_r2)
    new_r2 = await acquire(pg, 2)  # another host took shard 2
    decisions = [group_decision(c, n) for n, c in enumerate(good)]
    stale = next_step(
        good[0].execution,
        range_id=r1,
        events=[batch(3, 1, txn=(r1 << 20) + 999)],
        transfer=[TransferTaskRow(task_id=(r1 << 20) + 998, data=b"stale")],
        expected_db_version=7,  # not what is stored
    )
    fenced = group_decision(moved, 50)
    before = _statements(pg)

    results = await asyncio.gather(
        *(pg.executions.update_execution(d) for d in [stale, *decisions[1:], fenced]),
        return_exceptions=True,
    )

    assert _statements(pg) - before == 1  # all of them in one statement
    assert isinstance(results[0], ConditionFailed)
    assert results[1:-1] == [None] * 3
    lost = results[-1]
    assert isinstance(lost, ShardOwnershipLost)
    assert (lost.expected_range_id, lost.actual_range_id) == (old_r2, new_r2)
    assert [await landed(pg, d) for d in decisions[1:]] == [True] * 3
    assert not await landed(pg, fenced)
    assert (
        await pg.executions.get_execution(
            key(good[0].execution.run_id, good[0].execution.execution_id)
        )
        == good[0].execution
    )
    transfer, _ = await _task_ids(pg, 1)
    assert (r1 << 20) + 998 not in transfer
    assert await _task_ids(pg, 2) == (set(), set())


async def test_a_refused_group_is_written_one_by_one(pg: SqlPersistence) -> None:
    """A decision whose outbox task id is taken makes the server refuse the whole statement;
    then each decision goes alone, so only that one fails."""
    r = await acquire(pg)
    creates = await created_runs(pg, 5, shard_id=1, range_id=r)
    taken = (r << 20) + 200 + 2
    blocker = new_execution(
        "blocker", range_id=r, transfer=[TransferTaskRow(task_id=taken, data=b"first")]
    )
    await pg.executions.create_execution(blocker)
    decisions = [group_decision(c, n) for n, c in enumerate(creates)]
    before = _statements(pg)

    results = await asyncio.gather(
        *(pg.executions.update_execution(d) for d in decisions), return_exceptions=True
    )

    assert isinstance(results[2], AlreadyExists)
    assert [res for n, res in enumerate(results) if n != 2] == [None] * 4
    assert _statements(pg) - before == 1 + len(decisions)
    assert [await landed(pg, d) for d in decisions] == [True, True, False, True, True]


async def test_a_lone_decision_goes_at_once_without_a_group(pg: SqlPersistence) -> None:
    r = await acquire(pg)
    [create] = await created_runs(pg, 1, shard_id=1, range_id=r)
    before = _statements(pg)
    decision = group_decision(create, 0)
    await pg.executions.update_execution(decision)
    assert _statements(pg) - before == 1
    assert await landed(pg, decision)


async def test_a_group_whose_connection_is_lost_leaves_every_decision_unknown(
    pg: SqlPersistence, postgres_dsn: str
) -> None:
    """The group's statement waits on the shard row (an acquisition holds it); its backend is
    killed. Each decision of the group gets Unavailable (outcome unknown, as for a lone
    write), and none of them landed."""
    r = await acquire(pg)
    creates = await created_runs(pg, 3, shard_id=1, range_id=r)
    decisions = [group_decision(c, n) for n, c in enumerate(creates)]
    holder = await asyncpg.connect(postgres_dsn)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM shards WHERE shard_id = 1 FOR UPDATE")
        writes = asyncio.gather(
            *(pg.executions.update_execution(d) for d in decisions), return_exceptions=True
        )
        async with asyncio.timeout(10):
            while True:  # nothing to await: the server says when the statement waits
                waiting = await holder.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%unnest%' LIMIT 1"
                )
                if waiting is not None:
                    break
                await asyncio.sleep(0.01)
        await holder.execute("SELECT pg_terminate_backend($1)", waiting)
        async with asyncio.timeout(10):  # a retry of the group would wait on the lock
            results = await writes
        await held.rollback()
    finally:
        await holder.close()

    assert all(isinstance(res, Unavailable) for res in results), results
    assert [await landed(pg, d) for d in decisions] == [False] * 3


async def test_large_decisions_go_in_groups_of_bounded_size(pg: SqlPersistence) -> None:
    """Four decisions of 1.5 MiB of state each: two per statement under the 4 MiB bound."""
    r = await acquire(pg)
    creates = await created_runs(pg, 4, shard_id=1, range_id=r)
    decisions = [
        replace(d, execution=replace(d.execution, data=bytes([n]) * (1536 * 1024)))
        for n, d in enumerate(group_decision(c, n) for n, c in enumerate(creates))
    ]
    before = _statements(pg)

    await asyncio.gather(*(pg.executions.update_execution(d) for d in decisions))

    assert _statements(pg) - before == 2
    assert [await landed(pg, d) for d in decisions] == [True] * 4
