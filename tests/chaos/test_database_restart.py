"""A database restart strands no run (issue 17): with 240 runs in flight on a split cluster,
PostgreSQL is stopped in immediate mode (a crash: no clean shutdown), stays down for several
seconds, and comes back. Every run completes with the right output, each block's completion
recorded once, well before history's re-dispatch (60 s by default) could have healed a
dropped task: nothing was dropped."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.test_kill_processes import _start
from tests.conftest import running_postgres
from tests.support.cluster import Cluster
from tests.support.flows import BlockWorker, Client, Task, three_increments_blueprint, value
from tests.support.postgres import PostgresServer, PostgresUnavailable
from tideflow.api.v1 import history_pb2

RUNS = 240
OUTAGE_S = 6.0
CLOSE_WITHIN_S = 40.0
"""After the database is back; under the default re-dispatch wait, so a stranded task fails."""


class Database:
    def __init__(self, server: PostgresServer) -> None:
        self.server = server

    async def crash(self) -> None:
        """Stop it as `pg_ctl stop -m immediate` does (SIGQUIT to the postmaster: no
        checkpoint, every backend gone at once), sent directly so that it cannot fail
        quietly, and wait until the postmaster is gone."""
        pid = self.server.pid()
        assert pid is not None, "the database is not running"
        os.kill(pid, signal.SIGQUIT)
        await asyncio.to_thread(_wait_gone, pid)

    async def start(self) -> None:
        """Start it again. A start right after the crash can be refused while the old
        server's last processes still exit (its shared memory still in use): try again."""
        deadline = time.monotonic() + 30
        while True:
            try:
                await asyncio.to_thread(self.server.start)
                return
            except PostgresUnavailable:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.5)


def _wait_gone(pid: int) -> None:
    """Until the process no longer runs (Linux: gone from /proc, or a zombie)."""
    while True:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        if "zombie" in status:
            return
        time.sleep(0.02)


@pytest.fixture
async def restartable(tmp_path: Path) -> AsyncIterator[tuple[Cluster, Database]]:
    """A cluster on a PostgreSQL server of its own, so restarting it disturbs no other test."""
    # Durable (synchronous commit) like production: an immediate stop must not lose what
    # was acknowledged as committed, or runs would vanish for a reason of the test server.
    with running_postgres(durable=True) as server:
        server.psql("CREATE DATABASE tideflow")
        cluster = Cluster(
            tmp_path,
            {"backend": "postgres", "postgres": {"dsn": server.dsn("tideflow")}},
            split=True,
        )
        cluster.schema_setup()
        async with cluster.running():
            yield cluster, Database(server)


async def test_a_database_restart_strands_no_run(
    restartable: tuple[Cluster, Database],
) -> None:
    cluster, database = restartable
    client = Client(cluster.frontend)
    await client.ensure_namespace()
    queue, flow = f"q-{uuid.uuid4().hex[:6]}", f"restart_{uuid.uuid4().hex[:6]}"
    await client.register(three_increments_blueprint(flow, queue))
    rng = random.Random(17)

    async def inc(task: Task) -> Any:
        # Slow enough that most runs are mid-flight when the database goes away.
        await asyncio.sleep(rng.uniform(0.3, 1.0))
        return {"n": task.input["n"] + 1}

    run_ids = [f"pg-{i}-{uuid.uuid4().hex[:6]}" for i in range(RUNS)]
    # One worker polls again as soon as a handler returns, its answers sent in the background,
    # so its polls take backlog tasks while the database is away (RecordBlockStarted fails);
    # the other asks for eager dispatch.
    async with (
        BlockWorker(cluster.frontend, queue, {"inc@1": inc}, concurrency=20, detached=True),
        BlockWorker(cluster.frontend, queue, {"inc@1": inc}, concurrency=20, eager=True),
    ):
        await asyncio.gather(*(_start(client, flow, r, {"n": i}) for i, r in enumerate(run_ids)))
        closing = [asyncio.create_task(client.close_event(r, timeout_s=120)) for r in run_ids]

        in_flight = sum(not t.done() for t in closing)
        await database.crash()
        await asyncio.sleep(OUTAGE_S)
        await database.start()
        back = time.monotonic()

        _, pending = await asyncio.wait(closing, timeout=CLOSE_WITHIN_S)
        if pending:
            stuck = [r for r, t in zip(run_ids, closing, strict=True) if not t.done()]
            for task in pending:
                task.cancel()
            described = [await client.describe(r) for r in stuck[:3]]
            raise AssertionError(
                f"{len(stuck)} of {in_flight} runs in flight did not close within "
                f"{CLOSE_WITHIN_S} s of the restart; first: {described}\n{cluster.logs()}"
            )
        took = time.monotonic() - back
        closed = [t.result() for t in closing]

    print(f"{in_flight} runs in flight, {OUTAGE_S} s down, all {RUNS} closed {took:.1f} s after")
    assert in_flight >= 200
    completed = [e for e in closed if e.HasField("run_completed_event_attributes")]
    assert len(completed) == RUNS, cluster.logs()
    for i, event in enumerate(closed):
        assert value(event.run_completed_event_attributes.result) == i + 3
    for run_id in run_ids:
        events = await client.history(run_id)
        scheduled = {
            e.event_id: e.block_scheduled_event_attributes.block_id
            for e in events
            if e.event_type == history_pb2.EVENT_TYPE_BLOCK_SCHEDULED
        }
        done = Counter(
            scheduled[e.block_completed_event_attributes.scheduled_event_id]
            for e in events
            if e.event_type == history_pb2.EVENT_TYPE_BLOCK_COMPLETED
        )
        assert done == {"a": 1, "b": 1, "c": 1}, (run_id, done)
    await client.close()
