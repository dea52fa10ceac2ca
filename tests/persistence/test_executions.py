"""Executions, their current-run pointers, and optimistic concurrency on db_version."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from tests.persistence.builders import (
    NAMESPACE,
    acquire,
    all_history,
    batch,
    key,
    new_execution,
    next_step,
)
from tideflow_server.persistence import (
    ConditionFailed,
    CurrentRunConditionFailed,
    FlowChanged,
    NotFound,
)
from tideflow_server.persistence.records import (
    CreateMode,
    FlowCheck,
    FlowRow,
    RunState,
    TimerTaskRow,
    TransferTaskRow,
)
from tideflow_server.persistence.sql import SqlPersistence


async def test_create_commits_state_pointer_events_and_outbox(persistence: SqlPersistence) -> None:
    r = await acquire(persistence)
    create = new_execution(
        "doc-1",
        range_id=r,
        transfer=[TransferTaskRow(task_id=(r << 20) + 1, data=b"block task")],
        timers=[TimerTaskRow(fire_time_ms=5_000, task_id=(r << 20) + 2, data=b"run timeout")],
    )
    await persistence.executions.create_execution(create)
    k = key("doc-1", create.execution.execution_id)

    assert await persistence.executions.get_execution(k) == create.execution
    assert await persistence.executions.get_current_run(1, NAMESPACE, "doc-1") == create.current
    assert await all_history(persistence, k) == list(create.events)
    assert await persistence.executions.get_transfer_tasks(
        1, min_task_id=0, max_task_id=2**62, limit=10
    ) == list(create.transfer_tasks)
    assert await persistence.executions.get_timer_tasks(
        1, after=(0, 0), fire_before_ms=10_000, limit=10
    ) == list(create.timer_tasks)


async def test_update_with_stale_db_version_changes_nothing(persistence: SqlPersistence) -> None:
    r = await acquire(persistence)
    create = new_execution("doc-2", range_id=r)
    await persistence.executions.create_execution(create)
    first = next_step(create.execution, range_id=r, events=[batch(3, txn=(r << 20) + 1)])
    await persistence.executions.update_execution(first)

    # A decision taken on the state before `first` must not land.
    late = next_step(
        create.execution,
        range_id=r,
        events=[batch(3, 4, txn=(r << 20) + 2)],
        transfer=[TransferTaskRow(task_id=(r << 20) + 3, data=b"late")],
    )
    with pytest.raises(ConditionFailed):
        await persistence.executions.update_execution(late)

    k = key("doc-2", create.execution.execution_id)
    assert await persistence.executions.get_execution(k) == first.execution
    assert [(b.first_event_id, b.event_count) for b in await all_history(persistence, k)] == [
        (1, 2),
        (3, 1),
    ]
    transfer = await persistence.executions.get_transfer_tasks(
        1, min_task_id=0, max_task_id=2**62, limit=10
    )
    assert transfer == []


async def test_concurrent_updates_exactly_one_wins(persistence: SqlPersistence) -> None:
    """Two decisions on the same db_version race: one commits, the other is ConditionFailed,
    and the stored state, history and outbox are exactly the winner's."""
    r = await acquire(persistence)
    create = new_execution("doc-3", range_id=r)
    await persistence.executions.create_execution(create)
    contenders = [
        next_step(
            create.execution,
            range_id=r,
            data=f"decision {i}".encode(),
            events=[batch(3, 1 + i, txn=(r << 20) + 10 + i, tag=f"decision {i}".encode())],
            transfer=[TransferTaskRow(task_id=(r << 20) + 20 + i, data=f"task {i}".encode())],
        )
        for i in range(5)
    ]
    results = await asyncio.gather(
        *(persistence.executions.update_execution(c) for c in contenders),
        return_exceptions=True,
    )
    winners = [c for c, res in zip(contenders, results, strict=True) if res is None]
    assert len(winners) == 1, results
    assert all(isinstance(res, ConditionFailed) for res in results if res is not None)

    winner = winners[0]
    k = key("doc-3", create.execution.execution_id)
    assert await persistence.executions.get_execution(k) == winner.execution
    assert (await all_history(persistence, k))[-1] == winner.events[0]
    assert await persistence.executions.get_transfer_tasks(
        1, min_task_id=0, max_task_id=2**62, limit=10
    ) == list(winner.transfer_tasks)


async def test_one_open_execution_per_run_id(persistence: SqlPersistence) -> None:
    r = await acquire(persistence)
    first = new_execution("invoice-9", range_id=r, request_id="req-a")
    await persistence.executions.create_execution(first)
    second = new_execution("invoice-9", range_id=r, request_id="req-b")
    with pytest.raises(CurrentRunConditionFailed) as conflict:
        await persistence.executions.create_execution(second)
    # The conflict names the open execution and the request that started it, so StartRun can
    # answer a retried request idempotently.
    assert conflict.value.current == first.current
    with pytest.raises(NotFound):
        await persistence.executions.get_execution(key("invoice-9", second.execution.execution_id))


async def test_create_checks_the_flow_version_is_still_the_latest(
    persistence: SqlPersistence,
) -> None:
    """A start that took the latest version from a cache commits only while no newer version
    is registered; otherwise nothing is written."""
    r = await acquire(persistence)
    for version in (1, 2):
        await persistence.metadata.create_flow(
            FlowRow(NAMESPACE, "ocr", version, create_time_ms=0, data=b"definition")
        )
    stale = replace(new_execution("scan-1", range_id=r), flow_check=FlowCheck("ocr", 1))
    with pytest.raises(FlowChanged):
        await persistence.executions.create_execution(stale)
    with pytest.raises(NotFound):
        await persistence.executions.get_current_run(1, NAMESPACE, "scan-1")
    with pytest.raises(NotFound):
        await persistence.executions.get_execution(key("scan-1", stale.execution.execution_id))

    latest = replace(new_execution("scan-1", range_id=r), flow_check=FlowCheck("ocr", 2))
    await persistence.executions.create_execution(latest)
    assert await persistence.executions.get_current_run(1, NAMESPACE, "scan-1") == latest.current


async def test_concurrent_brand_new_creates_one_wins(persistence: SqlPersistence) -> None:
    r = await acquire(persistence)
    contenders = [new_execution("invoice-10", range_id=r, request_id=f"req-{i}") for i in range(4)]
    results = await asyncio.gather(
        *(persistence.executions.create_execution(c) for c in contenders),
        return_exceptions=True,
    )
    winners = [c for c, res in zip(contenders, results, strict=True) if res is None]
    assert len(winners) == 1, results
    for res in results:
        if res is not None:
            assert isinstance(res, CurrentRunConditionFailed)
            assert res.current == winners[0].current
    assert await persistence.executions.get_current_run(1, NAMESPACE, "invoice-10") == (
        winners[0].current
    )


async def test_reuse_needs_the_previous_execution_closed(persistence: SqlPersistence) -> None:
    r = await acquire(persistence)
    first = new_execution("batch-7", range_id=r)
    await persistence.executions.create_execution(first)
    retry = new_execution(
        "batch-7",
        range_id=r,
        mode=CreateMode.REUSE_CLOSED,
        previous_execution_id=first.execution.execution_id,
        request_id="req-2",
    )
    with pytest.raises(CurrentRunConditionFailed) as still_open:
        await persistence.executions.create_execution(retry)
    assert still_open.value.current.state is RunState.RUNNING

    close = next_step(first.execution, range_id=r, events=[batch(3, txn=(r << 20) + 5)], close=True)
    await persistence.executions.update_execution(close)
    assert (await persistence.executions.get_current_run(1, NAMESPACE, "batch-7")).state is (
        RunState.CLOSED
    )

    await persistence.executions.create_execution(retry)
    assert await persistence.executions.get_current_run(1, NAMESPACE, "batch-7") == retry.current


async def test_reuse_names_the_current_execution(persistence: SqlPersistence) -> None:
    r = await acquire(persistence)
    first = new_execution("batch-8", range_id=r)
    await persistence.executions.create_execution(first)
    await persistence.executions.update_execution(
        next_step(first.execution, range_id=r, close=True)
    )
    wrong_previous = new_execution(
        "batch-8", range_id=r, mode=CreateMode.REUSE_CLOSED, previous_execution_id="not-it"
    )
    with pytest.raises(CurrentRunConditionFailed):
        await persistence.executions.create_execution(wrong_previous)
    never_ran = new_execution(
        "batch-9", range_id=r, mode=CreateMode.REUSE_CLOSED, previous_execution_id="x"
    )
    with pytest.raises(ConditionFailed):
        await persistence.executions.create_execution(never_ran)


async def test_deletions_due_together_remove_only_their_runs(
    persistence: SqlPersistence,
) -> None:
    """Retention deletes many runs at once (grouped into one transaction where the backend
    can): each goes with its pointer, a key given twice is no error, the others stay."""
    r = await acquire(persistence)
    creates = [new_execution(f"due-{i}", range_id=r) for i in range(12)]
    for create in creates:
        await persistence.executions.create_execution(create)
    keys = [key(c.current.run_id, c.execution.execution_id) for c in creates]
    await asyncio.gather(*(persistence.executions.delete_execution(k) for k in keys[:10]))
    await asyncio.gather(*(persistence.executions.delete_execution(k) for k in keys[8:10]))
    for k in keys[:10]:
        with pytest.raises(NotFound):
            await persistence.executions.get_execution(k)
        with pytest.raises(NotFound):
            await persistence.executions.get_current_run(1, NAMESPACE, k.run_id)
    for k in keys[10:]:
        assert (await persistence.executions.get_execution(k)).run_id == k.run_id
        assert (await persistence.executions.get_current_run(1, NAMESPACE, k.run_id)).execution_id


async def test_delete_execution_removes_its_pointer(persistence: SqlPersistence) -> None:
    r = await acquire(persistence)
    create = new_execution("doc-4", range_id=r)
    await persistence.executions.create_execution(create)
    k = key("doc-4", create.execution.execution_id)
    await persistence.executions.delete_execution(k)
    await persistence.executions.delete_execution(k)  # idempotent
    with pytest.raises(NotFound):
        await persistence.executions.get_execution(k)
    with pytest.raises(NotFound):
        await persistence.executions.get_current_run(1, NAMESPACE, "doc-4")
