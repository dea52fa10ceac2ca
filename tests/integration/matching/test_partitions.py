"""A task queue of 4 partitions (the default), on real server processes: one poller drains
every partition through forwarding to the root, and a matching host killed with SIGKILL
mid-load loses and duplicates nothing. SQLite runs every role in one process (the hops stay
in it); PostgreSQL runs two matching processes, so that leaves forward to a root on the other
host."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deploy.local.cluster import TEST_SETTINGS
from tests.support.cluster import Cluster
from tests.support.flows import BlockWorker, Client, echo, two_step_blueprint, value
from tests.support.postgres import PostgresServer
from tideflow.api.v1 import flow_service_pb2, history_pb2

PARTITIONS = 4
# Polls wait up to the worker's own deadline (10 s), so a poll that waited at an empty
# partition without forwarding would stall a drain far beyond DRAIN_S.
SETTINGS = {**TEST_SETTINGS, "matching": {"long_poll_timeout_s": 30.0}}
DRAIN_S = 6.0


async def _postgres_two_matching(
    root: Path, postgres_server: PostgresServer, template: str
) -> Cluster:
    name = f"tideflow_parts_{uuid.uuid4().hex[:8]}"
    postgres_server.psql(f"CREATE DATABASE {name} TEMPLATE {template}")
    cluster = Cluster(
        root,
        {"backend": "postgres", "postgres": {"dsn": postgres_server.dsn(name)}},
        split=True,
        matching_processes=2,
        settings=SETTINGS,
    )
    await cluster.start()
    await cluster.wait_settled()
    return cluster


@pytest.fixture(params=["sqlite", "postgres"])
async def partitioned(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    if request.param == "sqlite":
        sqlite: dict[str, object] = {
            "backend": "sqlite",
            "sqlite": {"path": str(tmp_path / "t.db")},
        }
        cluster = Cluster(tmp_path, sqlite, settings=SETTINGS)
        cluster.schema_setup()
        await cluster.start()
    else:
        cluster = await _postgres_two_matching(
            tmp_path,
            request.getfixturevalue("postgres_server"),
            request.getfixturevalue("postgres_template"),
        )
    try:
        yield cluster
    finally:
        cluster.kill()


@pytest.fixture
async def two_matching_hosts(
    tmp_path: Path, postgres_server: PostgresServer, postgres_template: str
) -> AsyncIterator[Cluster]:
    cluster = await _postgres_two_matching(tmp_path, postgres_server, postgres_template)
    try:
        yield cluster
    finally:
        cluster.kill()


async def _describe(client: Client, queue: str) -> flow_service_pb2.DescribeTaskQueueResponse:
    request = flow_service_pb2.DescribeTaskQueueRequest(namespace=client.namespace)
    request.task_queue.name = queue
    return await client.stub.DescribeTaskQueue(request, timeout=10)


async def _queue(client: Client, hosts: int) -> str:
    """A new queue whose partitions are owned by `hosts` matching hosts (rendezvous hashing
    puts all 4 on one of two hosts 1 time in 8: try another name then)."""
    for _ in range(20):
        queue = f"parts-{uuid.uuid4().hex[:8]}"
        described = await _describe(client, queue)
        assert [p.partition for p in described.partitions] == list(range(PARTITIONS))
        if len({p.owner_host for p in described.partitions}) == hosts:
            return queue
    raise AssertionError("no queue name spread over every matching host")


async def _until_backlog(client: Client, queue: str, count: int) -> list[int]:
    """Each partition's backlog, once the queue's is `count`."""
    async with asyncio.timeout(30):
        while True:
            described = await _describe(client, queue)
            if described.backlog_count_hint == count:
                return [p.backlog_count_hint for p in described.partitions]
            await asyncio.sleep(0.1)


async def _until_rates(client: Client, queue: str, rate: str) -> float:
    """The queue's `rate` (summed over partitions), once it shows: rates count whole
    seconds, so one that began a moment ago shows a second later."""
    async with asyncio.timeout(10):
        while True:
            described = await _describe(client, queue)
            total = sum(float(getattr(p, rate)) for p in described.partitions)
            if total > 0:
                return total
            await asyncio.sleep(0.2)


async def test_one_poller_drains_every_partition(partitioned: Cluster) -> None:
    cluster = partitioned
    client = Client(cluster.frontend)
    await client.ensure_namespace()
    hosts = 1 if len(cluster.processes) == 1 else 2
    queue, flow = await _queue(client, hosts), f"drain_{uuid.uuid4().hex[:6]}"
    blueprint = two_step_blueprint(flow, queue)
    blueprint["blocks"] = blueprint["blocks"][:1]
    blueprint["output"] = "${blocks.a.output}"
    await client.register(blueprint)
    runs = 40
    try:
        run_ids = [(await client.start(flow, i))[0] for i in range(runs)]
        # No worker yet: every task lies in some partition's backlog, most at the leaves.
        spread = await _until_backlog(client, queue, runs)
        assert sum(1 for n in spread if n) >= 3, spread
        # The operator view: each partition's oldest waiting task and its add rate.
        described = await _describe(client, queue)
        for status in described.partitions:
            assert status.HasField("oldest_task_age") == (status.backlog_count_hint > 0)
        assert await _until_rates(client, queue, "tasks_add_rate") > 0

        async with BlockWorker(cluster.frontend, queue, {"step@1": echo}, concurrency=1) as w:
            closed = await asyncio.wait_for(
                asyncio.gather(*(client.close_event(r, timeout_s=60) for r in run_ids)), DRAIN_S
            )
        assert [value(e.run_completed_event_attributes.result) for e in closed] == list(range(runs))
        assert sorted(w.attempts) == sorted((r, "a") for r in run_ids)
        assert set(w.attempts.values()) == {1}
        assert await _until_backlog(client, queue, 0) == [0] * PARTITIONS
        assert await _until_rates(client, queue, "tasks_dispatch_rate") > 0
        drained = await _describe(client, queue)
        assert not any(p.HasField("oldest_task_age") for p in drained.partitions)
        assert any(p.identity for p in drained.pollers)
    finally:
        await client.close()


async def test_a_matching_host_killed_mid_load_loses_and_duplicates_nothing(
    two_matching_hosts: Cluster,
) -> None:
    cluster = two_matching_hosts
    client = Client(cluster.frontend)
    await client.ensure_namespace()
    queue, flow = await _queue(client, 2), f"kill_{uuid.uuid4().hex[:6]}"
    await client.register(two_step_blueprint(flow, queue))
    runs = 60
    progressed = asyncio.Event()

    async def step(task: object) -> object:
        result = await echo(task)  # type: ignore[arg-type]
        if sum(worker.attempts.values()) >= runs // 2:
            progressed.set()
        return result

    worker = BlockWorker(cluster.frontend, queue, {"step@1": step}, concurrency=4)
    try:
        async with worker:
            run_ids = [(await client.start(flow, i))[0] for i in range(runs)]
            closing = [asyncio.create_task(client.close_event(r, timeout_s=90)) for r in run_ids]
            async with asyncio.timeout(60):
                await progressed.wait()
            cluster.processes["matching-2"].kill()
            _, pending = await asyncio.wait(closing, timeout=90)
            assert not pending, f"{len(pending)} runs did not close:\n{cluster.logs()}"
        closed = [t.result() for t in closing]
    finally:
        await client.close()
    assert {e.event_type for e in closed} == {history_pb2.EVENT_TYPE_RUN_COMPLETED}
    assert [value(e.run_completed_event_attributes.result) for e in closed] == list(range(runs))
    # Every block of every run ran once.
    assert sorted(worker.attempts) == sorted((r, b) for r in run_ids for b in ("a", "b"))
    assert set(worker.attempts.values()) == {1}, {k: n for k, n in worker.attempts.items() if n > 1}
