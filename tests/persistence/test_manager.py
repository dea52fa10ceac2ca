"""The manager over every backend: task ids from the fenced range, protobuf round trips, and
size limits rejected before anything is written."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tideflow.api.v1 import common_pb2, flow_pb2, history_pb2, namespace_pb2
from tideflow_server.config import LimitsConfig
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.persistence import (
    ConditionFailed,
    CurrentRunConditionFailed,
    NotFound,
    ShardOwnershipLost,
    SizeLimitExceeded,
)
from tideflow_server.persistence.manager import PersistenceManager, ShardLease
from tideflow_server.persistence.records import CreateMode, RunState, TaskQueueKey
from tideflow_server.persistence.sql import SqlPersistence

LIMITS = LimitsConfig(
    max_blob_bytes=64 * 1024,
    max_history_batch_bytes=96 * 1024,
    max_mutable_state_bytes=256 * 1024,
    max_history_events=20,
)


@pytest.fixture
async def manager(persistence: SqlPersistence) -> AsyncIterator[PersistenceManager]:
    yield PersistenceManager(persistence, LIMITS)


def _state(run_id: str, next_event_id: int, *, closed: bool = False) -> records_pb2.MutableState:
    state = records_pb2.MutableState()
    info = state.execution_info
    info.namespace_id = "ns-1"
    info.run_id = run_id
    info.execution_id = str(uuid.uuid4())
    info.flow.name, info.flow.version = "intake", 1
    info.status = common_pb2.RUN_STATUS_COMPLETED if closed else common_pb2.RUN_STATUS_RUNNING
    info.state = records_pb2.RUN_STATE_COMPLETED if closed else records_pb2.RUN_STATE_RUNNING
    info.start_request_id = "req-1"
    info.next_event_id = next_event_id
    return state


def _events(first: int, count: int, *, payload: bytes = b"{}") -> list[history_pb2.HistoryEvent]:
    events = []
    for event_id in range(first, first + count):
        event = history_pb2.HistoryEvent(event_id=event_id)
        event.event_time.GetCurrentTime()
        event.event_type = history_pb2.EVENT_TYPE_RUN_SIGNALED
        signaled = event.run_signaled_event_attributes
        signaled.signal_name = "approve"
        signaled.input.payloads.add(data=payload)
        events.append(event)
    return events


async def _started(
    manager: PersistenceManager, lease: ShardLease, run_id: str
) -> records_pb2.MutableState:
    state = _state(run_id, 3)
    (task_id,) = await manager.allocate_task_ids(lease, 1)
    transfer = records_pb2.TransferTask(
        task_id=task_id,
        namespace_id="ns-1",
        run_id=run_id,
        execution_id=state.execution_info.execution_id,
    )
    transfer.block_task.scheduled_event_id = 2
    await manager.create_execution(
        lease, state=state, events=_events(1, 2), transfer_tasks=[transfer]
    )
    return state


async def test_task_ids_increase_and_a_new_owner_allocates_above(
    manager: PersistenceManager,
) -> None:
    old = await manager.acquire_shard(1, owner="host-a")
    old_ids = [i for _ in range(3) for i in await manager.allocate_task_ids(old, 4)]
    assert old_ids == sorted(old_ids) and len(set(old_ids)) == 12

    new = await manager.acquire_shard(1, owner="host-b")
    assert new.range_id == old.range_id + 1
    new_ids = await manager.allocate_task_ids(new, 5)
    assert min(new_ids) > max(old_ids)
    assert new_ids == sorted(new_ids)

    # The old owner's allocation still "works" locally, but nothing it writes lands.
    with pytest.raises(ShardOwnershipLost):
        await _started(manager, old, "fenced")


async def test_exhausted_range_is_renewed_and_ids_keep_increasing(
    persistence: SqlPersistence,
) -> None:
    manager = PersistenceManager(persistence, LIMITS, task_id_bits=3)  # 7 ids a range
    lease = await manager.acquire_shard(2, owner="host-a")
    first_range = lease.range_id
    ids = [i for _ in range(6) for i in await manager.allocate_task_ids(lease, 3)]
    assert ids == sorted(ids) and len(set(ids)) == 18
    assert lease.range_id > first_range
    assert (await persistence.shards.get_shard(2)).range_id == lease.range_id
    await _started(manager, lease, "after-renewal")  # writes fence on the renewed range

    other = await manager.acquire_shard(2, owner="host-b")
    assert min(await manager.allocate_task_ids(other, 1)) > max(ids)
    with pytest.raises(ShardOwnershipLost):
        for _ in range(4):  # runs out, and the renewal finds the shard taken
            await manager.allocate_task_ids(lease, 3)


async def test_execution_round_trips_as_protobuf(manager: PersistenceManager) -> None:
    lease = await manager.acquire_shard(1, owner="host-a")
    state = await _started(manager, lease, "roundtrip")
    info = state.execution_info
    loaded = await manager.get_execution(1, "ns-1", "roundtrip", info.execution_id)
    assert loaded.state == state and loaded.db_version == 1

    state.execution_info.next_event_id = 5
    timer_ids = await manager.allocate_task_ids(lease, 2)
    timers = []
    for task_id, fire_ms in zip(timer_ids, [9_000, 4_000], strict=True):
        timer = records_pb2.TimerTask(task_id=task_id, namespace_id="ns-1", run_id="roundtrip")
        timer.fire_time.FromMilliseconds(fire_ms)
        timer.run_timeout.SetInParent()
        timers.append(timer)
    updated = await manager.update_execution(
        lease, state=state, expected_db_version=1, events=_events(3, 2), timer_tasks=timers
    )
    assert updated.db_version == 2

    page = await manager.read_history(1, state.execution_info)
    assert [e.event_id for e in page.events] == [1, 2, 3, 4]
    assert page.events[3].run_signaled_event_attributes.signal_name == "approve"
    due = await manager.get_timer_tasks(1, after=(0, 0), fire_before_ms=10_000, limit=10)
    assert [t.fire_time.ToMilliseconds() for t in due] == [4_000, 9_000]
    transfer = await manager.get_transfer_tasks(1, min_task_id=0, max_task_id=2**62, limit=10)
    assert transfer[0].block_task.scheduled_event_id == 2


async def test_oversized_event_is_rejected_and_nothing_written(
    manager: PersistenceManager,
) -> None:
    lease = await manager.acquire_shard(1, owner="host-a")
    state = await _started(manager, lease, "big")
    before = await manager.get_execution(1, "ns-1", "big", state.execution_info.execution_id)
    state.execution_info.next_event_id = 4
    with pytest.raises(SizeLimitExceeded) as too_big:
        await manager.update_execution(
            lease,
            state=state,
            expected_db_version=1,
            events=_events(3, 1, payload=b"x" * (LIMITS.max_history_batch_bytes + 1)),
        )
    assert too_big.value.what == "the step's history batch"
    assert too_big.value.setting == "persistence.limits.max_history_batch_bytes"
    after = await manager.get_execution(1, "ns-1", "big", state.execution_info.execution_id)
    assert after == before
    assert [
        e.event_id for e in (await manager.read_history(1, after.state.execution_info)).events
    ] == [1, 2]


async def test_a_step_may_append_more_than_one_blob_of_events(
    manager: PersistenceManager,
) -> None:
    """A step's batch has its own limit: it holds a value once per block that takes it."""
    lease = await manager.acquire_shard(1, owner="host-a")
    state = await _started(manager, lease, "wide")
    state.execution_info.next_event_id = 5
    events = _events(3, 2, payload=b"x" * (LIMITS.max_blob_bytes // 2 + 1024))
    assert sum(e.ByteSize() for e in events) > LIMITS.max_blob_bytes
    await manager.update_execution(lease, state=state, expected_db_version=1, events=events)
    loaded = await manager.get_execution(1, "ns-1", "wide", state.execution_info.execution_id)
    history = await manager.read_history(1, loaded.state.execution_info)
    assert [e.event_id for e in history.events] == [1, 2, 3, 4]


async def test_history_length_and_state_size_are_limited(manager: PersistenceManager) -> None:
    lease = await manager.acquire_shard(1, owner="host-a")
    state = await _started(manager, lease, "long")
    state.execution_info.next_event_id = LIMITS.max_history_events + 2
    with pytest.raises(SizeLimitExceeded) as too_long:
        await manager.update_execution(
            lease,
            state=state,
            expected_db_version=1,
            events=_events(3, LIMITS.max_history_events - 1),
        )
    assert too_long.value.what == "history"
    assert too_long.value.setting == "persistence.limits.max_history_events"

    state.execution_info.next_event_id = 3
    for i in range(300):
        state.execution_info.vars[f"v{i}"].string_value = "y" * 1024
    with pytest.raises(SizeLimitExceeded) as too_large:
        await manager.update_execution(lease, state=state, expected_db_version=1)
    assert too_large.value.what == "mutable state"
    loaded = await manager.get_execution(1, "ns-1", "long", state.execution_info.execution_id)
    assert loaded.db_version == 1 and not loaded.state.execution_info.vars


async def test_a_namespace_may_tighten_the_history_limits_never_loosen_them(
    manager: PersistenceManager,
) -> None:
    lease = await manager.acquire_shard(1, owner="host-a")
    state = await _started(manager, lease, "own")
    first_batch = state.execution_info.history_size_bytes
    assert first_batch > 0  # counted as the events were serialized
    events = _events(3, 2)
    state.execution_info.next_event_id = 5
    loose = namespace_pb2.NamespaceLimits(max_history_events=LIMITS.max_history_events * 10)
    tight = namespace_pb2.NamespaceLimits(max_history_events=3)
    small = namespace_pb2.NamespaceLimits(max_history_bytes=first_batch + 10)
    for own, setting in (
        (tight, "namespace config.limits.max_history_events"),
        (small, "namespace config.limits.max_history_bytes"),
    ):
        step = records_pb2.MutableState()
        step.CopyFrom(state)
        with pytest.raises(SizeLimitExceeded) as refused:
            await manager.update_execution(
                lease, state=step, expected_db_version=1, events=events, namespace_limits=own
            )
        assert refused.value.setting == setting
    await manager.update_execution(
        lease, state=state, expected_db_version=1, events=events, namespace_limits=loose
    )
    loaded = await manager.get_execution(1, "ns-1", "own", state.execution_info.execution_id)
    assert loaded.state.execution_info.history_size_bytes > first_batch
    state.execution_info.next_event_id = LIMITS.max_history_events + 2
    with pytest.raises(SizeLimitExceeded) as server_limit:
        await manager.update_execution(
            lease,
            state=state,
            expected_db_version=2,
            events=_events(5, LIMITS.max_history_events - 3),
            namespace_limits=loose,
        )
    assert server_limit.value.setting == "persistence.limits.max_history_events"


async def test_closing_a_run_frees_its_run_id(manager: PersistenceManager) -> None:
    lease = await manager.acquire_shard(1, owner="host-a")
    state = await _started(manager, lease, "reused")
    with pytest.raises(CurrentRunConditionFailed):
        await manager.create_execution(lease, state=_state("reused", 3), events=_events(1, 2))

    state.execution_info.state = records_pb2.RUN_STATE_COMPLETED
    state.execution_info.status = common_pb2.RUN_STATUS_COMPLETED
    await manager.update_execution(lease, state=state, expected_db_version=1)
    current = await manager.persistence.executions.get_current_run(1, "ns-1", "reused")
    assert current.state is RunState.CLOSED
    assert current.status == common_pb2.RUN_STATUS_COMPLETED

    second = _state("reused", 3)
    await manager.create_execution(
        lease,
        state=second,
        events=_events(1, 2),
        mode=CreateMode.REUSE_CLOSED,
        previous_execution_id=state.execution_info.execution_id,
    )
    # A late write to the old execution must not move the pointer off the new one.
    await manager.update_execution(lease, state=state, expected_db_version=2)
    current = await manager.persistence.executions.get_current_run(1, "ns-1", "reused")
    assert current.execution_id == second.execution_info.execution_id
    assert current.state is RunState.RUNNING


async def test_task_queue_lease_fences_the_backlog(manager: PersistenceManager) -> None:
    key = TaskQueueKey("ns-1", "cpu", common_pb2.TASK_QUEUE_KIND_NORMAL, 0)
    first_range, _ = await manager.lease_task_queue(key)
    task = records_pb2.BacklogTask(namespace_id="ns-1", run_id="r", scheduled_event_id=5)
    await manager.create_backlog_tasks(key, range_id=first_range, tasks=[(1, task)])
    second_range, info = await manager.lease_task_queue(key)
    assert second_range == first_range + 1 and info.name == "cpu"
    with pytest.raises(ConditionFailed):
        await manager.create_backlog_tasks(key, range_id=first_range, tasks=[(2, task)])
    await manager.create_backlog_tasks(key, range_id=second_range, tasks=[(3, task)])
    got = await manager.get_backlog_tasks(key, after_task_id=0, max_task_id=99, limit=10)
    assert [(i, t.scheduled_event_id) for i, t in got] == [(1, 5), (3, 5)]


async def test_flow_definitions_and_namespaces_round_trip(manager: PersistenceManager) -> None:
    record = records_pb2.NamespaceRecord()
    record.info.id, record.info.name = "id-docs", "docs"
    record.config.retention.seconds = 86_400
    await manager.create_namespace(record)
    assert await manager.get_namespace(name="docs") == record
    assert await manager.get_namespace(namespace_id="id-docs") == record

    for version in (1, 2):
        flow = flow_pb2.FlowDefinition(namespace="docs", name="intake", version=version)
        flow.blueprint.name, flow.blueprint.version = "intake", version
        await manager.create_flow("id-docs", flow)
    assert (await manager.get_flow("id-docs", "intake")).version == 2
    assert (await manager.get_flow("id-docs", "intake", 1)).blueprint.version == 1

    huge = flow_pb2.FlowDefinition(namespace="docs", name="huge", version=1)
    huge.blueprint.description = "d" * (LIMITS.max_blob_bytes + 1)
    with pytest.raises(SizeLimitExceeded):
        await manager.create_flow("id-docs", huge)
    with pytest.raises(NotFound):
        await manager.get_flow("id-docs", "huge")
