"""Sticky run affinity, end to end with real worker processes: `affinity: run` keeps a run's
blocks on the worker that ran its first one, and when that worker is killed (-9) every run
still completes, each block that waited for it going to the other worker within the sticky
timeout plus one poll. The fallback is measured on runs parked on a signal between two blocks
when the worker dies, so that some block is always waiting for it, however the in-flight runs
happen to be placed at the kill. With two matching hosts, a normal partition forwards its
offers to the host that owns the worker's sticky queue.

The workers run without eager dispatch (which by itself keeps a chain on one worker) so that
what is measured is the sticky queue path: a completion, an AddBlockTask that the normal
partition offers to the worker's sticky queue, the worker's sticky poll.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tests.support.flows import Client
from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2
from tideflow.worker import Worker, block

REPO = __file__.rsplit("/tests/", 1)[0]
BLOCKS = [f"b{i}" for i in range(1, 6)]
STICKY_WAIT_S = 2.0  # the default sticky_schedule_to_start
ONE_POLL_S = 1.0  # the other worker's poll, the add's and the start's round trips, with slack
RUNS = 200
IN_FLIGHT = 40  # runs started at once: the workers have room, so stickiness is what is measured
PARKED = 8  # runs waiting on a signal between two blocks when a worker is killed


def _chain(flow: str, queue: str) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = []
    for i, block_id in enumerate(BLOCKS):
        blocks.append(
            {
                "id": block_id,
                "needs": BLOCKS[i - 1 : i],
                "external": {
                    "block": "step@1",
                    "affinity": "AFFINITY_RUN",
                    "timeouts": {"start_to_close": "3s"},
                    "retry": {"initial_interval": "0.1s"},
                },
                "input": "${input}",
            }
        )
    return {"name": flow, "version": 1, "task_queue": queue, "blocks": blocks, "output": "${input}"}


def _parked(flow: str, queue: str) -> dict[str, Any]:
    """b1, then a wait for the signal "go", then b2: a run that sits between two blocks for as
    long as the test likes."""
    step = {
        "block": "step@1",
        "affinity": "AFFINITY_RUN",
        "timeouts": {"start_to_close": "3s"},
        "retry": {"initial_interval": "0.1s"},
    }
    return {
        "name": flow,
        "version": 1,
        "task_queue": queue,
        "blocks": [
            {"id": "b1", "external": step, "input": "${input}"},
            {"id": "go", "needs": ["b1"], "signal": {"signal_name": "go"}},
            {"id": "b2", "needs": ["go"], "external": step, "input": "${input}"},
        ],
        "output": "${input}",
    }


@dataclass(frozen=True, slots=True)
class _Start:
    worker: str
    block_id: str
    attempt: int
    at: float


@dataclass
class _Worker:
    identity: str
    process: asyncio.subprocess.Process
    reader: asyncio.Task[None] | None = None
    started: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self, into: dict[str, list[_Start]]) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            word, run_id, block_id, attempt, at = line.decode().split()
            assert word == "started"
            into[run_id].append(_Start(self.identity, block_id, int(attempt), float(at)))
            self.started += 1
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    async def wait_started(self, count: int) -> None:
        """Until the worker has started `count` blocks in all."""
        while self.started < count:
            await self._changed.wait()


async def _start_worker(
    cluster: Cluster, queue: str, identity: str, starts: dict[str, list[_Start]]
) -> _Worker:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.worker_process",
        cluster.frontend,
        "tests",
        queue,
        identity,
        "steps",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    worker = _Worker(identity, process)
    worker.reader = asyncio.create_task(worker.read(starts))
    return worker


async def _polling(client: Client, queue: str, identities: set[str]) -> None:
    """Until matching holds polls of every worker in `identities` on `queue`."""
    request = flow_service_pb2.DescribeTaskQueueRequest(namespace=client.namespace)
    request.task_queue.name = queue
    async with asyncio.timeout(30):
        while True:
            described = await client.stub.DescribeTaskQueue(request, timeout=10)
            if identities <= {p.identity for p in described.pollers}:
                return
            await asyncio.sleep(0.05)


async def _run_all(client: Client, flow: str, run_ids: Iterable[str], sleep: float) -> None:
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(run_id: str) -> None:
        async with gate:
            await client.start(flow, {"sleep": sleep}, run_id=run_id)
            closed = await client.close_event(run_id, timeout_s=60)
            assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED, run_id

    await asyncio.gather(*(one(r) for r in run_ids))


async def _blocks(client: Client, run_id: str) -> tuple[dict[str, str], dict[str, float]]:
    """From the run's history: block id -> the identity of the worker that completed it, and
    block id -> when it was scheduled (wall time, seconds)."""
    events = await client.history(run_id)
    ids, scheduled_at = {}, {}
    for e in events:
        if e.event_type == history_pb2.EVENT_TYPE_BLOCK_SCHEDULED:
            ids[e.event_id] = e.block_scheduled_event_attributes.block_id
            scheduled_at[ids[e.event_id]] = e.event_time.ToNanoseconds() / 1e9
    completed_by = {
        ids[e.block_completed_event_attributes.scheduled_event_id]: (
            e.block_completed_event_attributes.identity
        )
        for e in events
        if e.event_type == history_pb2.EVENT_TYPE_BLOCK_COMPLETED
    }
    return completed_by, scheduled_at


async def _until_completed(client: Client, run_id: str, block_id: str) -> None:
    async with asyncio.timeout(30):
        while True:
            if block_id in (await _blocks(client, run_id))[0]:
                return
            await asyncio.sleep(0.05)


async def _signal(client: Client, run_id: str, name: str) -> None:
    request = flow_service_pb2.SignalRunRequest(namespace=client.namespace, signal_name=name)
    request.run.run_id = run_id
    await client.stub.SignalRun(request, timeout=10)


def _fallback_waits(
    by: dict[str, str],
    scheduled: dict[str, float],
    starts: list[_Start],
    blocks: list[str],
    *,
    doomed: _Worker,
    survivor: _Worker,
    death: float,
) -> list[float]:
    """For each block that followed one the doomed worker completed and whose first try ran
    on the survivor: how long after the later of its scheduling and the kill it started."""
    waits = []
    for previous, block_id in itertools.pairwise(blocks):
        first_tries = [s for s in starts if s.block_id == block_id]
        if (
            by.get(previous) == doomed.identity
            and by[block_id] == survivor.identity
            and [s.attempt for s in first_tries] == [1]
        ):
            # Sent to the dead worker's sticky queue, then to the normal queue.
            waits.append(first_tries[0].at - max(scheduled[block_id], death))
    return waits


async def _park(
    client: Client, queue: str, suffix: str, workers: list[_Worker]
) -> tuple[list[str], tuple[_Worker, _Worker]]:
    """Runs of the parked flow, each past b1 and waiting for "go"; and the workers, the one
    that ran more of their b1s first (it ran at least one)."""
    flow = f"parked-{suffix}"
    await client.register(_parked(flow, queue))
    parked = [f"p-{suffix}-{i}" for i in range(PARKED)]
    for run_id in parked:
        await client.start(flow, {"sleep": 0.0}, run_id=run_id)
    for run_id in parked:
        await _until_completed(client, run_id, "b1")
    first = [(await _blocks(client, run_id))[0]["b1"] for run_id in parked]
    doomed, survivor = sorted(workers, key=lambda w: first.count(w.identity), reverse=True)
    return parked, (doomed, survivor)


async def _released(
    client: Client,
    parked: list[str],
    starts: dict[str, list[_Start]],
    *,
    doomed: _Worker,
    survivor: _Worker,
    death: float,
) -> list[float]:
    """Once the parked runs complete: the fallback wait of each b2 whose b1 the doomed worker
    ran (every one of them went to its sticky queue first, then to the survivor)."""
    waits: list[float] = []
    for run_id in parked:
        closed = await client.close_event(run_id, timeout_s=60)
        assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED, run_id
        by, scheduled = await _blocks(client, run_id)
        assert by["b2"] == survivor.identity, run_id
        if by["b1"] == doomed.identity:
            ran = _fallback_waits(
                by, scheduled, starts[run_id], ["b1", "b2"],
                doomed=doomed, survivor=survivor, death=death,
            )  # fmt: skip
            assert len(ran) == 1, run_id
            waits += ran
    return waits


async def _describe(
    client: Client,
    queue: str,
    kind: common_pb2.TaskQueueKind.ValueType = common_pb2.TASK_QUEUE_KIND_NORMAL,
) -> flow_service_pb2.DescribeTaskQueueResponse:
    request = flow_service_pb2.DescribeTaskQueueRequest(namespace=client.namespace)
    request.task_queue.name, request.task_queue.kind = queue, kind
    return await client.stub.DescribeTaskQueue(request, timeout=10)


async def _sticky_counts(client: Client, queue: str) -> tuple[int, int]:
    described = await _describe(client, queue)
    return (
        sum(p.sticky_hits for p in described.partitions),
        sum(p.sticky_fallbacks for p in described.partitions),
    )


@pytest.mark.parametrize("cluster", ["sqlite", "postgres"], indirect=True)
async def test_a_runs_blocks_stay_on_its_worker_and_fall_back_when_it_is_killed(
    cluster: Cluster, client: Client
) -> None:
    suffix = uuid.uuid4().hex[:8]
    queue, flow = f"sticky-{suffix}", f"chain-{suffix}"
    await client.register(_chain(flow, queue))
    starts: dict[str, list[_Start]] = defaultdict(list)
    workers = [await _start_worker(cluster, queue, f"w{i}-{suffix}", starts) for i in (1, 2)]
    try:
        await _polling(client, queue, {w.identity for w in workers})

        # 1. Stickiness: later blocks run where the first one did.
        began = time.monotonic()
        sticky_runs = [f"s-{suffix}-{i}" for i in range(RUNS)]
        await _run_all(client, flow, sticky_runs, sleep=0.005)
        elapsed = time.monotonic() - began
        later = same = 0
        for run_id in sticky_runs:
            by, _ = await _blocks(client, run_id)
            later += len(BLOCKS) - 1
            same += sum(by[b] == by["b1"] for b in BLOCKS[1:])
        ratio = same / later
        hits, fallbacks = await _sticky_counts(client, queue)
        print(
            f"\nsticky: {same}/{later} later blocks on the first block's worker ({ratio:.1%}); "
            f"{RUNS} runs in {elapsed:.1f}s; describe: {hits} hits, {fallbacks} fallbacks"
        )
        assert ratio >= 0.95
        assert hits >= same - RUNS  # most later blocks came through a sticky queue

        # 2. Park runs between two blocks; the worker holding more of them will die.
        parked, (doomed, survivor) = await _park(client, queue, suffix, workers)

        # 3. Kill -9 it while runs are in flight on both, then release the parked runs.
        flow_runs = [f"k-{suffix}-{i}" for i in range(IN_FLIGHT)]
        running = asyncio.create_task(_run_all(client, flow, flow_runs, sleep=0.01))
        await asyncio.wait_for(doomed.wait_started(doomed.started + 40), 30)
        doomed.process.kill()
        await doomed.process.wait()
        death = time.time()
        for run_id in parked:
            await _signal(client, run_id, "go")
        await asyncio.wait_for(running, 120)

        in_flight_waits: list[float] = []
        for run_id in flow_runs:
            by, scheduled = await _blocks(client, run_id)
            assert set(by) == set(BLOCKS), run_id  # every run completed every block
            in_flight_waits += _fallback_waits(
                by, scheduled, starts[run_id], BLOCKS, doomed=doomed, survivor=survivor, death=death
            )
        parked_waits = await _released(
            client, parked, starts, doomed=doomed, survivor=survivor, death=death
        )
        waits = parked_waits + in_flight_waits
        print(
            f"fallbacks after the kill: {len(parked_waits)} parked, {len(in_flight_waits)} in "
            f"flight; longest wait {max(waits):.2f}s (bound {STICKY_WAIT_S + ONE_POLL_S:.1f}s)"
        )
        assert parked_waits, "no parked block was waiting for the killed worker"
        assert max(waits) <= STICKY_WAIT_S + ONE_POLL_S
    finally:
        for worker in workers:
            if worker.process.returncode is None:
                worker.process.kill()
                await worker.process.wait()
            if worker.reader is not None:
                worker.reader.cancel()


@block("step", version=1)
async def _step(value: Any) -> Any:
    return value


async def test_offers_reach_a_sticky_queue_on_the_other_matching_host(
    two_matching_hosts: Cluster,
) -> None:
    cluster = two_matching_hosts
    client = Client(cluster.frontend)
    await client.ensure_namespace()
    suffix = uuid.uuid4().hex[:8]
    queue, flow = f"sticky-{suffix}", f"chain-{suffix}"
    await client.register(_chain(flow, queue))
    partition_host = (await _describe(client, queue)).partitions[0].owner_host

    # Workers whose sticky queues hash to each host (a describe finds the owner without a poll).
    on: dict[bool, Worker] = {}
    while len(on) < 2:
        worker = Worker(
            cluster.frontend,
            task_queue=queue,
            blocks=[_step],
            namespace=client.namespace,
            identity=f"w{len(on)}-{suffix}",
            eager=False,
        )
        kind = common_pb2.TASK_QUEUE_KIND_STICKY
        sticky = await _describe(client, worker.sticky_task_queue, kind)
        on.setdefault(sticky.partitions[0].owner_host == partition_host, worker)
    near, far = on[True], on[False]
    async with near, far:
        await _polling(client, queue, {near.identity, far.identity})
        runs = [f"x-{suffix}-{i}" for i in range(50)]
        await _run_all(client, flow, runs, sleep=0.0)
        same = {near.identity: 0, far.identity: 0}
        for run_id in runs:
            by, _ = await _blocks(client, run_id)
            same[by["b1"]] += sum(by[b] == by["b1"] for b in BLOCKS[1:])
    hits, fallbacks = await _sticky_counts(client, queue)
    print(f"\ntwo matching hosts: later blocks kept {same}; {hits} hits, {fallbacks} fallbacks")
    assert sum(same.values()) >= 0.95 * len(runs) * (len(BLOCKS) - 1)
    assert same[far.identity] > 0  # offers forwarded to the other host were taken there
    await client.close()
