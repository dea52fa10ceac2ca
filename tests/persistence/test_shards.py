"""Shard ownership: acquisition bumps range_id, and every write is fenced by it."""

from __future__ import annotations

import asyncio

import pytest

from tests.persistence.builders import acquire, all_history, batch, key, new_execution, next_step
from tideflow_server.persistence import AlreadyExists, NotFound, ShardOwnershipLost
from tideflow_server.persistence.records import ShardRow, TransferTaskRow
from tideflow_server.persistence.sql import SqlPersistence


async def test_missing_shard_is_not_found(persistence: SqlPersistence) -> None:
    with pytest.raises(NotFound):
        await persistence.shards.get_shard(7)


async def test_shard_is_created_once(persistence: SqlPersistence) -> None:
    await persistence.shards.create_shard(ShardRow(shard_id=3, range_id=0, data=b"a"))
    with pytest.raises(AlreadyExists):
        await persistence.shards.create_shard(ShardRow(shard_id=3, range_id=5, data=b"b"))
    assert await persistence.shards.get_shard(3) == ShardRow(shard_id=3, range_id=0, data=b"a")


async def test_acquisition_increments_range_id(persistence: SqlPersistence) -> None:
    assert await acquire(persistence) == 1
    assert await acquire(persistence) == 2
    assert (await persistence.shards.get_shard(1)).range_id == 2


async def test_update_with_stale_range_id_is_ownership_lost(persistence: SqlPersistence) -> None:
    await acquire(persistence)
    await acquire(persistence)  # another host took over at range 2
    stale = ShardRow(shard_id=1, range_id=2, data=b"stale owner's ack levels")
    with pytest.raises(ShardOwnershipLost) as lost:
        await persistence.shards.update_shard(stale, previous_range_id=1)
    assert lost.value.actual_range_id == 2
    assert (await persistence.shards.get_shard(1)).data == b""


async def test_fence_changes_nothing_and_holds_only_for_the_owner(
    persistence: SqlPersistence,
) -> None:
    await persistence.shards.create_shard(ShardRow(shard_id=1, range_id=0, data=b""))
    await persistence.shards.update_shard(
        ShardRow(shard_id=1, range_id=3, data=b"ack levels"), previous_range_id=0
    )
    await persistence.shards.fence(1, 3)
    with pytest.raises(ShardOwnershipLost) as lost:
        await persistence.shards.fence(1, 2)  # an owner that was taken over
    assert lost.value.actual_range_id == 3
    assert await persistence.shards.get_shard(1) == ShardRow(
        shard_id=1, range_id=3, data=b"ack levels"
    )


async def test_concurrent_acquisitions_one_wins(persistence: SqlPersistence) -> None:
    await persistence.shards.create_shard(ShardRow(shard_id=1, range_id=4, data=b""))
    contenders = [ShardRow(shard_id=1, range_id=5, data=f"host {i}".encode()) for i in range(4)]
    results = await asyncio.gather(
        *(persistence.shards.update_shard(c, previous_range_id=4) for c in contenders),
        return_exceptions=True,
    )
    winners = [c for c, r in zip(contenders, results, strict=True) if r is None]
    assert len(winners) == 1
    assert all(isinstance(r, ShardOwnershipLost) for r in results if r is not None)
    assert (await persistence.shards.get_shard(1)).data == winners[0].data


async def test_stale_owner_update_changes_nothing(persistence: SqlPersistence) -> None:
    """The fencing invariant: once a new owner acquired the shard, the old owner's decision
    (state, events, outbox) is rejected whole."""
    old_range = await acquire(persistence)
    create = new_execution("order-1", range_id=old_range)
    await persistence.executions.create_execution(create)
    k = key("order-1", create.execution.execution_id)

    await acquire(persistence)  # the shard moves to a new owner

    step = next_step(
        create.execution,
        range_id=old_range,
        events=[batch(3, 2, txn=(old_range << 20) + 1)],
        transfer=[TransferTaskRow(task_id=(old_range << 20) + 2, data=b"push block")],
    )
    with pytest.raises(ShardOwnershipLost) as lost:
        await persistence.executions.update_execution(step)
    assert lost.value.expected_range_id == old_range

    assert await persistence.executions.get_execution(k) == create.execution
    assert [b.first_event_id for b in await all_history(persistence, k)] == [1]
    transfer = await persistence.executions.get_transfer_tasks(
        1, min_task_id=0, max_task_id=2**62, limit=10
    )
    assert transfer == []


async def test_stale_owner_create_changes_nothing(persistence: SqlPersistence) -> None:
    old_range = await acquire(persistence)
    await acquire(persistence)
    create = new_execution("order-2", range_id=old_range)
    with pytest.raises(ShardOwnershipLost):
        await persistence.executions.create_execution(create)
    with pytest.raises(NotFound):
        await persistence.executions.get_current_run(1, "ns-1", "order-2")
    with pytest.raises(NotFound):
        await persistence.executions.get_execution(key("order-2", create.execution.execution_id))


async def test_new_owner_writes_after_takeover(persistence: SqlPersistence) -> None:
    old_range = await acquire(persistence)
    create = new_execution("order-3", range_id=old_range)
    await persistence.executions.create_execution(create)
    new_range = await acquire(persistence)
    await persistence.executions.update_execution(
        next_step(create.execution, range_id=new_range, events=[batch(3, txn=new_range << 20)])
    )
    k = key("order-3", create.execution.execution_id)
    assert (await persistence.executions.get_execution(k)).db_version == 2
