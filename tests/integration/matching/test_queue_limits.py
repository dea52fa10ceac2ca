"""A task queue's config (UpdateTaskQueueConfig) and its dispatch rate limit, on real server
processes: SQLite in one process, PostgreSQL with two matching hosts. The config is persisted
with the queue's root partition and survives a matching restart; bad input changes nothing;
a limited queue dispatches at its rate across hosts, and a new rate is in force at once.

The queue has 4 partitions (the default, also set explicitly): adds and polls spread over
them and each holds a quarter of the rate (matching/ratelimit.py `spread_over`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from tests.support.cluster import Cluster
from tests.support.flows import BlockWorker, Client, Task
from tests.support.postgres import PostgresServer
from tideflow.api.v1 import common_pb2, flow_service_pb2, task_queue_pb2
from tideflow_server.rpc.errors import InvalidArgument, from_rpc_error

RATE, CHANGED_RATE, BURST = 50.0, 100.0, 10
MEASURE_S = 20.0
RUNS = 1_500
POLLERS = 8


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def limits_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    root = tmp_path_factory.mktemp(f"limits-{request.param}")
    if request.param == "sqlite":
        cluster = Cluster(root, {"backend": "sqlite", "sqlite": {"path": str(root / "t.db")}})
        cluster.schema_setup()
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        template: str = request.getfixturevalue("postgres_template")
        name = f"tideflow_limits_{uuid.uuid4().hex[:8]}"
        server.psql(f"CREATE DATABASE {name} TEMPLATE {template}")
        cluster = Cluster(
            root,
            {"backend": "postgres", "postgres": {"dsn": server.dsn(name)}},
            split=True,
            matching_processes=2,
        )
    async with cluster.running(settled=True):
        yield cluster


@pytest.fixture
async def client(limits_cluster: Cluster) -> AsyncIterator[Client]:
    opened = Client(limits_cluster.frontend)
    await opened.ensure_namespace()
    try:
        yield opened
    finally:
        await opened.close()


def _queue(name: str) -> common_pb2.TaskQueue:
    return common_pb2.TaskQueue(name=name, kind=common_pb2.TASK_QUEUE_KIND_NORMAL)


async def _update(
    client: Client, queue: str, mask: list[str], **config: Any
) -> task_queue_pb2.TaskQueueConfig:
    response = await client.stub.UpdateTaskQueueConfig(
        flow_service_pb2.UpdateTaskQueueConfigRequest(
            namespace=client.namespace,
            task_queue=_queue(queue),
            config=task_queue_pb2.TaskQueueConfig(**config),
            update_mask=field_mask_pb2.FieldMask(paths=mask),
            identity="test-operator",
        ),
        timeout=30,
    )
    return response.config


async def _describe(client: Client, queue: str) -> flow_service_pb2.DescribeTaskQueueResponse:
    return await client.stub.DescribeTaskQueue(
        flow_service_pb2.DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=_queue(queue)
        ),
        timeout=30,
    )


async def test_bad_config_names_each_field_and_changes_nothing(client: Client) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    set_before = await _update(
        client, queue, ["rate_per_second", "burst"], rate_per_second=20.0, burst=5
    )
    assert (set_before.rate_per_second, set_before.burst) == (20.0, 5)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _update(
            client,
            queue,
            ["rate_per_second", "burst", "partitions", "block_concurrency", "no_such_field"],
            rate_per_second=-1.0,
            burst=200_000,
            partitions=65,
            block_concurrency={"ocr@1": -2},
        )
    error = from_rpc_error(raised.value)
    assert isinstance(error, InvalidArgument)
    assert {v.field for v in error.violations} == {
        "config.rate_per_second",
        "config.burst",
        "config.partitions",
        "config.block_concurrency[ocr@1]",
        "update_mask",
    }

    described = await _describe(client, queue)
    assert described.config == set_before
    assert [p.rate_limit_per_second for p in described.partitions] == [5.0] * 4  # 20/s over 4


async def test_config_survives_a_matching_restart(limits_cluster: Cluster, client: Client) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    config = await _update(
        client,
        queue,
        ["rate_per_second", "partitions", "fairness_weights", "in_flight_first"],
        rate_per_second=7.5,
        partitions=4,
        fairness_weights={"tenant-a": 2.0},
        in_flight_first=True,
    )
    # Only the fields the mask names change; the others keep their value.
    later = await _update(client, queue, ["burst"], burst=3, rate_per_second=999.0)
    assert later.rate_per_second == 7.5 and later.burst == 3
    config.burst = 3
    assert later == config

    matching = [p for p in limits_cluster.processes.values() if "matching" in p.roles]
    for process in matching:
        process.kill()
    for process in matching:
        process.start()
    await asyncio.gather(*(p.wait_serving() for p in matching))

    described = await _describe(client, queue)
    assert described.config == config
    # In-flight first takes the queue's adds at its root alone, which so holds the whole rate.
    assert [p.rate_limit_per_second for p in described.partitions] == [7.5] * 4


class _Receipts:
    """When each task reached a worker (monotonic seconds), all pollers together."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.first = asyncio.Event()

    async def handle(self, task: Task) -> Any:
        self.times.append(time.monotonic())
        self.first.set()
        return None

    def between(self, start: float, end: float) -> int:
        return sum(1 for t in self.times if start <= t < end)


async def _start_runs(client: Client, flow: str, count: int) -> None:
    gate = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with gate:
            await client.start(flow, i)

    await asyncio.gather(*(one(i) for i in range(count)))


async def test_rate_limit_holds_cluster_wide_and_a_change_applies_at_once(
    limits_cluster: Cluster, client: Client
) -> None:
    queue, flow = f"q-{uuid.uuid4().hex[:8]}", f"f_{uuid.uuid4().hex[:8]}"
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "timeouts": {"start_to_close": "60s"},
            "blocks": [{"id": "a", "external": {"block": "tick@1"}, "input": "${input}"}],
        }
    )
    await _update(
        client,
        queue,
        ["rate_per_second", "burst", "partitions"],
        rate_per_second=RATE,
        burst=BURST,
        partitions=4,
    )
    await _start_runs(client, flow, RUNS)  # a backlog before any poller comes

    receipts = _Receipts()
    workers = [
        BlockWorker(
            limits_cluster.frontend,
            queue,
            {"tick@1": receipts.handle},
            identity=f"poller-{i}",
            concurrency=4,
        )
        for i in range(POLLERS)
    ]
    try:
        for worker in workers:
            await worker.__aenter__()
        await asyncio.wait_for(receipts.first.wait(), timeout=30)
        start = receipts.times[0]
        await asyncio.sleep(start + MEASURE_S - time.monotonic())  # the measured window
        dispatched = receipts.between(start, start + MEASURE_S)

        await _update(client, queue, ["rate_per_second"], rate_per_second=CHANGED_RATE)
        changed = time.monotonic()
        await asyncio.sleep(changed + 1.0 - time.monotonic())
        after_change = receipts.between(changed, changed + 1.0)
    finally:
        for worker in workers:
            await worker.__aexit__(None, None, None)

    rate = dispatched / MEASURE_S
    print(
        f"rate limit {RATE}/s: {rate:.1f}/s over {MEASURE_S:g} s; "
        f"{CHANGED_RATE}/s: {after_change} in the second after the change"
    )
    assert RATE * 0.9 <= rate <= RATE * 1.1
    assert CHANGED_RATE * 0.85 <= after_change <= CHANGED_RATE * 1.1 + BURST
