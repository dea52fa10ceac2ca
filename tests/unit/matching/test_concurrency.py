"""Concurrency limits in matching: slot accounting (pure), and the root partition enforcing
them on a real database with a fake history."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.matching.conftest import EngineFactory
from tests.unit.matching.support import (
    KEY,
    NAMESPACE,
    QUEUE,
    RUN,
    FakeClock,
    FakeHistory,
    add_request,
    describe_request,
    poll,
    scheduled_event_id,
)
from tideflow.api.v1 import common_pb2, flow_service_pb2, task_queue_pb2
from tideflow_server.internal.v1 import matching_service_pb2, records_pb2
from tideflow_server.matching import MatchingEngine, concurrency
from tideflow_server.matching.concurrency import ConcurrencySlots
from tideflow_server.matching.handler import validate_release
from tideflow_server.persistence.sql import SqlPersistence
from tideflow_server.rpc.errors import InvalidArgument, NotFound

OCR = "ocr@1"
OTHER = "resize@1"


def _task(event_id: int, block_type: str = OCR, attempt: int = 1) -> records_pb2.BacklogTask:
    task = records_pb2.BacklogTask(
        namespace_id=NAMESPACE,
        run_id=RUN.run_id,
        execution_id=RUN.execution_id,
        scheduled_event_id=event_id,
        attempt=attempt,
    )
    task.dispatch.block_type = block_type
    return task


def _slot(task: records_pb2.BacklogTask) -> records_pb2.ConcurrencySlot:
    return records_pb2.ConcurrencySlot(
        namespace_id=task.namespace_id,
        run_id=task.run_id,
        execution_id=task.execution_id,
        scheduled_event_id=task.scheduled_event_id,
        attempt=task.attempt,
        block_type=task.dispatch.block_type,
    )


class _Writes:
    def __init__(self) -> None:
        self.written: list[list[records_pb2.ConcurrencySlot]] = []
        self.entered = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def __call__(self, slots: list[records_pb2.ConcurrencySlot]) -> None:
        self.written.append(slots)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()


def _slots(*held: records_pb2.ConcurrencySlot) -> tuple[ConcurrencySlots, _Writes]:
    writes = _Writes()
    return ConcurrencySlots(held, write=writes, clock=FakeClock()), writes


# -- accounting ------------------------------------------------------------------------------


def test_a_type_limit_counts_reserved_and_held_slots_and_leaves_other_types_alone() -> None:
    config = task_queue_pb2.TaskQueueConfig(block_concurrency={OCR: 2})
    slots, _ = _slots()
    first, second, third = _task(1), _task(2), _task(3)
    assert slots.reserve(config, first) and slots.confirm(first)
    assert slots.eligible(config, second) and slots.reserve(config, second)
    assert not slots.eligible(config, third)  # one held, one reserved: the type is full
    # A type without a limit of its own is counted too, against no limit.
    assert slots.eligible(config, _task(4, OTHER)) and slots.reserve(config, _task(4, OTHER))
    assert (slots.in_use, slots.in_use_by_type()) == (3, {OCR: 2, OTHER: 1})
    assert slots.unreserve(second)  # its start was refused
    assert slots.eligible(config, third)


def test_the_queue_limit_counts_every_type() -> None:
    config = task_queue_pb2.TaskQueueConfig(max_concurrency=2)
    slots, _ = _slots()
    assert slots.reserve(config, _task(1, OCR)) and slots.reserve(config, _task(2, OTHER))
    assert slots.full(config)
    assert not slots.eligible(config, _task(3, "third@1"))


def test_release_is_idempotent_and_frees_a_reservation_whose_start_is_still_answering() -> None:
    config = task_queue_pb2.TaskQueueConfig(max_concurrency=1)
    slots, _ = _slots()
    task = _task(1)
    assert slots.reserve(config, task)
    assert slots.release(_slot(task))  # the attempt closed before its start came back
    assert not slots.confirm(task)  # so nothing is held when it does
    assert slots.in_use == 0
    assert not slots.release(_slot(task))  # a redelivered release: nothing to do


def test_slots_held_by_a_previous_owner_count_from_the_start() -> None:
    config = task_queue_pb2.TaskQueueConfig(block_concurrency={OCR: 1})
    slots, _ = _slots(_slot(_task(1)))
    assert not slots.eligible(config, _task(2))
    assert slots.release(_slot(_task(1)))
    assert slots.eligible(config, _task(2))


async def test_concurrent_flushes_share_writes() -> None:
    config = task_queue_pb2.TaskQueueConfig(max_concurrency=10)
    slots, writes = _slots()
    writes.gate = asyncio.Event()
    tasks = [_task(i) for i in range(1, 5)]
    for task in tasks:
        slots.reserve(config, task)
    slots.confirm(tasks[0])
    first = asyncio.create_task(slots.flush())
    async with asyncio.timeout(5):
        await writes.entered.wait()  # the first write is under way; three more changes come
    flushes = []
    for task in tasks[1:]:
        slots.confirm(task)
        flushes.append(asyncio.create_task(slots.flush()))
    writes.gate.set()
    await asyncio.gather(first, *flushes)
    assert [len(w) for w in writes.written] == [1, 4]
    assert not slots.dirty


# -- the root partition enforcing them -------------------------------------------------------


async def _limit(engine: MatchingEngine, config: task_queue_pb2.TaskQueueConfig) -> None:
    partition = await engine.partition(KEY)
    assert partition.apply_config(config, partition.config_version + 1)


def _add(event_id: int, block_type: str = OCR) -> matching_service_pb2.AddBlockTaskRequest:
    request = add_request(event_id)
    request.dispatch.block_type = block_type
    return request


def _release(
    event_id: int, block_type: str = OCR
) -> matching_service_pb2.ReleaseConcurrencySlotRequest:
    return matching_service_pb2.ReleaseConcurrencySlotRequest(
        namespace_id=NAMESPACE,
        task_queue=common_pb2.TaskQueue(name=QUEUE),
        slot=_slot(_task(event_id, block_type)),
    )


async def _stored_slots(persistence: SqlPersistence) -> list[int]:
    row = await persistence.tasks.get_task_queue(KEY)
    info = records_pb2.TaskQueueInfo.FromString(row.data)
    return sorted(s.scheduled_event_id for s in info.slots)


async def _in_use(engine: MatchingEngine) -> tuple[int, dict[str, int]]:
    status = (await engine.describe_task_queue(describe_request())).status
    return status.concurrency_in_use, dict(status.block_concurrency_in_use)


async def test_a_full_type_is_skipped_and_its_tasks_wait_for_a_release(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    await _limit(engine, task_queue_pb2.TaskQueueConfig(block_concurrency={OCR: 2}))
    for event_id in (1, 2, 3):
        await engine.add_block_task(_add(event_id))
    await engine.add_block_task(_add(4, OTHER))

    got = [scheduled_event_id(await poll(engine)) for _ in range(3)]
    assert got == [1, 2, 4]  # ocr 3 waits for a slot; the other type goes by
    # Every start of a limited queue holds a slot (the other type's counts against no limit).
    assert [(c.scheduled_event_id, c.concurrency_limited) for c in history.calls] == [
        (1, True),
        (2, True),
        (4, True),
    ]
    assert await _stored_slots(persistence) == [1, 2, 4]
    assert await _in_use(engine) == (3, {OCR: 2, OTHER: 1})

    waiting = asyncio.create_task(poll(engine))
    async with asyncio.timeout(5):
        await (await engine.partition(KEY)).wait_for_polls(waiting=1)
    await engine.release_concurrency_slot(_release(1))
    assert scheduled_event_id(await waiting) == 3
    assert await _stored_slots(persistence) == [2, 3, 4]
    await engine.release_concurrency_slot(_release(1))  # redelivered: a no-op
    assert await _in_use(engine) == (3, {OCR: 2, OTHER: 1})


async def test_a_refused_start_gives_its_slot_back(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    await _limit(engine, task_queue_pb2.TaskQueueConfig(max_concurrency=1))
    history.fail(1, NotFound("stale", reason="BLOCK_TASK_NOT_FOUND"))
    await engine.add_block_task(_add(1))
    await engine.add_block_task(_add(2))
    assert scheduled_event_id(await poll(engine)) == 2
    assert await _stored_slots(persistence) == [2]


async def test_a_poll_that_goes_away_while_starting_gives_its_slot_back(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    await _limit(engine, task_queue_pb2.TaskQueueConfig(max_concurrency=1))
    await engine.add_block_task(_add(1))
    history.gate = asyncio.Event()
    leaving = asyncio.create_task(poll(engine))
    async with asyncio.timeout(5):
        await history.entered.wait()
    assert await _in_use(engine) == (1, {OCR: 1})  # reserved while history answers
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert await _in_use(engine) == (0, {})
    history.gate.set()
    assert scheduled_event_id(await poll(engine)) == 1
    assert await _stored_slots(persistence) == [1]


async def test_a_new_owner_knows_the_slots_held(
    make_engine: EngineFactory, history: FakeHistory
) -> None:
    first = make_engine("host-a")
    config = task_queue_pb2.TaskQueueConfig(block_concurrency={OCR: 1})
    await _limit(first, config)
    for event_id in (1, 2):
        await first.add_block_task(_add(event_id))
    assert scheduled_event_id(await poll(first)) == 1
    await first.stop()

    second = make_engine("host-b")
    await _limit(second, config)  # the config helper loads it from the row at merge
    assert await _in_use(second) == (1, {OCR: 1})
    assert not (await poll(second, within=0.3)).task_token
    await second.release_concurrency_slot(_release(1))
    assert scheduled_event_id(await poll(second)) == 2


async def test_a_direct_task_of_a_limited_queue_is_started_holding_a_slot(
    engine: MatchingEngine, history: FakeHistory
) -> None:
    await _limit(engine, task_queue_pb2.TaskQueueConfig(max_concurrency=1))
    polling = asyncio.create_task(poll(engine))
    async with asyncio.timeout(5):
        await (await engine.partition(KEY)).wait_for_polls(waiting=1)
    request = _add(1)
    request.direct_task.CopyFrom(flow_service_pb2.PollBlockTaskResponse(task_token=b"direct"))
    added = await engine.add_block_task(request)
    assert added.sync_matched
    assert scheduled_event_id(await polling) == 1
    assert [c.concurrency_limited for c in history.calls] == [True]


async def test_a_queue_without_limits_takes_no_slots(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    await _limit(engine, task_queue_pb2.TaskQueueConfig(block_concurrency={OTHER: 0}))
    for event_id in (1, 2):
        await engine.add_block_task(_add(event_id))
    assert [scheduled_event_id(await poll(engine)) for _ in range(2)] == [1, 2]
    assert [c.concurrency_limited for c in history.calls] == [False, False]
    assert await _stored_slots(persistence) == []


def test_a_leaf_partition_of_a_limited_queue_dispatches_nothing() -> None:
    limited = task_queue_pb2.TaskQueueConfig(max_concurrency=3)
    assert concurrency.dispatches_here(limited, 0)
    assert not concurrency.dispatches_here(limited, 2)
    assert concurrency.dispatches_here(task_queue_pb2.TaskQueueConfig(), 2)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.ClearField("namespace_id"), "namespace_id"),
        (lambda r: r.task_queue.ClearField("name"), "task_queue.name"),
        (lambda r: setattr(r.slot, "namespace_id", "other"), "slot.namespace_id"),
        (lambda r: r.slot.ClearField("run_id"), "slot.run_id"),
        (lambda r: r.slot.ClearField("execution_id"), "slot.execution_id"),
        (lambda r: setattr(r.slot, "scheduled_event_id", 0), "slot.scheduled_event_id"),
        (lambda r: setattr(r.slot, "attempt", 0), "slot.attempt"),
    ],
)
def test_release_requests_are_validated(change: object, field: str) -> None:
    request = _release(1)
    validate_release(request)
    assert callable(change)
    change(request)
    with pytest.raises(InvalidArgument) as raised:
        validate_release(request)
    assert field in [v.field for v in raised.value.violations]
