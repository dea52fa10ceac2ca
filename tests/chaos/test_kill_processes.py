"""Faults lose nothing: with 200 runs in flight, the history process and then the matching
process are killed with SIGKILL and restarted. Every run completes with the right output, and
every block's completion is recorded exactly once in its history. The same holds for runs
parked in durable waits (a signal, a signal taken from the buffer after a timer, a timer, a
child run waiting for a signal) while both processes die."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from deploy.local.pki import make_pki
from tests.conftest import CLUSTER_BACKENDS, make_cluster
from tests.support.cluster import Cluster
from tests.support.flows import (
    BlockWorker,
    Client,
    Task,
    echo,
    payloads,
    three_increments_blueprint,
    value,
)
from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2

RUNS = 200


MTLS = "postgres-mtls"
"""The split topology on PostgreSQL with mutual TLS between the roles."""


@pytest.fixture(params=CLUSTER_BACKENDS)
async def split_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    backend, mtls = request.param.removesuffix("-mtls"), request.param.endswith("-mtls")
    pki = make_pki(tmp_path / "pki") if mtls else None
    cluster = make_cluster(backend, tmp_path, request, split=True, pki=pki)
    async with cluster.running():
        yield cluster


async def _retrying(call: Callable[[], Awaitable[object]], what: str) -> None:
    """`call` until a server answers: one may be restarting. Calls carry a request id, so a
    retry of one that took effect changes nothing."""
    for _ in range(100):
        try:
            await call()
            return
        except grpc.aio.AioRpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            await asyncio.sleep(0.2)
    raise AssertionError(f"could not {what}")


async def _start(client: Client, flow: str, run_id: str, run_input: Any) -> None:
    await _retrying(
        lambda: client.start(flow, run_input, run_id=run_id, request_id=f"start-{run_id}"),
        f"start {run_id}",
    )


async def _kill_history_then_matching(cluster: Cluster) -> None:
    """SIGKILL history, restart it, then the same for matching."""
    cluster.process_of("history").kill()
    await asyncio.sleep(1.0)
    await cluster.restart("history")
    cluster.process_of("matching").kill()
    await asyncio.sleep(1.0)
    await cluster.restart("matching")


async def _all_closed(
    cluster: Cluster, client: Client, run_ids: list[str], closing: list[asyncio.Task[Any]]
) -> list[history_pb2.HistoryEvent]:
    """The close event of each run, in order; fails with the stuck runs described."""
    _, pending = await asyncio.wait(closing, timeout=90)
    if pending:
        stuck = [r for r, t in zip(run_ids, closing, strict=True) if not t.done()]
        described = [await client.describe(r) for r in stuck[:5]]
        # What the whole logs say of those runs, and of writes whose outcome was unknown.
        lines = cluster.log_lines(*stuck[:5], "outcome unknown", "not settled", "failed")
        raise AssertionError(
            f"{len(stuck)} runs did not close; first: {described}\n"
            f"log lines of note:\n{lines}\n{cluster.logs()}"
        )
    return [t.result() for t in closing]


def _scheduled(events: list[history_pb2.HistoryEvent]) -> dict[int, str]:
    """BLOCK_SCHEDULED event id -> its external block."""
    return {
        e.event_id: e.block_scheduled_event_attributes.block_id
        for e in events
        if e.event_type == history_pb2.EVENT_TYPE_BLOCK_SCHEDULED
    }


def _completions(events: list[history_pb2.HistoryEvent]) -> Counter[str]:
    """How many times each block's completion is recorded: external blocks' and the engine's."""
    scheduled = _scheduled(events)
    completed = Counter(
        scheduled[e.block_completed_event_attributes.scheduled_event_id]
        for e in events
        if e.event_type == history_pb2.EVENT_TYPE_BLOCK_COMPLETED
    )
    completed.update(
        e.system_block_completed_event_attributes.block_id
        for e in events
        if e.event_type == history_pb2.EVENT_TYPE_SYSTEM_BLOCK_COMPLETED
    )
    return completed


@pytest.mark.parametrize("split_cluster", [*CLUSTER_BACKENDS, MTLS], indirect=True)
async def test_kill_history_then_matching_loses_nothing(split_cluster: Cluster) -> None:
    cluster = split_cluster
    client = Client(cluster.frontend)
    await client.ensure_namespace()
    queue, flow = f"q-{uuid.uuid4().hex[:6]}", f"chaos_{uuid.uuid4().hex[:6]}"
    await client.register(three_increments_blueprint(flow, queue))
    rng = random.Random(7)

    async def inc(task: Task) -> Any:
        await asyncio.sleep(rng.uniform(0.01, 0.1))
        return {"n": task.input["n"] + 1}

    run_ids = [f"chaos-{i}-{uuid.uuid4().hex[:6]}" for i in range(RUNS)]
    # Two workers: one takes every task through matching, the other asks for eager dispatch
    # (its next blocks come back with its completions), so kills hit both paths.
    async with (
        BlockWorker(cluster.frontend, queue, {"inc@1": inc}, concurrency=20),
        BlockWorker(cluster.frontend, queue, {"inc@1": inc}, concurrency=20, eager=True),
    ):
        await asyncio.gather(*(_start(client, flow, r, {"n": i}) for i, r in enumerate(run_ids)))
        closing = [asyncio.create_task(client.close_event(r, timeout_s=180)) for r in run_ids]

        # Kill history while runs are mid-flight, then matching, restarting each.
        await asyncio.wait(closing, return_when=asyncio.FIRST_COMPLETED)
        await _kill_history_then_matching(cluster)

        closed = await _all_closed(cluster, client, run_ids, closing)

    unfinished = [
        r
        for r, e in zip(run_ids, closed, strict=True)
        if not e.HasField("run_completed_event_attributes")
    ]
    assert not unfinished, cluster.logs()
    for i, event in enumerate(closed):
        assert value(event.run_completed_event_attributes.result) == i + 3
    for run_id in run_ids:
        events = await client.history(run_id)
        completed = _completions(events)
        assert completed == {"a": 1, "b": 1, "c": 1}, (run_id, completed)
        assert sorted(_scheduled(events).values()) == ["a", "b", "c"]
    await client.close()


PARKED = 6
"""Runs parked in each kind of wait."""


def _parked_flows(prefix: str, queue: str) -> list[dict[str, Any]]:
    """A run of `<prefix>-signal` waits for `approve`, then echoes it through a worker; one of
    `-early` waits 3s before it takes `approve` (sent before that); one of `-wait` waits 3s, then
    echoes its input; one of `-parent` waits for its child `-child`, which waits for `approve`;
    one of `-map` fans out over two items, each waiting 3s, then echoing its item; one of
    `-event` waits for the `paid` event keyed by its run id."""

    def flow(name: str, *blocks: dict[str, Any], output: str) -> dict[str, Any]:
        return {
            "name": f"{prefix}-{name}",
            "version": 1,
            "task_queue": queue,
            "timeouts": {"start_to_close": "10s"},
            "blocks": list(blocks),
            "output": output,
        }

    approval = {"id": "approval", "signal": {"signal_name": "approve"}}
    return [
        flow(
            "signal",
            approval,
            echo := {
                "id": "echo",
                "needs": ["approval"],
                "external": {"block": "echo@1"},
                "input": "${blocks.approval.output}",
            },
            output="${blocks.echo.output}",
        ),
        flow(
            "early",
            {"id": "gate", "wait": {"duration": "3s"}},
            {**approval, "needs": ["gate"]},
            output="${blocks.approval.output}",
        ),
        flow(
            "wait",
            {"id": "gate", "wait": {"duration": "3s"}},
            {**echo, "needs": ["gate"], "input": "${input}"},
            output="${blocks.echo.output}",
        ),
        flow("child", approval, output="${blocks.approval.output}"),
        flow(
            "event",
            {"id": "paid", "event": {"event_type": "paid", "correlation": "run.id"}},
            output="${blocks.paid.output.payload}",
        ),
        flow(
            "map",
            {
                "id": "fan",
                "map_block": {
                    "items": "[input.i, input.i + 1]",
                    "blocks": [
                        {"id": "pause", "wait": {"duration": "3s"}},
                        {**echo, "needs": ["pause"], "input": "${item}"},
                    ],
                },
            },
            output="${blocks.fan.output}",
        ),
        flow(
            "parent",
            {
                "id": "sub",
                "subflow": {"flow": f"{prefix}-child@1", "run_id": "${run.id}-kid"},
                "input": "${input}",
            },
            output="${blocks.sub.output}",
        ),
    ]


async def _approve(client: Client, run_id: str, data: Any) -> None:
    request = flow_service_pb2.SignalRunRequest(
        namespace=client.namespace,
        signal_name="approve",
        input=payloads(data),
        request_id=f"approve-{run_id}",
    )
    request.run.run_id = run_id
    await _retrying(lambda: client.stub.SignalRun(request, timeout=10), f"signal {run_id}")


async def _publish_paid(client: Client, run_id: str, data: Any) -> None:
    request = flow_service_pb2.PublishEventRequest(
        namespace=client.namespace,
        event_type="paid",
        correlation_key=run_id,
        payload=payloads(data),
        event_id=f"paid-{run_id}",
    )
    await _retrying(lambda: client.stub.PublishEvent(request, timeout=10), f"publish {run_id}")


async def _parked(client: Client, run_id: str, block_id: str) -> None:
    """Until the run exists and `block_id` waits (for a signal, a timer or a child)."""
    for _ in range(300):
        with contextlib.suppress(grpc.aio.AioRpcError):  # a child not started yet
            blocks = {b.block_id: b for b in (await client.describe(run_id)).blocks}
            if block_id in blocks and blocks[block_id].status == common_pb2.BLOCK_STATUS_RUNNING:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{run_id} never waited in {block_id}")


async def test_runs_parked_in_signals_events_waits_maps_and_subflows_survive_kills(
    split_cluster: Cluster,
) -> None:
    cluster = split_cluster
    client = Client(cluster.frontend)
    await client.ensure_namespace()
    prefix, queue = f"parked_{uuid.uuid4().hex[:6]}", f"q-{uuid.uuid4().hex[:6]}"
    for bp in _parked_flows(prefix, queue):
        await client.register(bp)
    runs = {
        kind: [f"{kind}-{i}-{uuid.uuid4().hex[:6]}" for i in range(PARKED)]
        for kind in ("signal", "early", "wait", "parent", "map", "event")
    }
    started = [
        _start(client, f"{prefix}-{kind}", run_id, {"i": i})
        for kind, run_ids in runs.items()
        for i, run_id in enumerate(run_ids)
    ]
    await asyncio.gather(*started)
    # Signals for the early runs arrive before their signal block starts: they are kept.
    await asyncio.gather(*(_approve(client, r, {"early": i}) for i, r in enumerate(runs["early"])))
    await asyncio.gather(
        *(_parked(client, r, "approval") for r in runs["signal"]),
        *(_parked(client, r, "gate") for r in runs["wait"]),
        *(_parked(client, f"{r}-kid", "approval") for r in runs["parent"]),
        *(_parked(client, r, "fan[1].pause") for r in runs["map"]),
        *(_parked(client, r, "paid") for r in runs["event"]),
    )
    every = [r for run_ids in runs.values() for r in run_ids]
    async with BlockWorker(cluster.frontend, queue, {"echo@1": echo}):
        closing = [asyncio.create_task(client.close_event(r, timeout_s=180)) for r in every]
        await _kill_history_then_matching(cluster)
        await asyncio.gather(
            *(_approve(client, r, {"late": i}) for i, r in enumerate(runs["signal"])),
            *(_approve(client, f"{r}-kid", {"kid": i}) for i, r in enumerate(runs["parent"])),
            *(_publish_paid(client, r, {"paid": i}) for i, r in enumerate(runs["event"])),
        )
        closed = dict(zip(every, await _all_closed(cluster, client, every, closing), strict=True))

    expected: dict[str, Callable[[int], Any]] = {
        "signal": lambda i: {"late": i},
        "early": lambda i: {"early": i},
        "wait": lambda i: {"i": i},
        "parent": lambda i: {"kid": i},
        "map": lambda i: [i, i + 1],
        "event": lambda i: {"paid": i},
    }
    for kind, run_ids in runs.items():
        for i, run_id in enumerate(run_ids):
            event = closed[run_id]
            assert event.HasField("run_completed_event_attributes"), (run_id, event)
            assert value(event.run_completed_event_attributes.result) == expected[kind](i)
    blocks = {
        "signal": {"approval": 1, "echo": 1},
        "early": {"gate": 1, "approval": 1},
        "wait": {"gate": 1, "echo": 1},
        "parent": {"sub": 1},
        "event": {"paid": 1},
        "map": {"fan": 1, **{f"fan[{n}].{b}": 1 for n in (0, 1) for b in ("pause", "echo")}},
    }
    for kind, run_ids in runs.items():
        for run_id in run_ids:
            events = await client.history(run_id)
            assert _completions(events) == blocks[kind], (run_id, events)
            timers = {"early": 1, "wait": 1, "map": 2}.get(kind, 0)
            assert len(_of_type(events, history_pb2.EVENT_TYPE_TIMER_FIRED)) == timers
    for run_id in runs["early"]:
        events = await client.history(run_id)
        [signaled] = _of_type(events, history_pb2.EVENT_TYPE_RUN_SIGNALED)
        [fired] = _of_type(events, history_pb2.EVENT_TYPE_TIMER_FIRED)
        assert signaled.event_id < fired.event_id, "the signal came after the block started"
    for run_id in runs["event"]:
        events = await client.history(run_id)
        assert len(_of_type(events, history_pb2.EVENT_TYPE_EVENT_RECEIVED)) == 1
    for run_id in runs["parent"]:
        events = await client.history(run_id)
        assert len(_of_type(events, history_pb2.EVENT_TYPE_CHILD_RUN_CLOSED)) == 1
        child = await client.history(f"{run_id}-kid")
        assert _completions(child) == {"approval": 1}
        assert len(_of_type(child, history_pb2.EVENT_TYPE_RUN_SIGNALED)) == 1
    await client.close()


def _of_type(
    events: list[history_pb2.HistoryEvent], event_type: history_pb2.EventType.ValueType
) -> list[history_pb2.HistoryEvent]:
    return [e for e in events if e.event_type == event_type]
