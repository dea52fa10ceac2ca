"""Key affinity in the engine: a task with an `affinity_key` goes first to the sticky poll of
the key's owner among the queue's live workers (known by their normal polls), warm keys
winning over hashing; describe shows each poller's sticky queue and warm keys. Real engines
on a real database, a fake history."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tests.unit.matching.conftest import EngineFactory
from tests.unit.matching.support import (
    KEY,
    NAMESPACE,
    FakeClock,
    FakeHistory,
    add_request,
    describe_request,
    poll_request,
    scheduled_event_id,
)
from tideflow.api.v1 import common_pb2, flow_service_pb2
from tideflow_server.internal.v1 import matching_service_pb2
from tideflow_server.matching import MatchingEngine
from tideflow_server.matching.affinity import Worker, owner
from tideflow_server.matching.sticky import sticky_key
from tideflow_server.persistence.sql import SqlPersistence

WORKERS = ("gpu-1", "gpu-2")


def sticky_of(identity: str) -> str:
    return f"{identity}-sticky"


def hashed_owner(key: str, identities: Sequence[str] = WORKERS) -> str:
    found = owner(key, [Worker(i, sticky_of(i)) for i in identities])
    assert found is not None
    return found.identity


async def normal_poll(engine: MatchingEngine, identity: str, warm_keys: Sequence[str] = ()) -> None:
    """A poll of the normal queue that returns at once: the worker is known and live."""
    request = poll_request(identity=identity)
    request.request.sticky_task_queue = sticky_of(identity)
    request.request.warm_keys.extend(warm_keys)
    deadline = asyncio.get_running_loop().time() + 0.01
    await engine.poll_block_task(request, deadline=deadline)


async def sticky_poll(
    engine: MatchingEngine, identity: str
) -> flow_service_pb2.PollBlockTaskResponse:
    request = poll_request(identity=identity)
    request.request.task_queue.CopyFrom(
        common_pb2.TaskQueue(name=sticky_of(identity), kind=common_pb2.TASK_QUEUE_KIND_STICKY)
    )
    return (await engine.poll_block_task(request)).response


async def waiting_sticky_polls(
    engine: MatchingEngine,
) -> dict[str, asyncio.Task[flow_service_pb2.PollBlockTaskResponse]]:
    polls = {w: asyncio.create_task(sticky_poll(engine, w)) for w in WORKERS}
    async with asyncio.timeout(5):
        for w in WORKERS:
            await engine.sticky_queue(sticky_key(NAMESPACE, sticky_of(w))).wait_for_polls(waiting=1)
    return polls


def keyed_add(event_id: int, key: str) -> matching_service_pb2.AddBlockTaskRequest:
    request = add_request(event_id)
    request.dispatch.affinity_key = key
    return request


async def counts(engine: MatchingEngine) -> tuple[int, int]:
    status = (await engine.describe_task_queue(describe_request())).status
    return status.sticky_hits, status.sticky_fallbacks


async def test_a_keyed_task_goes_to_its_owners_sticky_poll(
    engine: MatchingEngine, history: FakeHistory, persistence: SqlPersistence
) -> None:
    for w in WORKERS:
        await normal_poll(engine, w)
    polls = await waiting_sticky_polls(engine)
    expected = hashed_owner("model-x")

    added = await engine.add_block_task(keyed_add(7, "model-x"))

    assert added.sync_matched
    assert scheduled_event_id(await polls[expected]) == 7
    [started] = history.calls
    assert started.identity == expected
    assert started.worker_sticky_task_queue == sticky_of(expected)
    other = next(p for w, p in polls.items() if w != expected)
    assert not other.done()
    other.cancel()
    assert await counts(engine) == (1, 0)
    assert await persistence.tasks.count_backlog_tasks(KEY) == 0


async def test_a_worker_advertising_the_key_warm_wins_over_hashing(
    engine: MatchingEngine, history: FakeHistory
) -> None:
    key = "model-y"
    warm = next(w for w in WORKERS if w != hashed_owner(key))
    for w in WORKERS:
        await normal_poll(engine, w, warm_keys=[key] if w == warm else [])
    polls = await waiting_sticky_polls(engine)

    assert (await engine.add_block_task(keyed_add(8, key))).sync_matched

    assert scheduled_event_id(await polls[warm]) == 8
    assert [c.identity for c in history.calls] == [warm]
    for p in polls.values():
        p.cancel()


async def test_a_worker_not_polling_for_the_live_window_loses_its_keys(
    make_engine: EngineFactory, clock: FakeClock, history: FakeHistory
) -> None:
    engine = make_engine(affinity_live_for=2.0, sticky_poller_gone_after=60.0)
    key = "model-z"
    first = hashed_owner(key)
    second = next(w for w in WORKERS if w != first)
    await normal_poll(engine, first)
    clock.advance(3.0)  # `first` polled the normal queue 3 s ago: not live any more
    await normal_poll(engine, second)
    polls = await waiting_sticky_polls(engine)

    assert (await engine.add_block_task(keyed_add(9, key))).sync_matched

    assert scheduled_event_id(await polls[second]) == 9
    assert [c.identity for c in history.calls] == [second]
    polls[first].cancel()


async def test_a_keyed_task_with_no_live_owner_goes_to_the_queue_uncounted(
    engine: MatchingEngine, persistence: SqlPersistence
) -> None:
    added = await engine.add_block_task(keyed_add(10, "model-w"))

    assert not added.sync_matched
    assert await persistence.tasks.count_backlog_tasks(KEY) == 1
    assert await counts(engine) == (0, 0)


async def test_describe_shows_each_pollers_sticky_queue_and_warm_keys(
    engine: MatchingEngine,
) -> None:
    await normal_poll(engine, "gpu-1", warm_keys=["llama-70b", "doc-9"])

    [poller] = (await engine.describe_task_queue(describe_request())).pollers

    assert poller.identity == "gpu-1"
    assert poller.sticky_task_queue == sticky_of("gpu-1")
    assert list(poller.warm_keys) == ["llama-70b", "doc-9"]
