"""Forwarding between a queue's partitions (matching/forwarding.py): leaf polls wait at the
root, leaf adds and leaf backlog are offered to the root as sync matches only."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import cast

import pytest

from tests.unit.matching.conftest import TEST_CONFIG
from tests.unit.matching.support import (
    KEY,
    FakeClock,
    FakeHistory,
    add_request,
    poll_request,
    scheduled_event_id,
)
from tideflow.api.v1 import common_pb2, flow_service_pb2
from tideflow_server.internal.v1 import matching_service_pb2, records_pb2
from tideflow_server.matching import MatchingConfig, MatchingEngine, forwarding
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.persistence.records import TaskQueueKey
from tideflow_server.persistence.sql import SqlPersistence
from tideflow_server.rpc.clients import MatchingClient
from tideflow_server.rpc.errors import Unavailable

LEAF = dataclasses.replace(KEY, partition=2)


def leaf_add(scheduled_event_id: int) -> matching_service_pb2.AddBlockTaskRequest:
    request = add_request(scheduled_event_id)
    request.partition = LEAF.partition
    return request


async def poll_at(
    engine: MatchingEngine, partition: int, *, identity: str = "worker-1"
) -> flow_service_pb2.PollBlockTaskResponse:
    request = poll_request(identity=identity)
    request.partition = partition
    return (await engine.poll_block_task(request)).response


async def backlog(persistence: SqlPersistence, key: TaskQueueKey) -> int:
    return await persistence.tasks.count_backlog_tasks(key)


# -- pure rules ------------------------------------------------------------------------------


def test_only_a_leaf_poll_from_the_frontend_forwards() -> None:
    request = poll_request()
    assert not forwarding.forwards_poll(request)  # the root never forwards
    request.partition = 3
    assert forwarding.forwards_poll(request)
    request.forwarded_from = "gpu-ocr/1"
    assert not forwarding.forwards_poll(request)  # forwarded once, never again


def test_a_forwarded_poll_goes_to_the_root_under_its_own_poller_id() -> None:
    request = poll_request(poller_id="p-1")
    request.partition = 2
    forwarded = forwarding.forwarded_poll(request, LEAF)
    assert (forwarded.partition, forwarded.forwarded_from) == (0, "gpu-ocr/2")
    assert forwarded.poller_id == "p-1>2"
    assert forwarded.request == request.request
    assert request.partition == 2  # the leaf's request is left as it was


def test_a_forwarded_add_carries_the_task_but_no_expiry() -> None:
    info = records_pb2.BacklogTask(
        namespace_id="ns-1",
        run_id="r",
        execution_id="e",
        scheduled_event_id=9,
        attempt=2,
        block_id="ocr",
        priority=4,
        dispatch=records_pb2.TaskDispatch(priority=2, fairness_key="acme"),
    )
    info.expiry_time.FromSeconds(10)
    direct = flow_service_pb2.PollBlockTaskResponse(task_token=b"t")
    request = forwarding.forwarded_add(LEAF, info, preferred_identity="w", direct=direct)
    assert (request.partition, request.forwarded_from) == (0, "gpu-ocr/2")
    assert (request.run.run_id, request.run.execution_id) == ("r", "e")
    assert (request.scheduled_event_id, request.attempt, request.block_id) == (9, 2, "ocr")
    assert request.task_queue == common_pb2.TaskQueue(
        name="gpu-ocr", kind=common_pb2.TASK_QUEUE_KIND_NORMAL
    )
    assert request.dispatch.fairness_key == "acme" and request.priority == 4
    assert request.preferred_worker_identity == "w" and request.direct_task == direct
    assert not request.HasField("schedule_to_start_timeout")


# -- in one engine ---------------------------------------------------------------------------


async def test_a_leaf_poll_with_nothing_there_takes_a_task_added_at_the_root(
    engine: MatchingEngine,
) -> None:
    polling = asyncio.create_task(poll_at(engine, LEAF.partition))
    async with asyncio.timeout(5):
        await (await engine.partition(KEY)).wait_for_polls(waiting=1)
    assert (await engine.partition(LEAF)).waiting_polls == 0  # it waits at the root

    await engine.add_block_task(add_request(7))
    assert scheduled_event_id(await polling) == 7


async def test_a_leaf_add_goes_to_a_poll_waiting_at_the_root_and_is_never_written(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    polling = asyncio.create_task(poll_at(engine, 0))
    await (await engine.partition(KEY)).wait_for_polls(waiting=1)

    added = await engine.add_block_task(leaf_add(8))

    assert added.sync_matched
    assert scheduled_event_id(await polling) == 8
    assert history.called_for() == [8]  # started by the root's poll, once
    assert await backlog(persistence, LEAF) == 0
    assert await backlog(persistence, KEY) == 0


async def test_a_leaf_add_that_no_poll_takes_stays_at_the_leaf(
    engine: MatchingEngine, persistence: SqlPersistence
) -> None:
    added = await engine.add_block_task(leaf_add(9))
    assert not added.sync_matched
    assert await backlog(persistence, LEAF) == 1
    assert await backlog(persistence, KEY) == 0  # the root never keeps a forwarded task


async def test_the_root_answers_a_forwarded_add_at_once_when_no_poll_waits(
    engine: MatchingEngine, persistence: SqlPersistence
) -> None:
    request = add_request(10)
    request.forwarded_from = "gpu-ocr/1"
    async with asyncio.timeout(1):  # no sync-match wait, no write
        added = await engine.add_block_task(request)
    assert not added.sync_matched
    assert await backlog(persistence, KEY) == 0
    assert (await engine.partition(KEY)).held_adds == 0


async def test_a_lone_poller_at_the_root_drains_a_leaf_backlog(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    for event_id in (11, 12, 13):
        assert not (await engine.add_block_task(leaf_add(event_id))).sync_matched

    got = [scheduled_event_id(await poll_at(engine, 0)) for _ in range(3)]

    assert sorted(got) == [11, 12, 13]
    assert sorted(history.called_for()) == [11, 12, 13]  # each started once
    status = (await (await engine.partition(LEAF)).describe()).status
    assert status.ack_level == status.read_level > 0  # acked at the leaf once the root took them
    assert status.backlog_count_hint == 0


async def test_a_direct_task_forwarded_to_the_root_is_handed_out_once(
    engine: MatchingEngine, history: FakeHistory
) -> None:
    polling = asyncio.create_task(poll_at(engine, 0))
    await (await engine.partition(KEY)).wait_for_polls(waiting=1)
    request = leaf_add(14)
    request.direct_task.task_token = b"direct-14"

    assert (await engine.add_block_task(request)).sync_matched
    assert (await polling).task_token == b"direct-14"
    assert history.called_for() == []  # history started it already

    # The same attempt added again (a redelivered outbox task) is not handed out again.
    again = leaf_add(14)
    assert (await engine.add_block_task(again)).sync_matched


# -- a root on another host ------------------------------------------------------------------


class _Unreachable:
    """A root client whose every call fails, as while the root's host is gone."""

    def __init__(self) -> None:
        self.calls = 0

    async def add_block_task(
        self, request: matching_service_pb2.AddBlockTaskRequest, *, retry_budget_s: float | None
    ) -> matching_service_pb2.AddBlockTaskResponse:
        self.calls += 1
        raise Unavailable("no matching host is available")

    async def poll_block_task(
        self, request: matching_service_pb2.PollBlockTaskRequest, *, timeout_s: float
    ) -> matching_service_pb2.PollBlockTaskResponse:
        self.calls += 1
        raise Unavailable("no matching host is available")


@pytest.fixture
async def remote_root_engine(
    manager: PersistenceManager, history: FakeHistory, clock: FakeClock
) -> AsyncIterator[tuple[MatchingEngine, _Unreachable]]:
    client = _Unreachable()
    engine = MatchingEngine(
        manager,
        history,
        host_id="host-leaf",
        config=MatchingConfig(**TEST_CONFIG),
        clock=clock,
        peers=cast(MatchingClient, client),
        owns_root=lambda key: False,
    )
    yield engine, client
    await engine.stop()


async def test_a_leaf_poll_waits_at_its_leaf_when_the_root_is_unreachable(
    remote_root_engine: tuple[MatchingEngine, _Unreachable],
) -> None:
    engine, client = remote_root_engine
    polling = asyncio.create_task(poll_at(engine, LEAF.partition))
    async with asyncio.timeout(5):
        await (await engine.partition(LEAF)).wait_for_polls(waiting=1)
    assert client.calls == 1

    await engine.add_block_task(leaf_add(15))  # the local poll takes it: no offer to the root
    assert scheduled_event_id(await polling) == 15
    assert client.calls == 1


async def test_a_leaf_keeps_its_task_when_the_root_is_unreachable(
    remote_root_engine: tuple[MatchingEngine, _Unreachable], persistence: SqlPersistence
) -> None:
    engine, client = remote_root_engine
    assert not (await engine.add_block_task(leaf_add(16))).sync_matched
    assert client.calls >= 1
    assert await backlog(persistence, LEAF) == 1
