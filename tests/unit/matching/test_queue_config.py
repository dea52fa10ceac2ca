"""A queue's config through the engine: persisted on the root partition, applied by the other
partitions (pushed, read on load, read back now and then), and the dispatch rate limits it
sets, on polls of the backlog and on sync matches alike."""

from __future__ import annotations

import asyncio

from google.protobuf import field_mask_pb2

from tests.unit.matching.conftest import EngineFactory
from tests.unit.matching.support import (
    KEY,
    NAMESPACE,
    QUEUE,
    FakeHistory,
    add_request,
    describe_request,
    poll,
    scheduled_event_id,
)
from tideflow.api.v1 import common_pb2, task_queue_pb2
from tideflow_server.internal.v1 import matching_service_pb2, records_pb2
from tideflow_server.matching import MatchingEngine
from tideflow_server.matching.handler import validate_apply_config, validate_update_config
from tideflow_server.persistence.records import TaskQueueKey
from tideflow_server.persistence.sql import SqlPersistence
from tideflow_server.rpc.errors import InvalidArgument

LEAF = TaskQueueKey(KEY.namespace_id, KEY.name, KEY.kind, 1)


def _update(mask: list[str], **config: object) -> matching_service_pb2.UpdateTaskQueueConfigRequest:
    return matching_service_pb2.UpdateTaskQueueConfigRequest(
        namespace_id=NAMESPACE,
        task_queue=common_pb2.TaskQueue(name=QUEUE),
        config=task_queue_pb2.TaskQueueConfig(**config),  # type: ignore[arg-type]
        update_mask=field_mask_pb2.FieldMask(paths=mask),
    )


async def test_the_root_persists_the_config_and_tells_loaded_partitions(
    engine: MatchingEngine, persistence: SqlPersistence
) -> None:
    leaf = await engine.partition(LEAF)
    updated = await engine.update_task_queue_config(
        _update(["rate_per_second", "partitions"], rate_per_second=8.0, partitions=2)
    )
    assert updated.config_version == 1
    assert updated.config == task_queue_pb2.TaskQueueConfig(rate_per_second=8.0, partitions=2)
    row = records_pb2.TaskQueueInfo.FromString((await persistence.tasks.get_task_queue(KEY)).data)
    assert row.config == updated.config and row.config_version == 1
    # Lowered from the default 4: polls keep reading the 4 partitions until they are empty.
    assert row.read_partitions == 4
    assert (leaf.queue_config, leaf.config_version) == (updated.config, 1)

    again = await engine.update_task_queue_config(_update(["burst"], burst=2))
    assert again.config_version == 2
    assert again.config == task_queue_pb2.TaskQueueConfig(
        rate_per_second=8.0, burst=2, partitions=2
    )
    described = await engine.describe_task_queue(describe_request())
    assert described.config == again.config and described.config_version == 2
    assert described.status.rate_limit_per_second == 4.0  # its share: 8/s over 2 partitions


async def test_a_leaf_reads_the_config_on_load_and_heals_a_lost_push(
    make_engine: EngineFactory,
) -> None:
    root_host = make_engine("host-a")  # no peers: it cannot push to host-b
    leaf_host = make_engine("host-b", config_refresh=0.05)
    await root_host.update_task_queue_config(_update(["rate_per_second"], rate_per_second=3.0))
    leaf = await leaf_host.partition(LEAF)
    assert (leaf.queue_config.rate_per_second, leaf.config_version) == (3.0, 1)

    await root_host.update_task_queue_config(_update(["rate_per_second"], rate_per_second=4.0))
    async with asyncio.timeout(5):
        await leaf.wait_for_config(2)
    assert leaf.queue_config.rate_per_second == 4.0


async def test_a_leaf_of_an_unconfigured_queue_has_the_defaults(engine: MatchingEngine) -> None:
    leaf = await engine.partition(LEAF)
    assert (leaf.queue_config, leaf.config_version) == (task_queue_pb2.TaskQueueConfig(), 0)


async def _timed_polls(engine: MatchingEngine, count: int, *, rate: float = 0.0) -> float:
    loop = asyncio.get_running_loop()
    began = loop.time()
    for _ in range(count):
        scheduled_event_id(await poll(engine, rate=rate, within=5.0))
    return loop.time() - began


async def test_backlog_polls_wait_for_tokens(engine: MatchingEngine, history: FakeHistory) -> None:
    await engine.update_task_queue_config(
        _update(
            ["rate_per_second", "burst", "partitions"], rate_per_second=20.0, burst=2, partitions=1
        )
    )
    for event_id in range(1, 7):
        await engine.add_block_task(add_request(event_id))
    # 2 at once (the burst), then one every 50 ms.
    took = await _timed_polls(engine, 6)
    assert 0.19 <= took < 1.0
    assert history.called_for() == [1, 2, 3, 4, 5, 6]


async def test_a_pollers_declared_rate_caps_it_on_an_unlimited_queue(
    engine: MatchingEngine,
) -> None:
    # One partition, so the poller's whole declared rate applies to it.
    await engine.update_task_queue_config(_update(["partitions"], partitions=1))
    for event_id in range(1, 8):
        await engine.add_block_task(add_request(event_id))
    # A second's worth (5) at once, then one every 200 ms.
    took = await _timed_polls(engine, 7, rate=5.0)
    assert 0.39 <= took < 1.5


async def test_a_raised_rate_frees_a_poll_waiting_for_a_token_at_once(
    engine: MatchingEngine,
) -> None:
    await engine.update_task_queue_config(
        _update(
            ["rate_per_second", "burst", "partitions"], rate_per_second=0.1, burst=1, partitions=1
        )
    )
    await engine.add_block_task(add_request(1))
    assert scheduled_event_id(await poll(engine, within=5.0)) == 1
    # The next token is 10 s away: the poll waits, and the add waits for it (sync match).
    waiting = asyncio.ensure_future(poll(engine, within=5.0))
    partition = await engine.partition(KEY)
    await partition.wait_for_polls(waiting=1)
    add = asyncio.ensure_future(engine.add_block_task(add_request(2)))
    await asyncio.sleep(0.05)
    assert not waiting.done()

    loop = asyncio.get_running_loop()
    raised_at = loop.time()
    await engine.update_task_queue_config(_update(["rate_per_second"], rate_per_second=1000.0))
    assert scheduled_event_id(await waiting) == 2
    assert loop.time() - raised_at < 0.5
    await add


def _violations(check: object, request: object) -> list[str]:
    assert callable(check)
    try:
        check(request)
    except InvalidArgument as e:
        return sorted(v.field for v in e.violations)
    return []


def test_the_internal_config_requests_are_validated_with_field_paths() -> None:
    assert _violations(
        validate_update_config,
        matching_service_pb2.UpdateTaskQueueConfigRequest(
            config=task_queue_pb2.TaskQueueConfig(rate_per_second=-1.0, burst=-1),
            update_mask=field_mask_pb2.FieldMask(paths=["rate_per_second", "burst", "nope"]),
        ),
    ) == [
        "config.burst",
        "config.rate_per_second",
        "namespace_id",
        "task_queue.name",
        "update_mask",
    ]
    assert _violations(validate_update_config, _update(["burst"], burst=3)) == []
    assert _violations(
        validate_apply_config,
        matching_service_pb2.ApplyTaskQueueConfigRequest(
            namespace_id=NAMESPACE,
            task_queue=common_pb2.TaskQueue(name=QUEUE),
            partition=-1,
            config=task_queue_pb2.TaskQueueConfig(partitions=99),
        ),
    ) == ["config.partitions", "config_version", "partition"]
