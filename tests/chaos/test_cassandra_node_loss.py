"""Losing a Cassandra node loses nothing (issue 22): on a three-node ring (127.0.0.1-3, RF 3,
LOCAL_QUORUM reads and writes, SERIAL for the lightweight transactions) a split cluster has
200 runs in flight when one node is killed (-9: no drain, its commit log's unsynced tail
lost). Every run completes with the right output and each block's completion recorded once,
on the two nodes left, well before a dropped task could have been re-dispatched. The node then
comes back, `nodetool repair -full` streams it what it missed (hints are off, so only repair
can), and read alone it holds every history batch the quorum holds.

The driver is used directly (not through persistence/cassandra) to read one node alone."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cassandra import ConsistencyLevel  # type: ignore[import-untyped]
from cassandra.cluster import (  # type: ignore[import-untyped]
    EXEC_PROFILE_DEFAULT,
    ExecutionProfile,
)
from cassandra.cluster import Cluster as DriverCluster
from cassandra.policies import WhiteListRoundRobinPolicy  # type: ignore[import-untyped]
from cassandra.query import SimpleStatement  # type: ignore[import-untyped]

from tests.chaos.test_kill_processes import _all_closed, _completions, _start
from tests.support.cassandra import launcher
from tests.support.cluster import Cluster
from tests.support.flows import BlockWorker, Client, Task, three_increments_blueprint, value
from tests.support.postgres import PostgresServer

RUNS = 200
KEYSPACE = "tideflow_ring"
CLOSE_WITHIN_S = 50.0
"""After the kill; under history's re-dispatch wait (60 s), so a dropped task fails the test."""
LOST = 1
"""The node killed: 127.0.0.2 (not the seed, so the ring's gossip has its seed throughout)."""


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    module: ModuleType = launcher()
    began = time.monotonic()
    ring = module.CassandraRing(tmp_path_factory.mktemp("ring"), 3, heap="768m")
    try:
        ring.start()
        print(f"\nthree-node ring up in {time.monotonic() - began:.1f}s")
        yield ring
    finally:
        ring.stop()


@pytest.fixture
async def on_ring(
    ring: Any, postgres_server: PostgresServer, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """A split cluster whose executions and histories are on the ring (visibility in
    PostgreSQL, as deploy/config/cassandra.yaml has it)."""
    postgres_server.psql(f"CREATE DATABASE {KEYSPACE}")
    cluster = Cluster(
        tmp_path,
        {
            "backend": "cassandra",
            "cassandra": {
                "contact_points": list(ring.addresses),
                "port": ring.native_port,
                "keyspace": KEYSPACE,
                "replication": {"class": "SimpleStrategy", "replication_factor": 3},
                "consistency": "LOCAL_QUORUM",
                "serial_consistency": "SERIAL",
            },
            "visibility": {
                "backend": "postgres",
                "postgres": {"dsn": postgres_server.dsn(KEYSPACE)},
            },
        },
        split=True,
    )
    cluster.schema_setup()
    async with cluster.running():
        yield cluster


def _history_rows(ring: Any, address: str | None, consistency: int) -> int:
    """The keyspace's history batches: read from the node at `address` alone (CL ONE), or from
    any replicas at `consistency` when `address` is None."""
    contacts = [address] if address else list(ring.addresses)
    profile = ExecutionProfile(
        load_balancing_policy=WhiteListRoundRobinPolicy(contacts), request_timeout=60
    )
    driver = DriverCluster(
        contacts, port=ring.native_port, execution_profiles={EXEC_PROFILE_DEFAULT: profile}
    )
    try:
        session = driver.connect()
        count = SimpleStatement(
            f"SELECT count(*) FROM {KEYSPACE}.history_batches", consistency_level=consistency
        )
        return int(session.execute(count).one()[0])
    finally:
        driver.shutdown()


async def test_a_lost_cassandra_node_loses_no_run(ring: Any, on_ring: Cluster) -> None:
    cluster = on_ring
    client = Client(cluster.frontend)
    await client.ensure_namespace()
    queue, flow = f"q-{uuid.uuid4().hex[:6]}", f"ring_{uuid.uuid4().hex[:6]}"
    blueprint = three_increments_blueprint(flow, queue)
    # Three JVMs on two cores, their JIT still cold, take some seconds to work through 200
    # runs: a block is not timed out for waiting its turn.
    blueprint["timeouts"] = {"start_to_close": "30s"}
    await client.register(blueprint)
    rng = random.Random(22)

    async def inc(task: Task) -> Any:
        # Slow enough that the runs are mid-flight when the node dies.
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        return {"n": task.input["n"] + 1}

    run_ids = [f"ring-{i}-{uuid.uuid4().hex[:6]}" for i in range(RUNS)]
    lost = ring.nodes[LOST]
    async with (
        BlockWorker(cluster.frontend, queue, {"inc@1": inc}, concurrency=40),
        BlockWorker(cluster.frontend, queue, {"inc@1": inc}, concurrency=40, eager=True),
    ):
        await asyncio.gather(*(_start(client, flow, r, {"n": i}) for i, r in enumerate(run_ids)))
        closing = [asyncio.create_task(client.close_event(r, timeout_s=120)) for r in run_ids]
        in_flight = sum(not t.done() for t in closing)
        await asyncio.to_thread(lost.kill)
        killed = time.monotonic()
        closed = await _all_closed(cluster, client, run_ids, closing)
        took = time.monotonic() - killed

    print(f"{in_flight} runs in flight when {lost.address} died; all closed {took:.1f}s after")
    assert in_flight >= RUNS * 0.9
    assert took < CLOSE_WITHIN_S, "runs waited for a re-dispatch: a task was dropped"
    completed = [e for e in closed if e.HasField("run_completed_event_attributes")]
    assert len(completed) == RUNS, cluster.logs()
    for i, event in enumerate(closed):
        assert value(event.run_completed_event_attributes.result) == i + 3
    for run_id in run_ids:
        completions = _completions(await client.history(run_id))
        assert completions == {"a": 1, "b": 1, "c": 1}, (run_id, completions)
    await client.close()

    # The node comes back and is repaired: it alone then holds what the quorum holds.
    began = time.monotonic()
    await asyncio.to_thread(lost.start)
    await asyncio.to_thread(ring.wait_normal, 120.0)
    before = await asyncio.to_thread(_history_rows, ring, lost.address, ConsistencyLevel.ONE)
    await asyncio.to_thread(ring.nodetool, LOST, "repair", "-full", KEYSPACE)
    after = await asyncio.to_thread(_history_rows, ring, lost.address, ConsistencyLevel.ONE)
    everywhere = await asyncio.to_thread(_history_rows, ring, None, ConsistencyLevel.ALL)
    print(
        f"{lost.address} back and repaired in {time.monotonic() - began:.1f}s: "
        f"{before} history batches alone before repair, {after} after, {everywhere} at ALL"
    )
    assert before < after, "the node missed no write while it was down"
    assert after == everywhere
