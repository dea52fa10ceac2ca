"""Sticky queues (sticky.py): an `affinity: run` task goes to its worker's sticky poll first,
and to the normal queue, marked a fallback, when that poll does not take it in time or the
worker is gone. Real engines on a real database, a fake history."""

from __future__ import annotations

import asyncio
import time
from typing import cast

import pytest

from tests.unit.matching.conftest import EngineFactory
from tests.unit.matching.support import (
    KEY,
    NAMESPACE,
    FakeClock,
    FakeHistory,
    add_request,
    describe_request,
    poll,
    poll_request,
    scheduled_event_id,
)
from tideflow.api.v1 import common_pb2, flow_service_pb2
from tideflow_server.internal.v1 import matching_service_pb2
from tideflow_server.matching import MatchingEngine
from tideflow_server.matching.sticky import sticky_key
from tideflow_server.persistence.sql import SqlPersistence
from tideflow_server.rpc.clients import MatchingClient
from tideflow_server.rpc.errors import Unavailable

STICKY_QUEUE = "gpu-box:42-7f3a"
STICKY_KEY = sticky_key(NAMESPACE, STICKY_QUEUE)


def sticky_add(
    scheduled_event_id: int, *, wait_s: float = 2.0
) -> matching_service_pb2.AddBlockTaskRequest:
    request = add_request(scheduled_event_id)
    request.dispatch.sticky_task_queue = STICKY_QUEUE
    request.dispatch.sticky_schedule_to_start.FromNanoseconds(int(wait_s * 1e9))
    return request


async def sticky_poll(
    engine: MatchingEngine, *, identity: str = "gpu-box:42", within: float | None = None
) -> flow_service_pb2.PollBlockTaskResponse:
    request = poll_request(identity=identity)
    request.request.task_queue.CopyFrom(
        common_pb2.TaskQueue(name=STICKY_QUEUE, kind=common_pb2.TASK_QUEUE_KIND_STICKY)
    )
    deadline = None if within is None else asyncio.get_running_loop().time() + within
    return (await engine.poll_block_task(request, deadline=deadline)).response


async def waiting_sticky_poll(
    engine: MatchingEngine,
) -> asyncio.Task[flow_service_pb2.PollBlockTaskResponse]:
    polling = asyncio.create_task(sticky_poll(engine))
    async with asyncio.timeout(5):
        await engine.sticky_queue(STICKY_KEY).wait_for_polls(waiting=1)
    return polling


async def counts(engine: MatchingEngine) -> tuple[int, int]:
    status = (await engine.describe_task_queue(describe_request())).status
    return status.sticky_hits, status.sticky_fallbacks


async def test_the_workers_sticky_poll_gets_the_task_and_history_records_its_queue(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    polling = await waiting_sticky_poll(engine)
    normal = asyncio.create_task(poll(engine, identity="other-box"))
    async with asyncio.timeout(5):
        await (await engine.partition(KEY)).wait_for_polls(waiting=1)

    added = await engine.add_block_task(sticky_add(7))

    assert added.sync_matched
    assert scheduled_event_id(await polling) == 7
    [started] = history.calls
    assert started.identity == "gpu-box:42"
    assert started.worker_sticky_task_queue == STICKY_QUEUE
    assert started.task_queue.kind == common_pb2.TASK_QUEUE_KIND_STICKY
    assert not normal.done()  # the normal poll never saw it
    normal.cancel()
    assert await counts(engine) == (1, 0)
    assert await persistence.tasks.count_backlog_tasks(KEY) == 0


async def test_a_busy_worker_gets_the_task_within_the_sticky_wait(
    engine: MatchingEngine,
) -> None:
    # It polled a moment ago and comes back (its block finished) while the offer waits.
    await sticky_poll(engine, within=0.01)
    adding = asyncio.create_task(engine.add_block_task(sticky_add(3, wait_s=5)))
    assert scheduled_event_id(await sticky_poll(engine)) == 3
    assert (await adding).sync_matched
    assert await counts(engine) == (1, 0)


async def test_not_taken_within_the_sticky_wait_it_falls_back_to_the_normal_queue(
    engine: MatchingEngine, history: FakeHistory
) -> None:
    await sticky_poll(engine, within=0.01)  # the worker is alive, but busy
    normal = asyncio.create_task(poll(engine, identity="other-box"))
    async with asyncio.timeout(5):
        await (await engine.partition(KEY)).wait_for_polls(waiting=1)

    began = time.monotonic()
    added = await engine.add_block_task(sticky_add(5, wait_s=0.3))

    assert time.monotonic() - began >= 0.3
    assert added.sync_matched  # by the normal poll
    assert scheduled_event_id(await normal) == 5
    assert [c.identity for c in history.calls] == ["other-box"]
    assert await counts(engine) == (0, 1)


async def test_a_gone_worker_falls_back_at_once(
    make_engine: EngineFactory, clock: FakeClock, persistence: SqlPersistence
) -> None:
    engine = make_engine(sticky_poller_gone_after=1.0)
    await sticky_poll(engine, within=0.01)
    clock.advance(1.5)  # no poll since: the worker is gone

    began = time.monotonic()
    added = await engine.add_block_task(sticky_add(9, wait_s=30))

    assert time.monotonic() - began < 5
    assert not added.sync_matched  # no poll anywhere: durable in the normal partition
    assert await persistence.tasks.count_backlog_tasks(KEY) == 1
    assert scheduled_event_id(await poll(engine)) == 9
    assert await counts(engine) == (0, 1)


async def test_a_sticky_queue_never_polled_falls_back_at_once(
    engine: MatchingEngine, persistence: SqlPersistence
) -> None:
    began = time.monotonic()
    added = await engine.add_block_task(sticky_add(2, wait_s=30))
    assert time.monotonic() - began < 5
    assert not added.sync_matched
    assert await persistence.tasks.count_backlog_tasks(KEY) == 1


async def test_history_busy_on_the_sticky_start_keeps_the_task_in_the_normal_queue(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    history.fail(4, Unavailable("shard moving"))
    polling = await waiting_sticky_poll(engine)

    added = await engine.add_block_task(sticky_add(4))

    assert not added.sync_matched
    assert await persistence.tasks.count_backlog_tasks(KEY) == 1
    assert await counts(engine) == (0, 1)
    polling.cancel()
    assert scheduled_event_id(await poll(engine)) == 4


@pytest.mark.parametrize("offered", ["sticky_fallback", "forwarded_from"])
async def test_a_task_offered_before_is_not_offered_again(
    engine: MatchingEngine, history: FakeHistory, offered: str
) -> None:
    polling = await waiting_sticky_poll(engine)
    request = sticky_add(6)
    if offered == "sticky_fallback":
        request.dispatch.sticky_fallback = True  # a fallback, sent again
    else:
        request.forwarded_from = "host-b/gpu-ocr/1"  # a partition forwarded it

    added = await engine.add_block_task(request)

    assert not added.sync_matched
    assert not polling.done()
    polling.cancel()
    assert await counts(engine) == (0, 0)


async def test_a_direct_task_reaches_the_sticky_poll_without_record_started(
    engine: MatchingEngine, history: FakeHistory
) -> None:
    polling = await waiting_sticky_poll(engine)
    request = sticky_add(8)
    request.direct_task.task_token = b"started-by-history"

    assert (await engine.add_block_task(request)).sync_matched
    assert (await polling).task_token == b"started-by-history"
    assert history.calls == []


class _Peers:
    """Routes every add to `owner`, as MatchingClient would to the host owning the queue."""

    def __init__(self, owner: MatchingEngine) -> None:
        self.owner = owner
        self.sent: list[matching_service_pb2.AddBlockTaskRequest] = []

    async def add_block_task(
        self, request: matching_service_pb2.AddBlockTaskRequest, *, timeout_s: float | None = None
    ) -> matching_service_pb2.AddBlockTaskResponse:
        self.sent.append(request)
        return await self.owner.add_block_task(request)


async def test_a_sticky_queue_on_another_host_gets_the_offer_forwarded(
    make_engine: EngineFactory, history: FakeHistory
) -> None:
    owner = make_engine("host-b")
    peers = _Peers(owner)
    engine = make_engine("host-a", peers=cast(MatchingClient, peers))
    polling = await waiting_sticky_poll(owner)
    request = sticky_add(11)
    request.direct_task.task_token = b"started-by-history"

    assert (await engine.add_block_task(request)).sync_matched

    [sent] = peers.sent
    assert sent.task_queue.kind == common_pb2.TASK_QUEUE_KIND_STICKY
    assert sent.forwarded_from.startswith("host-a/")
    assert not sent.HasField("direct_task")  # forwarded, it is started through history
    response = await polling
    assert scheduled_event_id(response) == 11
    assert [c.worker_sticky_task_queue for c in history.calls] == [STICKY_QUEUE]
    assert await counts(engine) == (1, 0)


async def test_an_unreachable_sticky_host_means_a_fallback(
    make_engine: EngineFactory, persistence: SqlPersistence
) -> None:
    class _Down:
        async def add_block_task(
            self, request: matching_service_pb2.AddBlockTaskRequest, *, timeout_s: float
        ) -> matching_service_pb2.AddBlockTaskResponse:
            raise Unavailable("no matching host is available")

    engine = make_engine(peers=cast(MatchingClient, _Down()))
    assert not (await engine.add_block_task(sticky_add(12))).sync_matched
    assert await persistence.tasks.count_backlog_tasks(KEY) == 1
    assert await counts(engine) == (0, 1)


async def test_describe_of_a_sticky_queue_shows_its_worker(engine: MatchingEngine) -> None:
    polling = await waiting_sticky_poll(engine)
    request = describe_request()
    request.task_queue.CopyFrom(
        common_pb2.TaskQueue(name=STICKY_QUEUE, kind=common_pb2.TASK_QUEUE_KIND_STICKY)
    )
    described = await engine.describe_task_queue(request)
    assert [(p.identity, p.sticky_task_queue) for p in described.pollers] == [
        ("gpu-box:42", STICKY_QUEUE)
    ]
    assert engine.loaded_partitions() == []  # nothing leased for a sticky queue
    polling.cancel()
