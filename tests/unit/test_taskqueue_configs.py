"""Where adds and polls go: the partition-count cache (taskqueue_configs.py) and the merge of
a queue's partitions in DescribeTaskQueue."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tideflow.api.v1 import common_pb2, task_queue_pb2
from tideflow_server.frontend.task_queues import merge_described
from tideflow_server.internal.v1 import matching_service_pb2, records_pb2
from tideflow_server.persistence import errors as store_errors
from tideflow_server.persistence.records import TaskQueueKey, TaskQueueRow
from tideflow_server.rpc.errors import Unavailable
from tideflow_server.taskqueue_configs import TaskQueueConfigs, attempt_partition, from_root_info

QUEUE = common_pb2.TaskQueue(name="gpu-ocr")


class _Tasks:
    """The one TaskStore call the cache makes, counted; rows by (namespace, queue)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], records_pb2.TaskQueueInfo] = {}
        self.reads: list[TaskQueueKey] = []
        self.down = False
        self.gate: asyncio.Event | None = None

    async def get_task_queue(self, key: TaskQueueKey) -> TaskQueueRow:
        self.reads.append(key)
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise store_errors.Unavailable("database away")
        info = self.rows.get((key.namespace_id, key.name))
        if info is None:
            raise store_errors.NotFound("no such queue")
        return TaskQueueRow(key, 1, info.SerializeToString())


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _cache(tasks: _Tasks, clock: _Clock) -> TaskQueueConfigs:
    return TaskQueueConfigs(tasks, ttl_s=5.0, clock=clock)  # type: ignore[arg-type]


def test_an_attempt_always_goes_to_the_same_partition_and_attempts_spread() -> None:
    seen = Counter(attempt_partition(4, f"run-{i}", 5, 1) for i in range(400))
    assert set(seen) == {0, 1, 2, 3}
    assert min(seen.values()) > 60
    assert attempt_partition(4, "run-1", 5, 1) == attempt_partition(4, "run-1", 5, 1)
    assert attempt_partition(1, "run-1", 5, 1) == 0


async def test_a_queue_without_a_row_has_the_default_partitions() -> None:
    tasks, clock = _Tasks(), _Clock()
    queue = await _cache(tasks, clock).get("ns", QUEUE)
    assert (queue.partitions, queue.read_partitions) == (4, 4)
    assert tasks.reads == [TaskQueueKey("ns", "gpu-ocr", common_pb2.TASK_QUEUE_KIND_NORMAL, 0)]


async def test_the_root_row_sets_the_count_and_polls_read_every_partition_still_in_use() -> None:
    tasks, clock = _Tasks(), _Clock()
    tasks.rows[("ns", "gpu-ocr")] = records_pb2.TaskQueueInfo(
        config=task_queue_pb2.TaskQueueConfig(partitions=2), read_partitions=8
    )
    cache = _cache(tasks, clock)
    queue = await cache.get("ns", QUEUE)
    assert (queue.partitions, queue.read_partitions) == (2, 8)
    polled = {await cache.poll_partition("ns", QUEUE) for _ in range(200)}
    assert polled == set(range(8))
    added = {
        await cache.add_partition("ns", QUEUE, run_id=f"r{i}", scheduled_event_id=3, attempt=1)
        for i in range(50)
    }
    assert added == {0, 1}


async def test_one_read_per_queue_per_ttl_and_none_while_it_refreshes() -> None:
    tasks, clock = _Tasks(), _Clock()
    cache = _cache(tasks, clock)
    await asyncio.gather(*(cache.get("ns", QUEUE) for _ in range(20)))  # first use: one read
    for _ in range(20):
        await cache.get("ns", QUEUE)
    assert len(tasks.reads) == 1

    tasks.rows[("ns", "gpu-ocr")] = records_pb2.TaskQueueInfo(
        config=task_queue_pb2.TaskQueueConfig(partitions=6)
    )
    clock.now += 5.0
    tasks.gate = asyncio.Event()
    stale = [await cache.get("ns", QUEUE) for _ in range(20)]  # answered from the old entry
    assert {q.partitions for q in stale} == {4}
    await asyncio.sleep(0)
    assert len(tasks.reads) == 2  # one refresh in the background
    tasks.gate.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert (await cache.get("ns", QUEUE)).partitions == 6
    assert len(tasks.reads) == 2


async def test_a_failed_refresh_keeps_the_last_value_and_a_failed_first_read_is_unavailable() -> (
    None
):
    tasks, clock = _Tasks(), _Clock()
    cache = _cache(tasks, clock)
    assert (await cache.get("ns", QUEUE)).partitions == 4
    tasks.down = True
    clock.now += 10
    assert (await cache.get("ns", QUEUE)).partitions == 4
    for _ in range(5):
        await asyncio.sleep(0)
    assert (await cache.get("ns", QUEUE)).partitions == 4

    with pytest.raises(Unavailable):
        await cache.get("ns", common_pb2.TaskQueue(name="other"))


async def test_a_sticky_queue_has_one_partition_and_costs_no_read() -> None:
    tasks = _Tasks()
    sticky = common_pb2.TaskQueue(name="worker-7", kind=common_pb2.TASK_QUEUE_KIND_STICKY)
    queue = await _cache(tasks, _Clock()).get("ns", sticky)
    assert (queue.partitions, queue.read_partitions) == (1, 1)
    assert tasks.reads == []


def _described(
    partition: int, backlog: int, *pollers: tuple[str, int]
) -> matching_service_pb2.DescribeTaskQueueResponse:
    response = matching_service_pb2.DescribeTaskQueueResponse(
        status=task_queue_pb2.TaskQueuePartitionStatus(
            partition=partition, backlog_count_hint=backlog, owner_host=f"host-{partition % 2}"
        )
    )
    for identity, seconds in pollers:
        poller = response.pollers.add(identity=identity)
        poller.last_access_time.FromSeconds(seconds)
    return response


def test_describe_merges_pollers_by_identity_and_sums_the_backlog() -> None:
    root = _described(0, 3, ("w-1", 50), ("w-2", 10))
    root.config.rate_per_second = 50
    merged = merge_described(
        [root, _described(2, 4, ("w-1", 70)), _described(1, 0), _described(3, 1, ("w-3", 5))]
    )
    assert merged.backlog_count_hint == 8
    assert [p.partition for p in merged.partitions] == [0, 1, 2, 3]
    assert [(p.identity, p.last_access_time.seconds) for p in merged.pollers] == [
        ("w-1", 70),
        ("w-2", 10),
        ("w-3", 5),
    ]
    assert merged.config.rate_per_second == 50


@pytest.mark.parametrize(
    "config",
    [
        task_queue_pb2.TaskQueueConfig(partitions=8, in_flight_first=True),
        task_queue_pb2.TaskQueueConfig(partitions=8, max_concurrency=3),
        task_queue_pb2.TaskQueueConfig(partitions=8, block_concurrency={"ocr@1": 2}),
    ],
)
def test_a_queue_wide_rule_takes_adds_at_the_root_and_keeps_reading_its_partitions(
    config: task_queue_pb2.TaskQueueConfig,
) -> None:
    queue = from_root_info(records_pb2.TaskQueueInfo(config=config, read_partitions=4))
    assert (queue.partitions, queue.read_partitions) == (1, 8)
    plain = from_root_info(records_pb2.TaskQueueInfo(config=task_queue_pb2.TaskQueueConfig()))
    assert (plain.partitions, plain.read_partitions) == (4, 4)
