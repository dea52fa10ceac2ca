"""A partition hands out its backlog by priority, weighted fairness over keys and, when the
queue asks, in-flight first; it reads up to `fair_window` tasks ahead to do so."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable

from tests.unit.matching.conftest import EngineFactory
from tests.unit.matching.support import KEY, add_request, poll, scheduled_event_id
from tideflow.api.v1 import task_queue_pb2
from tideflow_server.internal.v1 import matching_service_pb2, records_pb2
from tideflow_server.matching import MatchingEngine

A_IDS = range(1, 201)  # tenant a's burst, written first
B_IDS = range(1001, 1006)  # tenant b's few tasks, written after it


async def _write(engine: MatchingEngine, ids: range, key: str, *, run_start: int = 0) -> None:
    def add(event_id: int) -> Awaitable[matching_service_pb2.AddBlockTaskResponse]:
        dispatch = records_pb2.TaskDispatch(fairness_key=key)
        dispatch.run_start_time.FromSeconds(run_start or 1_000 + event_id)
        return engine.add_block_task(add_request(event_id, dispatch=dispatch))

    await asyncio.gather(*(add(i) for i in ids))  # grouped into batched writes


async def _backlog_of_a_burst_then_b(make_engine: EngineFactory) -> None:
    writer = make_engine("writer")
    await _write(writer, A_IDS, "a")
    await _write(writer, B_IDS, "b")
    await writer.stop()


def _tenant(event_id: int) -> str:
    return "a" if event_id in A_IDS else "b"


async def test_a_key_behind_a_burst_gets_its_share_within_the_fair_window(
    make_engine: EngineFactory,
) -> None:
    await _backlog_of_a_burst_then_b(make_engine)
    engine = make_engine(backlog_read_batch=10, fair_window=1_000)
    first = [_tenant(scheduled_event_id(await poll(engine))) for _ in range(10)]
    assert Counter(first) == {"a": 5, "b": 5}


async def test_a_key_beyond_the_fair_window_waits_for_the_tasks_before_it(
    make_engine: EngineFactory,
) -> None:
    await _backlog_of_a_burst_then_b(make_engine)
    engine = make_engine(backlog_read_batch=10, fair_window=10)
    first = [_tenant(scheduled_event_id(await poll(engine))) for _ in range(150)]
    assert set(first) == {"a"}


async def test_queue_weights_apply_when_the_config_is_applied(make_engine: EngineFactory) -> None:
    writer = make_engine("writer")
    await _write(writer, range(1, 61), "a")
    await _write(writer, range(1001, 1061), "b")
    await writer.stop()

    engine = make_engine()
    partition = await engine.partition(KEY)
    config = task_queue_pb2.TaskQueueConfig(fairness_weights={"a": 2.0})
    assert partition.apply_config(config, 1)
    first = [_tenant(scheduled_event_id(await poll(engine))) for _ in range(30)]
    assert Counter(first) == {"a": 20, "b": 10}


async def test_in_flight_first_orders_by_run_start(make_engine: EngineFactory) -> None:
    writer = make_engine("writer")
    await _write(writer, range(1, 4), "", run_start=2_000)  # first blocks of newer runs
    await _write(writer, range(4, 6), "", run_start=1_000)  # next blocks of older runs
    await writer.stop()

    engine = make_engine()
    assert scheduled_event_id(await poll(engine)) == 1  # off: backlog order
    partition = await engine.partition(KEY)
    assert partition.apply_config(task_queue_pb2.TaskQueueConfig(in_flight_first=True), 1)
    got = [scheduled_event_id(await poll(engine)) for _ in range(4)]
    assert got == [4, 5, 2, 3]


async def test_adds_waiting_for_a_poll_go_by_priority_then_arrival(
    make_engine: EngineFactory,
) -> None:
    """Adds held in memory for a poll (no backlog, no poll waiting) are not in the buffer's
    order; a poll still takes a lower level first, and an older run first with in-flight
    first, else the one added first."""
    engine = make_engine(sync_match_wait=30.0)
    partition = await engine.partition(KEY)
    partition.apply_config(task_queue_pb2.TaskQueueConfig(in_flight_first=True), 1)
    adds = []
    for held, (event_id, level, run_start) in enumerate(
        [(1, 3, 3_000), (2, 3, 2_000), (3, 1, 9_000), (4, 3, 2_000)], start=1
    ):
        dispatch = records_pb2.TaskDispatch(priority=level)
        dispatch.run_start_time.FromSeconds(run_start)
        request = add_request(event_id, dispatch=dispatch)
        adds.append(asyncio.create_task(engine.add_block_task(request)))
        async with asyncio.timeout(5):
            await partition.wait_for_held(held=held)

    got = [scheduled_event_id(await poll(engine)) for _ in range(4)]
    assert got == [3, 2, 4, 1]
    assert [(await add).sync_matched for add in adds] == [True] * 4
