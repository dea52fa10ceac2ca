"""Key affinity, end to end with real worker processes: blocks with an `affinity_key` go to the
key's owner among the queue's live workers (rendezvous hashing, as `affinity.owner` computes
it), through the owner's sticky queue; when a worker stops, only its keys move. A worker that
advertises a key warm gets it over hashing. Eager dispatch never starts a keyed block.

The sticky timeout is generous (`sticky_schedule_to_start: 20s`): an owner busy with its
other keys' tasks still gets its own, so every task is measured against its owner.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tests.support.flows import Client
from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2
from tideflow.worker import Worker, block
from tideflow_server.matching.affinity import Worker as KnownWorker
from tideflow_server.matching.affinity import owner

REPO = __file__.rsplit("/tests/", 1)[0]
KEYS = [f"model-{i}" for i in range(8)]
WORKERS = 4
TASKS_ALL_LIVE = 800
TASKS_AFTER_STOP = 200
IN_FLIGHT = 32
LIVE_S = 5.0  # matching.affinity_live_s, the default
STICKY_GONE_S = 3.0  # matching.sticky_poller_gone_s, the default


def _flow(flow: str, queue: str, *, blocks: int = 1) -> dict[str, Any]:
    spec: list[dict[str, Any]] = []
    for i in range(blocks):
        spec.append(
            {
                "id": f"b{i}",
                "needs": [f"b{i - 1}"] if i else [],
                "external": {
                    "block": "step@1",
                    "affinity_key": "${input.key}",
                    "sticky_schedule_to_start": "20s",
                    "timeouts": {"start_to_close": "10s"},
                },
                "input": "${input}",
            }
        )
    return {"name": flow, "version": 1, "task_queue": queue, "blocks": spec, "output": "${input}"}


@dataclass
class _Process:
    identity: str
    process: asyncio.subprocess.Process
    reader: asyncio.Task[None] | None = None


async def _start_worker(
    cluster: Cluster, queue: str, identity: str, served_by: dict[str, str]
) -> _Process:
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
        env={**os.environ},
    )

    async def read() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            run_id = line.decode().split()[1]
            served_by[run_id] = identity

    worker = _Process(identity, process)
    worker.reader = asyncio.create_task(read())
    return worker


async def _describe(
    client: Client,
    queue: str,
    kind: common_pb2.TaskQueueKind.ValueType = common_pb2.TASK_QUEUE_KIND_NORMAL,
) -> flow_service_pb2.DescribeTaskQueueResponse:
    request = flow_service_pb2.DescribeTaskQueueRequest(namespace=client.namespace)
    request.task_queue.name, request.task_queue.kind = queue, kind
    return await client.stub.DescribeTaskQueue(request, timeout=10)


async def _all_polling(client: Client, queue: str, identities: set[str]) -> None:
    """Until matching holds polls of every worker, of the queue and of its sticky queue."""
    async with asyncio.timeout(30):
        while True:
            pollers = {p.identity: p for p in (await _describe(client, queue)).pollers}
            if identities <= set(pollers):
                break
            await asyncio.sleep(0.05)
        kind = common_pb2.TASK_QUEUE_KIND_STICKY
        waiting = [pollers[i].sticky_task_queue for i in identities]
        while waiting:
            if (await _describe(client, waiting[0], kind)).pollers:
                waiting.pop(0)
            else:
                await asyncio.sleep(0.05)


def _owner(key: str, identities: Iterable[str]) -> str:
    found = owner(key, [KnownWorker(i, f"{i}-sticky") for i in identities])
    assert found is not None
    return found.identity


async def _run_all(client: Client, flow: str, runs: dict[str, str]) -> None:
    """Start every run (run id -> key), IN_FLIGHT at a time, each when one before closed."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(run_id: str, key: str) -> None:
        async with gate:
            await client.start(flow, {"sleep": 0.0, "key": key}, run_id=run_id)
            closed = await client.close_event(run_id, timeout_s=60)
            assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED, run_id

    await asyncio.gather(*(one(r, k) for r, k in runs.items()))


def _served(runs: dict[str, str], served_by: dict[str, str]) -> dict[str, Counter[str]]:
    """Key -> how many of its tasks each worker served."""
    by_key: dict[str, Counter[str]] = defaultdict(Counter)
    for run_id, key in runs.items():
        by_key[key][served_by[run_id]] += 1
    return by_key


@pytest.mark.parametrize("cluster", ["sqlite", "postgres"], indirect=True)
async def test_each_key_stays_on_one_worker_and_only_a_stopped_workers_keys_move(
    cluster: Cluster, client: Client
) -> None:
    suffix = uuid.uuid4().hex[:8]
    queue, flow = f"keyed-{suffix}", f"keyed-{suffix}"
    await client.register(_flow(flow, queue))
    served_by: dict[str, str] = {}
    identities = [f"k{i}-{suffix}" for i in range(WORKERS)]
    workers = [await _start_worker(cluster, queue, i, served_by) for i in identities]
    try:
        await _all_polling(client, queue, set(identities))

        # 1. All four live: every task of a key on the key's owner.
        began = time.monotonic()
        runs = {f"a-{suffix}-{i}": KEYS[i % len(KEYS)] for i in range(TASKS_ALL_LIVE)}
        await _run_all(client, flow, runs)
        elapsed = time.monotonic() - began
        before = _served(runs, served_by)
        owners = {k: _owner(k, identities) for k in KEYS}
        share = sum(before[k][owners[k]] for k in KEYS) / len(runs)
        print(
            f"\nkey affinity, 4 live: {share:.1%} of {len(runs)} tasks on their key's owner "
            f"in {elapsed:.1f}s; per key: {[dict(before[k]) for k in KEYS]}"
        )
        assert share == 1.0

        # 2. Stop (gracefully) the worker owning the most keys: only its keys move.
        stopped = Counter(owners.values()).most_common(1)[0][0]
        doomed = next(w for w in workers if w.identity == stopped)
        doomed.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(doomed.process.wait(), 30) == 0
        # Its polls ended now; matching takes it for gone once they have been over for the live
        # window (a busy worker has none outstanding either, for a moment).
        last = next(p for p in (await _describe(client, queue)).pollers if p.identity == stopped)
        gone_at = last.last_access_time.ToNanoseconds() / 1e9 + max(LIVE_S, STICKY_GONE_S)
        await asyncio.sleep(max(0.0, gone_at - time.time()) + 0.1)

        survivors = [i for i in identities if i != stopped]
        runs = {f"b-{suffix}-{i}": KEYS[i % len(KEYS)] for i in range(TASKS_AFTER_STOP)}
        await _run_all(client, flow, runs)
        after = _served(runs, served_by)
        moved = {k for k in KEYS if owners[k] == stopped}
        print(
            f"after {stopped} stopped: keys moved {sorted(moved)}; "
            f"per key: {[dict(after[k]) for k in KEYS]}"
        )
        for key in KEYS:
            expected = owners[key] if key not in moved else _owner(key, survivors)
            assert after[key] == {expected: TASKS_AFTER_STOP // len(KEYS)}, key
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


async def _completed_by(client: Client, run_id: str) -> list[tuple[str, bool]]:
    """Per block, in order: the identity that started it and whether it was started eagerly."""
    return [
        (
            e.block_started_event_attributes.identity,
            e.block_started_event_attributes.request_id.startswith("eager-"),
        )
        for e in await client.history(run_id)
        if e.event_type == history_pb2.EVENT_TYPE_BLOCK_STARTED
    ]


@pytest.mark.parametrize("cluster", ["sqlite", "postgres"], indirect=True)
async def test_a_warm_worker_gets_the_key_and_keyed_blocks_are_never_eager(
    cluster: Cluster, client: Client
) -> None:
    suffix = uuid.uuid4().hex[:8]
    queue, flow = f"warm-{suffix}", f"warm-{suffix}"
    await client.register(_flow(flow, queue, blocks=3))
    identities = [f"w{i}-{suffix}" for i in range(2)]
    key = "llama-70b"
    warm = next(i for i in identities if i != _owner(key, identities))  # not hashing's pick
    workers = [
        Worker(
            cluster.frontend,
            task_queue=queue,
            blocks=[_step],
            namespace=client.namespace,
            identity=identity,
            warm_keys={key} if identity == warm else set(),
        )
        for identity in identities
    ]
    async with workers[0], workers[1]:
        await _all_polling(client, queue, set(identities))
        described = {p.identity: p for p in (await _describe(client, queue)).pollers}
        assert list(described[warm].warm_keys) == [key]

        run_ids = [f"w-{suffix}-{i}" for i in range(10)]
        await _run_all(client, flow, dict.fromkeys(run_ids, key))
    for run_id in run_ids:
        # Every block on the warm worker, none of them eagerly (a worker that completed the
        # previous block would otherwise get the next one, whoever owns its key).
        assert await _completed_by(client, run_id) == [(warm, False)] * 3, run_id
