"""The matching engine on a real database, with a fake history on the other side."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tests.unit.matching.conftest import EngineFactory
from tests.unit.matching.support import (
    KEY,
    RUN,
    FakeClock,
    FakeHistory,
    add_request,
    describe_request,
    poll,
    scheduled_event_id,
)
from tideflow.api.v1 import flow_service_pb2
from tideflow_server.internal.v1 import records_pb2, task_token_pb2
from tideflow_server.matching import MatchingConfig, MatchingEngine
from tideflow_server.persistence import Unavailable as PersistenceUnavailable
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.persistence.records import TaskQueueKey
from tideflow_server.persistence.sql import SqlPersistence
from tideflow_server.rpc.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from tideflow_server.tokens import parse_token


async def backlog(persistence: SqlPersistence, key: TaskQueueKey = KEY) -> int:
    return await persistence.tasks.count_backlog_tasks(key)


async def stored_info(persistence: SqlPersistence) -> tuple[int, records_pb2.TaskQueueInfo]:
    row = await persistence.tasks.get_task_queue(KEY)
    return row.range_id, records_pb2.TaskQueueInfo.FromString(row.data)


async def waiting_poll(
    engine: MatchingEngine, count: int = 1, *, identity: str = "worker-1", poller_id: str = ""
) -> asyncio.Task[flow_service_pb2.PollBlockTaskResponse]:
    """Start a poll and return once `count` polls wait on the partition."""
    task = asyncio.create_task(poll(engine, identity=identity, poller_id=poller_id or None))
    async with asyncio.timeout(5):
        await (await engine.partition(KEY)).wait_for_polls(waiting=count)
    return task


async def test_sync_match_hands_the_task_over_without_a_write(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    polling = asyncio.create_task(poll(engine, identity="gpu-box:42", poller_id="poll-1"))
    await (await engine.partition(KEY)).wait_for_polls(waiting=1)

    await engine.add_block_task(add_request(7))
    got = await polling

    assert await backlog(persistence) == 0
    token = parse_token(got.task_token)
    assert token == task_token_pb2.BlockTaskToken(
        namespace_id="ns-1",
        run_id=RUN.run_id,
        execution_id=RUN.execution_id,
        scheduled_event_id=7,
        attempt=1,
        block_id="block-7",
    )
    assert got.run == RUN
    assert (got.block_id, got.block_type, got.attempt) == ("block-7", "ocr@1", 1)
    assert got.input.payloads[0].data == b'{"page": 7}'
    assert got.timeouts.start_to_close.seconds == 30
    assert got.retry_policy.maximum_attempts == 3
    assert got.heartbeat_details.payloads[0].data == b"page 3"
    assert (got.flow.name, got.flow.version) == ("invoices", 2)
    assert got.scheduled_time.seconds == 1_007
    assert got.current_attempt_scheduled_time.seconds == 1_507
    assert got.started_time.seconds == 2_007
    (call,) = history.calls
    assert (call.request_id, call.identity, call.attempt) == ("poll-1", "gpu-box:42", 1)
    assert (call.namespace_id, call.run, call.task_queue.name) == ("ns-1", RUN, "gpu-ocr")


async def test_add_without_a_poll_is_persisted_and_polled_later(
    make_engine: EngineFactory, persistence: SqlPersistence
) -> None:
    engine = make_engine()
    await engine.add_block_task(add_request(3))
    assert await backlog(persistence) == 1

    assert scheduled_event_id(await poll(engine)) == 3
    await engine.stop()
    assert await backlog(persistence) == 0  # acked, ack level persisted, row deleted


async def test_backlog_is_delivered_in_task_id_order(
    make_engine: EngineFactory, persistence: SqlPersistence
) -> None:
    engine = make_engine(backlog_read_batch=7)
    for event_id in range(1, 31):
        await engine.add_block_task(add_request(event_id))
    assert await backlog(persistence) == 30

    got = [scheduled_event_id(await poll(engine)) for _ in range(30)]
    assert got == list(range(1, 31))


async def test_concurrent_adds_are_written_in_batches(
    persistence: SqlPersistence, history: FakeHistory, clock: FakeClock
) -> None:
    writes: list[int] = []

    class CountingManager(PersistenceManager):
        async def create_backlog_tasks(
            self,
            key: TaskQueueKey,
            *,
            range_id: int,
            tasks: Sequence[tuple[int, records_pb2.BacklogTask]],
        ) -> None:
            writes.append(len(tasks))
            await super().create_backlog_tasks(key, range_id=range_id, tasks=tasks)

    engine = MatchingEngine(
        CountingManager(persistence),
        history,
        host_id="host-a",
        config=MatchingConfig(backlog_write_batch=8, long_poll_timeout=5),
        clock=clock,
    )
    try:
        await asyncio.gather(*(engine.add_block_task(add_request(i)) for i in range(1, 21)))
        assert sum(writes) == 20
        assert max(writes) <= 8
        assert len(writes) < 20
        got = [scheduled_event_id(await poll(engine)) for _ in range(20)]
        assert got == list(range(1, 21))
    finally:
        await engine.stop()


async def test_task_id_ranges_are_renewed_when_used_up(
    make_engine: EngineFactory, persistence: SqlPersistence
) -> None:
    engine = make_engine(task_id_bits=3, backlog_write_batch=2, backlog_read_batch=4)
    for event_id in range(1, 21):
        await engine.add_block_task(add_request(event_id))
    range_id, _ = await stored_info(persistence)
    assert range_id > 2  # seven ids per range

    got = [scheduled_event_id(await poll(engine)) for _ in range(20)]
    assert got == list(range(1, 21))


async def test_a_lower_priority_level_goes_first_among_buffered_tasks(
    make_engine: EngineFactory,
) -> None:
    writer = make_engine()
    for event_id, level in [(1, 0), (2, 5), (3, 3), (4, 1)]:
        dispatch = records_pb2.TaskDispatch(priority=level)
        await writer.add_block_task(add_request(event_id, dispatch=dispatch))
    # From a sender older than TaskDispatch: its priority is read as the level, clamped.
    await writer.add_block_task(add_request(5, priority=9))
    await writer.add_block_task(add_request(6, priority=0))
    await writer.stop()

    engine = make_engine()  # reads the backlog head into its buffer before serving
    got = [scheduled_event_id(await poll(engine)) for _ in range(6)]
    assert got == [4, 1, 3, 6, 2, 5]


async def test_long_poll_times_out_empty(make_engine: EngineFactory, history: FakeHistory) -> None:
    engine = make_engine(long_poll_timeout=0.05)
    assert (await poll(engine)).task_token == b""
    # The caller's deadline wins when it is the earlier one.
    patient = make_engine("host-b", long_poll_timeout=60)
    assert (await poll(patient, within=0.05)).task_token == b""
    assert history.calls == []
    assert (await patient.partition(KEY)).outstanding_polls == 0


async def test_stale_tasks_are_dropped_and_the_next_is_delivered(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    for event_id in range(1, 5):
        await engine.add_block_task(add_request(event_id))
    history.fail(1, NotFound("run gone"))
    history.fail(2, FailedPrecondition("started by another poll"))
    history.fail(3, AlreadyExists("started"))

    assert scheduled_event_id(await poll(engine)) == 4
    assert history.called_for() == [1, 2, 3, 4]
    assert (await poll(engine, within=0.05)).task_token == b""
    await engine.stop()
    assert await backlog(persistence) == 0


async def test_unexpected_history_errors_never_drop_a_task(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    """Only history's "stale" consumes a task: history keeps the block scheduled, so a task
    dropped on any other failure would strand its run (issue 17). Here a routed call leaked
    the persistence layer's Unavailable (the database restarting), then history had a bug."""
    await engine.add_block_task(add_request(1))
    await engine.add_block_task(add_request(2))
    history.fail(
        1,
        PersistenceUnavailable("not yet accepting connections"),
        PersistenceUnavailable("not yet accepting connections"),
        Internal("bug"),
        Internal("bug"),
    )

    # The failing task rests after each failure, so the one behind it goes first.
    assert scheduled_event_id(await poll(engine)) == 2
    assert scheduled_event_id(await poll(engine)) == 1
    assert history.called_for().count(1) == 5
    await engine.stop()
    assert await backlog(persistence) == 0


async def test_a_task_history_cannot_start_does_not_hold_up_the_others(
    make_engine: EngineFactory, history: FakeHistory, persistence: SqlPersistence
) -> None:
    """A history host killed under load: the tasks of its shards fail RecordBlockStarted
    until their shards move (the membership ttl). They rest, with a doubling back-off, and
    every other task is handed out meanwhile instead of each poll retrying the head."""
    engine = make_engine(retry_backoff=0.05)
    for event_id in range(1, 8):
        await engine.add_block_task(add_request(event_id))
    dead = {1, 2, 3}
    for event_id in dead:
        history.fail(event_id, *[Unavailable("history host gone")] * 3)

    got = [scheduled_event_id(await poll(engine)) for _ in range(4)]
    assert got == [4, 5, 6, 7]
    assert history.called_for()[:4] == [1, 2, 3, 4]  # each dead task tried once, then rested
    assert sorted([scheduled_event_id(await poll(engine)) for _ in range(3)]) == [1, 2, 3]
    for event_id in dead:  # three failures each, at rests of 0.05, 0.1 and 0.2 s
        assert history.called_for().count(event_id) == 4
    await engine.stop()
    assert await backlog(persistence) == 0


async def test_unavailable_history_keeps_the_task(
    make_engine: EngineFactory, history: FakeHistory, persistence: SqlPersistence
) -> None:
    engine = make_engine(long_poll_timeout=0.1)
    await engine.add_block_task(add_request(1))
    history.down = Unavailable("shard moving")

    assert (await poll(engine)).task_token == b""
    assert history.called_for()[0] == 1
    assert await backlog(persistence) == 1

    history.down = None
    assert scheduled_event_id(await poll(engine)) == 1


async def test_unavailable_history_on_a_sync_match_persists_the_task(
    make_engine: EngineFactory, history: FakeHistory, persistence: SqlPersistence
) -> None:
    engine = make_engine(long_poll_timeout=0.1)
    history.down = Unavailable("shard moving")
    polling = await waiting_poll(engine)

    await engine.add_block_task(add_request(1))  # returns once the task is durable
    assert await backlog(persistence) == 1
    assert history.called_for()[0] == 1
    await polling

    history.down = None
    assert scheduled_event_id(await poll(engine)) == 1


async def test_a_poll_cancelled_while_starting_gives_the_task_back(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    history.gate = asyncio.Event()
    polling = await waiting_poll(engine)
    adding = asyncio.create_task(engine.add_block_task(add_request(1)))
    await history.entered.wait()

    polling.cancel()  # the worker went away while history was being asked
    await adding
    assert await backlog(persistence) == 1
    with pytest.raises(asyncio.CancelledError):
        await polling

    history.gate.set()
    assert scheduled_event_id(await poll(engine)) == 1


async def test_a_poll_cancelled_as_it_is_handed_a_task_gives_it_back(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    polling = await waiting_poll(engine)
    partition = await engine.partition(KEY)
    adding = asyncio.create_task(engine.add_block_task(add_request(1)))
    # One turn of the loop: the add hands the task over; the poll has not run since. This race
    # needs an exact interleaving, which no event can express.
    await asyncio.sleep(0)
    assert partition.waiting_polls == 0
    polling.cancel()

    async with asyncio.timeout(5):
        await adding
    assert await backlog(persistence) == 1
    assert history.calls == []


async def test_expired_tasks_are_not_delivered(
    make_engine: EngineFactory,
    history: FakeHistory,
    clock: FakeClock,
    persistence: SqlPersistence,
) -> None:
    engine = make_engine()
    await engine.add_block_task(add_request(1, schedule_to_start=10))
    await engine.add_block_task(add_request(2))
    await engine.add_block_task(add_request(3, schedule_to_start=10))
    await engine.stop()

    clock.advance(5)
    engine = make_engine()
    assert scheduled_event_id(await poll(engine)) == 1  # read and still fresh: buffered
    clock.advance(6)
    assert scheduled_event_id(await poll(engine)) == 2
    assert (await poll(engine, within=0.05)).task_token == b""  # 3 expired in the buffer
    await engine.stop()

    await make_engine().add_block_task(add_request(4, schedule_to_start=1))
    clock.advance(2)
    # Expired before any host read it.
    assert (await poll(make_engine("host-b"), within=0.05)).task_token == b""
    assert history.called_for() == [1, 2]


async def test_another_host_fences_the_first(
    make_engine: EngineFactory, persistence: SqlPersistence
) -> None:
    first = make_engine("host-a")
    await first.add_block_task(add_request(1))
    first_partition = await first.partition(KEY)

    second = make_engine("host-b")
    await second.partition(KEY)  # leases the partition: range_id moves on

    with pytest.raises(Unavailable) as lost:
        await first.add_block_task(add_request(2))
    assert lost.value.reason == "TASK_QUEUE_PARTITION_MOVED"
    await first_partition.wait_closed()
    assert KEY not in first.loaded_partitions()

    assert scheduled_event_id(await poll(second)) == 1
    assert (await poll(second, within=0.05)).task_token == b""
    status = (await second.describe_task_queue(describe_request())).status
    assert status.owner_host == "host-b"


async def test_restart_redelivers_unacked_tasks_and_no_acked_one(
    make_engine: EngineFactory, persistence: SqlPersistence
) -> None:
    first = make_engine()
    for event_id in range(1, 6):
        await first.add_block_task(add_request(event_id))
    assert [scheduled_event_id(await poll(first)) for _ in range(2)] == [1, 2]
    await first.stop()
    _, info = await stored_info(persistence)
    assert info.ack_level > 0
    assert await backlog(persistence) == 3

    second = make_engine("host-b")
    assert [scheduled_event_id(await poll(second)) for _ in range(3)] == [3, 4, 5]
    assert (await poll(second, within=0.05)).task_token == b""


async def test_cancel_outstanding_poll_returns_it_empty_at_once(
    engine: MatchingEngine, persistence: SqlPersistence
) -> None:
    polling = await waiting_poll(engine, poller_id="poll-9")

    assert engine.cancel_outstanding_poll("poll-9")
    async with asyncio.timeout(1):
        got = await polling
    assert got.task_token == b""
    assert not engine.cancel_outstanding_poll("poll-9")

    await engine.add_block_task(add_request(1))  # no poll left to match
    assert await backlog(persistence) == 1


async def test_preferred_worker_gets_the_sync_match(engine: MatchingEngine) -> None:
    first = await waiting_poll(engine, count=1, identity="worker-1")
    second = await waiting_poll(engine, count=2, identity="worker-2")

    await engine.add_block_task(add_request(1, preferred_worker="worker-2"))
    assert scheduled_event_id(await second) == 1
    await engine.add_block_task(add_request(2, preferred_worker="gone-worker"))
    assert scheduled_event_id(await first) == 2


async def test_describe_shows_recent_pollers_and_the_backlog(
    engine: MatchingEngine, clock: FakeClock
) -> None:
    for event_id in range(1, 4):
        await engine.add_block_task(add_request(event_id))
    assert scheduled_event_id(await poll(engine, identity="worker-1", rate=5.0)) == 1
    clock.advance(200)
    assert scheduled_event_id(await poll(engine, identity="worker-2")) == 2

    described = await engine.describe_task_queue(describe_request())
    assert [(p.identity, p.rate_per_second) for p in described.pollers] == [
        ("worker-1", 5.0),
        ("worker-2", 0.0),
    ]
    status = described.status
    assert (status.partition, status.owner_host, status.backlog_count_hint) == (0, "host-a", 1)
    assert status.read_level >= status.ack_level > 0

    clock.advance(200)  # worker-1 last polled 400 s ago, worker-2 200 s ago
    described = await engine.describe_task_queue(describe_request())
    assert [p.identity for p in described.pollers] == ["worker-2"]


async def test_too_many_polls_are_refused(make_engine: EngineFactory) -> None:
    engine = make_engine(max_outstanding_polls=2)
    first = await waiting_poll(engine, count=1)
    second = await waiting_poll(engine, count=2)

    with pytest.raises(ResourceExhausted) as refused:
        await poll(engine)
    assert refused.value.reason == "TOO_MANY_OUTSTANDING_POLLS"

    first.cancel()
    await (await engine.partition(KEY)).wait_for_polls(waiting=1)
    third = await waiting_poll(engine, count=2)  # the slot was freed
    await engine.stop()
    assert (await second).task_token == (await third).task_token == b""


async def test_stop_answers_waiting_polls_and_refuses_new_calls(
    engine: MatchingEngine, persistence: SqlPersistence
) -> None:
    await engine.add_block_task(add_request(1))
    assert scheduled_event_id(await poll(engine)) == 1
    polling = await waiting_poll(engine)

    await engine.stop()
    assert (await polling).task_token == b""
    with pytest.raises(Unavailable):
        await engine.add_block_task(add_request(2))
    _, info = await stored_info(persistence)
    assert info.ack_level > 0


async def test_idle_partition_is_unloaded_with_its_ack_level(
    make_engine: EngineFactory, persistence: SqlPersistence
) -> None:
    engine = make_engine(idle_unload_after=0.05, ack_persist_interval=0.01)
    await engine.add_block_task(add_request(1))
    assert scheduled_event_id(await poll(engine)) == 1
    partition = await engine.partition(KEY)

    await partition.wait_closed()
    assert KEY not in engine.loaded_partitions()
    assert await backlog(persistence) == 0
    _, info = await stored_info(persistence)
    assert info.ack_level > 0


def _direct(scheduled_event_id: int, attempt: int = 1) -> flow_service_pb2.PollBlockTaskResponse:
    """The worker's task history hands matching with a directly started attempt."""
    task = flow_service_pb2.PollBlockTaskResponse(
        task_token=f"token-{scheduled_event_id}-{attempt}".encode(),
        run=RUN,
        block_id=f"block-{scheduled_event_id}",
        block_type="ocr@1",
        attempt=attempt,
    )
    task.started_time.FromSeconds(1)
    return task


async def test_a_direct_task_goes_to_a_waiting_poll_without_record_block_started(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    polling = await waiting_poll(engine)
    request = add_request(7)
    request.direct_task.CopyFrom(_direct(7))

    answer = await engine.add_block_task(request)
    got = await polling

    assert answer.sync_matched
    assert (got.task_token, got.block_id, got.attempt) == (b"token-7-1", "block-7", 1)
    assert got.started_time.seconds > 1  # stamped when matching handed it over
    assert history.calls == []
    assert await backlog(persistence) == 0


async def test_a_direct_task_without_a_waiting_poll_is_persisted_as_a_pointer(
    make_engine: EngineFactory, history: FakeHistory, persistence: SqlPersistence
) -> None:
    engine = make_engine()
    request = add_request(7)
    request.direct_task.CopyFrom(_direct(7))

    answer = await engine.add_block_task(request)

    assert not answer.sync_matched
    assert await backlog(persistence) == 1
    # Polled from the backlog, it is started through history like any other task.
    got = await poll(engine)
    assert scheduled_event_id(got) == 7
    assert history.called_for() == [7]


async def test_a_direct_attempt_added_again_is_not_handed_out_twice(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    """History retried the add, or a new shard owner redelivered its outbox task: the attempt
    is out already, so the second add is answered as matched and no poll gets it."""
    first = await waiting_poll(engine)
    request = add_request(7)
    request.direct_task.CopyFrom(_direct(7))
    assert (await engine.add_block_task(request)).sync_matched
    assert (await first).block_id == "block-7"

    second = await waiting_poll(engine)
    again = add_request(7)  # a redelivered outbox task carries no worker's task
    assert (await engine.add_block_task(again)).sync_matched
    assert (await engine.add_block_task(request)).sync_matched
    assert await backlog(persistence) == 0
    assert history.calls == []

    # The next attempt of the same block is a new task.
    retried = add_request(7)
    retried.attempt = 2
    retried.direct_task.CopyFrom(_direct(7, attempt=2))
    assert (await engine.add_block_task(retried)).sync_matched
    assert (await second).attempt == 2


async def test_a_poll_cancelled_as_it_is_handed_a_direct_task_persists_it(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    polling = await waiting_poll(engine)
    partition = await engine.partition(KEY)
    request = add_request(7)
    request.direct_task.CopyFrom(_direct(7))
    adding = asyncio.create_task(engine.add_block_task(request))
    # One turn of the loop: the add hands the task over; the poll has not run since (as in
    # test_a_poll_cancelled_as_it_is_handed_a_task_gives_it_back).
    await asyncio.sleep(0)
    assert partition.waiting_polls == 0
    polling.cancel()

    async with asyncio.timeout(5):
        answer = await adding

    assert not answer.sync_matched
    assert await backlog(persistence) == 1


async def test_an_add_waits_briefly_for_a_poll_before_it_is_persisted(
    make_engine: EngineFactory, history: FakeHistory, persistence: SqlPersistence
) -> None:
    """No poll waits when the task comes (workers are between tasks): the add waits in memory
    and the next poll takes it as a sync match, with nothing written."""
    engine = make_engine(sync_match_wait=30.0)
    partition = await engine.partition(KEY)
    adding = asyncio.create_task(engine.add_block_task(add_request(4)))
    async with asyncio.timeout(5):
        await partition.wait_for_held(held=1)

    got = await poll(engine)
    answer = await adding

    assert scheduled_event_id(got) == 4
    assert answer.sync_matched
    assert await backlog(persistence) == 0


async def test_an_add_no_poll_takes_in_time_is_persisted(
    make_engine: EngineFactory, history: FakeHistory, persistence: SqlPersistence
) -> None:
    engine = make_engine(sync_match_wait=0.05)
    answer = await engine.add_block_task(add_request(4))
    assert not answer.sync_matched
    assert await backlog(persistence) == 1
    assert scheduled_event_id(await poll(engine)) == 4


async def test_the_same_direct_attempt_held_twice_reaches_one_poll(
    make_engine: EngineFactory, history: FakeHistory, persistence: SqlPersistence
) -> None:
    """Two adds of one attempt wait for a poll at once (history sent it again): the first
    poll gets it, and the next drops the copy and goes on waiting."""
    engine = make_engine(sync_match_wait=30.0)
    partition = await engine.partition(KEY)
    request = add_request(7)
    request.direct_task.CopyFrom(_direct(7))
    adds = [asyncio.create_task(engine.add_block_task(request)) for _ in range(2)]
    async with asyncio.timeout(5):
        await partition.wait_for_held(held=2)

    assert (await poll(engine)).task_token == b"token-7-1"
    second = await poll(engine, within=0.5)  # drops the copy, then waits out its deadline

    assert not second.task_token
    assert [(await a).sync_matched for a in adds] == [True, True]
    assert history.calls == []
    assert await backlog(persistence) == 0


async def test_an_add_cancelled_while_it_waits_for_a_poll_leaves_nothing_behind(
    make_engine: EngineFactory, history: FakeHistory, persistence: SqlPersistence
) -> None:
    """History went away (its shard moved) while its add waited: no later poll may get the
    task, whose sender will add it again or has given it up."""
    engine = make_engine(sync_match_wait=30.0)
    partition = await engine.partition(KEY)
    request = add_request(7)
    request.direct_task.CopyFrom(_direct(7))
    adding = asyncio.create_task(engine.add_block_task(request))
    async with asyncio.timeout(5):
        await partition.wait_for_held(held=1)

    adding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await adding

    assert partition.held_adds == 0
    assert not (await poll(engine, within=0.3)).task_token
    assert await backlog(persistence) == 0


async def test_describe_shares_sync_matches_among_dispatched_tasks(
    engine: MatchingEngine, history: FakeHistory
) -> None:
    polling = await waiting_poll(engine)
    await engine.add_block_task(add_request(1))  # a poll waits: a sync match
    assert scheduled_event_id(await polling) == 1
    for event_id in (2, 3, 4):  # no poll waits: each goes to the backlog
        await engine.add_block_task(add_request(event_id))
    for _ in range(3):
        scheduled_event_id(await poll(engine, within=5.0))
    described = await engine.describe_task_queue(describe_request())
    assert described.status.sync_match_ratio == 0.25
    assert not described.status.HasField("oldest_task_age")  # nothing waits
