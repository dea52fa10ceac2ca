"""Small constructors for store rows, so cases state only what they are about."""

from __future__ import annotations

import uuid

from tideflow_server.persistence.interfaces import Persistence
from tideflow_server.persistence.records import (
    CreateExecution,
    CreateMode,
    CurrentRunRow,
    ExecutionKey,
    ExecutionRow,
    HistoryBatch,
    RunState,
    ShardRow,
    TimerTaskRow,
    TransferTaskRow,
    UpdateExecution,
)

NAMESPACE = "ns-1"
RUNNING, COMPLETED = 1, 2  # public RunStatus values used in pointer rows


async def acquire(persistence: Persistence, shard_id: int = 1) -> int:
    """Take the shard the way a history host does: bump range_id conditionally."""
    try:
        row = await persistence.shards.get_shard(shard_id)
    except Exception:
        row = ShardRow(shard_id=shard_id, range_id=0, data=b"")
        await persistence.shards.create_shard(row)
    new = ShardRow(shard_id=shard_id, range_id=row.range_id + 1, data=row.data)
    await persistence.shards.update_shard(new, previous_range_id=row.range_id)
    return new.range_id


def key(run_id: str, execution_id: str, shard_id: int = 1) -> ExecutionKey:
    return ExecutionKey(shard_id, NAMESPACE, run_id, execution_id)


def batch(first: int, count: int = 1, *, txn: int, tag: bytes = b"") -> HistoryBatch:
    return HistoryBatch(first, count, txn, tag or f"events {first}..{first + count - 1}".encode())


def new_execution(
    run_id: str,
    *,
    range_id: int,
    shard_id: int = 1,
    execution_id: str | None = None,
    mode: CreateMode = CreateMode.BRAND_NEW,
    previous_execution_id: str | None = None,
    request_id: str = "req-1",
    events: list[HistoryBatch] | None = None,
    transfer: list[TransferTaskRow] | None = None,
    timers: list[TimerTaskRow] | None = None,
) -> CreateExecution:
    execution_id = execution_id or str(uuid.uuid4())
    events = [batch(1, 2, txn=range_id << 20)] if events is None else events
    next_event_id = events[-1].next_event_id if events else 1
    return CreateExecution(
        shard_id=shard_id,
        range_id=range_id,
        mode=mode,
        previous_execution_id=previous_execution_id,
        execution=ExecutionRow(
            namespace_id=NAMESPACE,
            run_id=run_id,
            execution_id=execution_id,
            next_event_id=next_event_id,
            db_version=1,
            state=RunState.RUNNING,
            data=b"state v1",
        ),
        current=CurrentRunRow(
            namespace_id=NAMESPACE,
            run_id=run_id,
            execution_id=execution_id,
            state=RunState.RUNNING,
            status=RUNNING,
            start_request_id=request_id,
        ),
        events=events,
        transfer_tasks=transfer or [],
        timer_tasks=timers or [],
    )


def next_step(
    previous: ExecutionRow,
    *,
    range_id: int,
    shard_id: int = 1,
    events: list[HistoryBatch] | None = None,
    data: bytes | None = None,
    close: bool = False,
    transfer: list[TransferTaskRow] | None = None,
    timers: list[TimerTaskRow] | None = None,
    expected_db_version: int | None = None,
) -> UpdateExecution:
    """The decision after `previous`: its events appended, db_version bumped."""
    events = events or []
    state = RunState.CLOSED if close else previous.state
    row = ExecutionRow(
        namespace_id=previous.namespace_id,
        run_id=previous.run_id,
        execution_id=previous.execution_id,
        next_event_id=events[-1].next_event_id if events else previous.next_event_id,
        db_version=previous.db_version + 1,
        state=state,
        data=data if data is not None else f"state v{previous.db_version + 1}".encode(),
    )
    current = None
    if close:
        current = CurrentRunRow(
            namespace_id=previous.namespace_id,
            run_id=previous.run_id,
            execution_id=previous.execution_id,
            state=RunState.CLOSED,
            status=COMPLETED,
            start_request_id="req-1",
        )
    return UpdateExecution(
        shard_id=shard_id,
        range_id=range_id,
        execution=row,
        expected_db_version=(
            previous.db_version if expected_db_version is None else expected_db_version
        ),
        current=current,
        events=events,
        transfer_tasks=transfer or [],
        timer_tasks=timers or [],
    )


async def all_history(persistence: Persistence, k: ExecutionKey) -> list[HistoryBatch]:
    """Every committed batch, read through the committed next_event_id."""
    execution = await persistence.executions.get_execution(k)
    out: list[HistoryBatch] = []
    token = None
    while True:
        page = await persistence.history.read_history(
            k, min_event_id=1, next_event_id=execution.next_event_id, page_size=3, page_token=token
        )
        out += page.items
        if page.next_page_token is None:
            return out
        token = page.next_page_token


async def created_runs(
    persistence: Persistence, count: int, *, shard_id: int, range_id: int
) -> list[CreateExecution]:
    """`count` new runs of one shard, created one by one (for group commit cases)."""
    creates = [
        new_execution(f"run-{shard_id}-{n}", range_id=range_id, shard_id=shard_id)
        for n in range(count)
    ]
    for create in creates:
        await persistence.executions.create_execution(create)
    return creates


def group_decision(create: CreateExecution, n: int, *, close: bool = False) -> UpdateExecution:
    """The `n`th concurrent decision of a group: one event batch, a transfer and a timer task
    with ids of their own."""
    r, shard = create.range_id, create.shard_id
    return next_step(
        create.execution,
        range_id=r,
        shard_id=shard,
        events=[batch(3, 2, txn=(r << 20) + 100 + n, tag=f"decision {shard}/{n}".encode())],
        transfer=[TransferTaskRow(task_id=(r << 20) + 200 + n, data=f"task {n}".encode())],
        timers=[TimerTaskRow(fire_time_ms=1_000 + n, task_id=(r << 20) + 300 + n, data=b"t")],
        close=close,
    )


async def landed(persistence: Persistence, update: UpdateExecution) -> bool:
    """Whether the decision's state and events are what is stored (and only then)."""
    ex = update.execution
    k = key(ex.run_id, ex.execution_id, shard_id=update.shard_id)
    stored = await persistence.executions.get_execution(k)
    history = await all_history(persistence, k)
    if stored == ex:
        assert history[-1] == update.events[0]
        return True
    assert update.events[0] not in history
    return False
