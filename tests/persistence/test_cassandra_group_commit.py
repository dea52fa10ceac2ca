"""Cassandra's group commit: a shard's concurrent decisions and new runs go as one
conditional batch in its partition, and each still gets exactly the outcome it would have
had alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import open_cassandra_keyspace
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
    ConditionFailed,
    CurrentRunConditionFailed,
    ShardOwnershipLost,
)
from tideflow_server.persistence.cassandra import CassandraPersistence
from tideflow_server.persistence.cassandra._execution import CassandraExecutionStore
from tideflow_server.persistence.records import (
    RunState,
    TransferTaskRow,
)


@pytest.fixture
async def cass(cassandra_port: int, tmp_path: Path) -> AsyncIterator[CassandraPersistence]:
    opened = await open_cassandra_keyspace(cassandra_port, tmp_path)
    try:
        yield opened
    finally:
        with contextlib.suppress(Exception):
            await opened.db.session.simple(f"DROP KEYSPACE IF EXISTS {opened.db.keyspace}")
        await opened.close()


def _statements(persistence: CassandraPersistence, shard_id: int) -> int:
    store = persistence.executions
    assert isinstance(store, CassandraExecutionStore)
    group = store.group(shard_id)
    return 0 if group is None else group.statements


async def _transfer_ids(persistence: CassandraPersistence, shard_id: int) -> set[int]:
    found = await persistence.executions.get_transfer_tasks(
        shard_id, min_task_id=0, max_task_id=2**62, limit=1000
    )
    return {t.task_id for t in found}


async def test_concurrent_writes_of_a_shard_go_as_few_batches(
    cass: CassandraPersistence,
) -> None:
    """New runs and decisions of one shard, all at once: fewer batches than writes, and
    every write landed with its events, outbox tasks and (for a close) its pointer."""
    r = await acquire(cass)
    [first] = await created_runs(cass, 1, shard_id=1, range_id=r)  # the shard's group now exists
    creates = [new_execution(f"new-{n}", range_id=r) for n in range(10)]
    before = _statements(cass, 1)

    await asyncio.gather(*(cass.executions.create_execution(c) for c in creates))
    middle = _statements(cass, 1)
    decisions = [group_decision(c, n, close=n % 3 == 0) for n, c in enumerate([first, *creates])]
    await asyncio.gather(*(cass.executions.update_execution(d) for d in decisions))

    assert middle - before < len(creates)
    assert _statements(cass, 1) - middle < len(decisions)
    assert [await landed(cass, d) for d in decisions] == [True] * len(decisions)
    assert await _transfer_ids(cass, 1) == {t.task_id for d in decisions for t in d.transfer_tasks}
    closed = await cass.executions.get_current_run(1, NAMESPACE, first.execution.run_id)
    assert closed.state is RunState.CLOSED
    still_open = await cass.executions.get_current_run(1, NAMESPACE, creates[0].execution.run_id)
    assert still_open.state is RunState.RUNNING


async def test_a_stale_owners_batch_changes_nothing(cass: CassandraPersistence) -> None:
    """Another host took the shard: every write of the group fails its fence, and none of
    their executions, events, pointers or outbox rows are stored."""
    old = await acquire(cass)
    creates = await created_runs(cass, 4, shard_id=1, range_id=old)
    new = await acquire(cass)
    decisions = [group_decision(c, n) for n, c in enumerate(creates)]
    newcomer = new_execution("newcomer", range_id=old)

    results = await asyncio.gather(
        *(cass.executions.update_execution(d) for d in decisions),
        cass.executions.create_execution(newcomer),
        return_exceptions=True,
    )

    assert all(isinstance(res, ShardOwnershipLost) for res in results), results
    assert all(
        (res.expected_range_id, res.actual_range_id) == (old, new)
        for res in results
        if isinstance(res, ShardOwnershipLost)
    )
    assert [await landed(cass, d) for d in decisions] == [False] * 4
    assert await _transfer_ids(cass, 1) == set()
    with pytest.raises(Exception, match="not found"):
        await cass.executions.get_current_run(1, NAMESPACE, "newcomer")


async def test_a_conflicting_run_fails_alone_and_the_others_commit(
    cass: CassandraPersistence,
) -> None:
    """One decision is stale (its db_version moved on): the group's batch is not applied,
    each write goes again alone, and only the stale one fails, writing nothing."""
    r = await acquire(cass)
    creates = await created_runs(cass, 5, shard_id=1, range_id=r)
    decisions = [group_decision(c, n) for n, c in enumerate(creates)]
    stale = next_step(
        creates[2].execution,
        range_id=r,
        events=[batch(3, 1, txn=(r << 20) + 999)],
        transfer=[TransferTaskRow(task_id=(r << 20) + 998, data=b"stale")],
        expected_db_version=7,  # not what is stored
    )
    writes = [*decisions[:2], stale, *decisions[3:]]
    before = _statements(cass, 1)

    results = await asyncio.gather(
        *(cass.executions.update_execution(d) for d in writes), return_exceptions=True
    )

    assert isinstance(results[2], ConditionFailed)
    assert [res for n, res in enumerate(results) if n != 2] == [None] * 4
    assert _statements(cass, 1) - before == 1 + len(writes)  # the group, then each alone
    assert [await landed(cass, d) for d in writes if d is not stale] == [True] * 4
    assert (
        await cass.executions.get_execution(
            key(creates[2].execution.run_id, creates[2].execution.execution_id)
        )
        == creates[2].execution
    )
    assert (r << 20) + 998 not in await _transfer_ids(cass, 1)


async def test_two_starts_of_one_run_id_in_a_group_let_exactly_one_win(
    cass: CassandraPersistence,
) -> None:
    """Two new executions for one run_id come together: a run is in a batch at most once,
    so the second goes alone after it and finds the first's pointer."""
    r = await acquire(cass)
    await created_runs(cass, 1, shard_id=1, range_id=r)
    a = new_execution("twice", execution_id="e-a", range_id=r)
    b = new_execution("twice", execution_id="e-b", range_id=r)

    results = await asyncio.gather(
        cass.executions.create_execution(a),
        cass.executions.create_execution(b),
        return_exceptions=True,
    )

    assert results[0] is None
    assert isinstance(results[1], CurrentRunConditionFailed)
    pointer = await cass.executions.get_current_run(1, NAMESPACE, "twice")
    assert pointer.execution_id == "e-a"
