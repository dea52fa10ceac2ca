"""Runs of blueprint flows end to end: real server processes, real sockets, a worker speaking
the public gRPC API, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest

from tests.support.cluster import Cluster
from tests.support.flows import (
    CANCELED,
    HANG,
    BlockFailure,
    BlockWorker,
    Client,
    Task,
    echo,
    two_step_blueprint,
    value,
)
from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2
from tideflow_server.rpc.errors import from_rpc_error


def _queue() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def _flow() -> str:
    return f"flow_{uuid.uuid4().hex[:8]}"


def _types(events: list[history_pb2.HistoryEvent]) -> list[str]:
    return [history_pb2.EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in events]


async def test_sequential_and_parallel_blocks_with_data_wiring(
    cluster: Cluster, client: Client
) -> None:
    queue, flow = _queue(), _flow()
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "timeouts": {"start_to_close": "10s"},
            "input_schema": {"type": "object", "required": ["doc"]},
            "blocks": [
                {
                    "id": "intake",
                    "external": {"block": "intake@1"},
                    "input": {"doc": "${input.doc}"},
                },
                {
                    "id": "ocr",
                    "needs": ["intake"],
                    "external": {"block": "upper@1"},
                    "input": {"text": "${blocks.intake.output.text}"},
                },
                {
                    "id": "words",
                    "needs": ["intake"],
                    "external": {"block": "count@1"},
                    "input": {"text": "${blocks.intake.output.text}"},
                },
                {
                    "id": "report",
                    "needs": ["ocr", "words"],
                    "external": {"block": "report@1"},
                    "input": {
                        "summary": "${blocks.ocr.output.text} has ${blocks.words.output.n} words"
                    },
                },
            ],
            "output": {"summary": "${blocks.report.output.summary}", "doc": "${input.doc}"},
        }
    )

    async def intake(task: Task) -> Any:
        return {"text": f"contents of {task.input['doc']}"}

    async def upper(task: Task) -> Any:
        return {"text": task.input["text"].upper()}

    async def words(task: Task) -> Any:
        return {"n": len(task.input["text"].split())}

    handlers = {"intake@1": intake, "upper@1": upper, "count@1": words, "report@1": echo}
    async with BlockWorker(cluster.frontend, queue, handlers):
        run_id, started = await client.start(flow, {"doc": "invoice.pdf"})
        assert started.started
        closed = await client.close_event(run_id)

    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_COMPLETED
    assert value(closed.run_completed_event_attributes.result) == {
        "summary": "CONTENTS OF INVOICE.PDF has 3 words",
        "doc": "invoice.pdf",
    }
    types = _types(await client.history(run_id))
    assert types[0] == "RUN_STARTED" and types[-1] == "RUN_COMPLETED"
    assert types.count("BLOCK_SCHEDULED") == 4 and types.count("BLOCK_COMPLETED") == 4
    # ocr and words are scheduled together, in one decision after intake completed.
    completed_intake = types.index("BLOCK_COMPLETED")
    assert types[completed_intake + 1 : completed_intake + 3] == ["BLOCK_SCHEDULED"] * 2


async def test_retries_with_backoff_until_success(cluster: Cluster, client: Client) -> None:
    queue, flow = _queue(), _flow()
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "blocks": [
                {
                    "id": "flaky",
                    "external": {
                        "block": "flaky@1",
                        "timeouts": {"start_to_close": "10s"},
                        "retry": {
                            "initial_interval": "0.2s",
                            "backoff_coefficient": 2,
                            "maximum_attempts": 5,
                        },
                    },
                }
            ],
            "output": "${blocks.flaky.output}",
        }
    )
    seen: list[float] = []

    async def flaky(task: Task) -> Any:
        seen.append(asyncio.get_running_loop().time())
        if task.response.attempt < 3:
            raise BlockFailure(f"attempt {task.response.attempt} failed")
        return {"attempt": task.response.attempt}

    async with BlockWorker(cluster.frontend, queue, {"flaky@1": flaky}):
        run_id, _ = await client.start(flow)
        closed = await client.close_event(run_id)

    assert value(closed.run_completed_event_attributes.result) == {"attempt": 3}
    assert len(seen) == 3
    # Backoff: 0.2 s then 0.4 s (jitter only shortens, by at most 20%).
    assert seen[1] - seen[0] >= 0.15 and seen[2] - seen[1] >= 0.3
    events = await client.history(run_id)
    started = next(e for e in events if e.event_type == history_pb2.EVENT_TYPE_BLOCK_STARTED)
    assert started.block_started_event_attributes.attempt == 3
    assert started.block_started_event_attributes.last_failure.message == "attempt 2 failed"


async def test_retries_until_exhaustion_record_the_failure(
    cluster: Cluster, client: Client
) -> None:
    queue, flow = _queue(), _flow()
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "blocks": [
                {
                    "id": "doomed",
                    "external": {
                        "block": "doomed@1",
                        "timeouts": {"start_to_close": "10s"},
                        "retry": {"initial_interval": "0.1s", "maximum_attempts": 3},
                    },
                },
                {
                    "id": "after",
                    "needs": ["doomed"],
                    "external": {"block": "doomed@1", "timeouts": {"start_to_close": "10s"}},
                },
            ],
        }
    )

    async def doomed(task: Task) -> Any:
        raise BlockFailure("disk on fire", type="DiskError")

    worker = BlockWorker(cluster.frontend, queue, {"doomed@1": doomed})
    async with worker:
        run_id, _ = await client.start(flow)
        closed = await client.close_event(run_id)

    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    run_failure = closed.run_failed_event_attributes.failure
    assert run_failure.block_failure_info.block_id == "doomed"
    assert run_failure.cause.message == "disk on fire"
    assert worker.attempts[(run_id, "doomed")] == 3
    assert (run_id, "after") not in worker.attempts
    failed = next(
        e
        for e in await client.history(run_id)
        if e.event_type == history_pb2.EVENT_TYPE_BLOCK_FAILED
    )
    attrs = failed.block_failed_event_attributes
    assert attrs.retry_state == common_pb2.RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED
    assert attrs.failure.application_failure_info.type == "DiskError"
    described = await client.describe(run_id)
    summaries = {b.block_id: b for b in described.blocks}
    assert summaries["doomed"].status == common_pb2.BLOCK_STATUS_FAILED
    assert summaries["doomed"].attempt == 3


async def test_a_block_nobody_set_attempts_for_stops_at_the_default_and_describe_shows_it(
    cluster: Cluster, client: Client
) -> None:
    """maximum_attempts unset in block and blueprint: the server's bounded default (10), not
    unlimited. The blueprint sets only short intervals so the ten attempts take no time."""
    queue, flow = _queue(), _flow()
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "timeouts": {"start_to_close": "10s"},
            "retry": {"initial_interval": "0.01s", "backoff_coefficient": 1.0},
            "blocks": [{"id": "flaky", "external": {"block": "flaky@1"}}],
        }
    )
    first_attempt, described = asyncio.Event(), asyncio.Event()

    async def flaky(task: Task) -> Any:
        if task.response.attempt == 1:
            first_attempt.set()
            await described.wait()
        raise BlockFailure("still broken", type="Flaky")

    worker = BlockWorker(cluster.frontend, queue, {"flaky@1": flaky})
    async with worker:
        run_id, _ = await client.start(flow)
        await first_attempt.wait()
        [pending] = (await client.describe(run_id)).pending_blocks
        described.set()
        closed = await client.close_event(run_id)

    assert pending.maximum_attempts == 10
    policy = pending.retry_policy
    assert (policy.maximum_attempts, policy.backoff_coefficient) == (10, 1.0)
    assert policy.initial_interval.ToMilliseconds() == 10
    assert policy.maximum_interval.ToMilliseconds() == 1_000  # 100 x initial
    assert policy.jitter == pytest.approx(0.2)
    assert pending.timeouts.start_to_close.ToSeconds() == 10
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    assert worker.attempts[(run_id, "flaky")] == 10
    events = await client.history(run_id)
    scheduled = next(e for e in events if e.event_type == history_pb2.EVENT_TYPE_BLOCK_SCHEDULED)
    assert scheduled.block_scheduled_event_attributes.retry_policy == policy
    failed = next(e for e in events if e.event_type == history_pb2.EVENT_TYPE_BLOCK_FAILED)
    attrs = failed.block_failed_event_attributes
    assert attrs.retry_state == common_pb2.RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED


async def test_a_history_follow_with_a_shorter_deadline_answers_before_it(
    cluster: Cluster, client: Client
) -> None:
    """The server would wait 10 s for a new event; a caller allowing 3 s gets the empty
    answer, with the position to wait on from, instead of DEADLINE_EXCEEDED."""
    queue, flow = _queue(), _flow()
    await client.register(two_step_blueprint(flow, queue))  # nobody polls the queue
    run_id, _ = await client.start(flow, 1)
    request = flow_service_pb2.GetRunHistoryRequest(namespace=client.namespace, wait_new_event=True)
    request.run.run_id = run_id
    first = await client.stub.GetRunHistory(request, timeout=10)  # at once: events to read
    assert first.history.events
    request.next_page_token = first.next_page_token
    reply = await client.stub.GetRunHistory(request, timeout=3)
    assert not reply.history.events
    assert reply.next_page_token == first.next_page_token


async def test_non_retryable_error_type_is_not_retried(cluster: Cluster, client: Client) -> None:
    queue, flow = _queue(), _flow()
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "blocks": [
                {
                    "id": "parse",
                    "external": {
                        "block": "parse@1",
                        "timeouts": {"start_to_close": "10s"},
                        "retry": {
                            "initial_interval": "0.1s",
                            "non_retryable_error_types": ["BadDocument"],
                        },
                    },
                }
            ],
        }
    )

    async def parse(task: Task) -> Any:
        raise BlockFailure("not a PDF", type="BadDocument")

    worker = BlockWorker(cluster.frontend, queue, {"parse@1": parse})
    async with worker:
        run_id, _ = await client.start(flow)
        closed = await client.close_event(run_id)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    assert worker.attempts[(run_id, "parse")] == 1


@pytest.mark.parametrize(
    ("timeouts", "behaviour", "expected"),
    [
        ({"schedule_to_start": "1s", "start_to_close": "10s"}, "no-worker", "SCHEDULE_TO_START"),
        ({"start_to_close": "1s"}, "hang", "START_TO_CLOSE"),
        ({"start_to_close": "30s", "heartbeat": "1s"}, "heartbeat-once", "HEARTBEAT"),
        ({"schedule_to_close": "2s", "start_to_close": "10s"}, "hang", "SCHEDULE_TO_CLOSE"),
    ],
)
async def test_each_timeout_kind_fires(
    cluster: Cluster,
    client: Client,
    timeouts: dict[str, str],
    behaviour: str,
    expected: str,
) -> None:
    queue, flow = _queue(), _flow()
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "blocks": [
                {
                    "id": "slow",
                    "external": {
                        "block": "slow@1",
                        "timeouts": timeouts,
                        "retry": {"initial_interval": "0.3s", "maximum_attempts": 1},
                    },
                }
            ],
        }
    )

    async def slow(task: Task) -> Any:
        if behaviour == "heartbeat-once":
            await task.heartbeat({"page": 1})
            return HANG
        return HANG

    run_id, _ = await client.start(flow)
    if behaviour == "no-worker":
        closed = await client.close_event(run_id, timeout_s=30)
    else:
        async with BlockWorker(cluster.frontend, queue, {"slow@1": slow}):
            closed = await client.close_event(run_id, timeout_s=30)

    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_FAILED
    events = await client.history(run_id)
    timed_out = next(e for e in events if e.event_type == history_pb2.EVENT_TYPE_BLOCK_TIMED_OUT)
    info = timed_out.block_timed_out_event_attributes.failure.timeout_failure_info
    assert common_pb2.TimeoutType.Name(info.timeout_type) == f"TIMEOUT_TYPE_{expected}"
    if behaviour == "heartbeat-once":
        assert value(info.last_heartbeat_details) == {"page": 1}


async def test_run_timeout(cluster: Cluster, client: Client) -> None:
    queue, flow = _queue(), _flow()
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "run_timeout": "1s",
            "blocks": [
                {"id": "a", "external": {"block": "a@1", "timeouts": {"start_to_close": "60s"}}}
            ],
        }
    )
    run_id, _ = await client.start(flow)
    closed = await client.close_event(run_id, timeout_s=20)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_TIMED_OUT


async def test_cancel_reaches_a_heartbeating_block(cluster: Cluster, client: Client) -> None:
    queue, flow = _queue(), _flow()
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "timeouts": {"start_to_close": "60s", "heartbeat": "10s"},
            "blocks": [
                {"id": "long", "external": {"block": "long@1"}},
                {"id": "never", "needs": ["long"], "external": {"block": "long@1"}},
            ],
        }
    )
    in_block = asyncio.Event()

    async def long(task: Task) -> Any:
        in_block.set()
        while not await task.heartbeat({"progress": "working"}):  # noqa: ASYNC110 - heartbeats
            await asyncio.sleep(0.1)
        return CANCELED

    worker = BlockWorker(cluster.frontend, queue, {"long@1": long})
    async with worker:
        run_id, _ = await client.start(flow)
        await asyncio.wait_for(in_block.wait(), 20)
        cancel = flow_service_pb2.CancelRunRequest(namespace=client.namespace, reason="stop")
        cancel.run.run_id = run_id
        await client.stub.CancelRun(cancel, timeout=10)
        closed = await client.close_event(run_id)

    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_CANCELED
    types = _types(await client.history(run_id))
    assert types[-4:] == [
        "BLOCK_CANCEL_REQUESTED",
        "BLOCK_STARTED",
        "BLOCK_CANCELED",
        "RUN_CANCELED",
    ]
    assert (run_id, "never") not in worker.attempts


async def test_cancel_closes_a_run_whose_blocks_have_not_started(
    cluster: Cluster, client: Client
) -> None:
    queue, flow = _queue(), _flow()
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "blocks": [
                {"id": "a", "external": {"block": "a@1", "timeouts": {"start_to_close": "5s"}}}
            ],
        }
    )
    run_id, _ = await client.start(flow)
    cancel = flow_service_pb2.CancelRunRequest(namespace=client.namespace, reason="changed mind")
    cancel.run.run_id = run_id
    await client.stub.CancelRun(cancel, timeout=10)
    closed = await client.close_event(run_id)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_CANCELED
    # The block task left in the queue is stale: matching drops it (RecordBlockStarted
    # refuses it) and a worker never gets it.
    describe = flow_service_pb2.DescribeTaskQueueRequest(namespace=client.namespace)
    describe.task_queue.name = queue
    for _ in range(200):
        reply = await client.stub.DescribeTaskQueue(describe, timeout=10)
        if reply.backlog_count_hint == 1:
            break
        await asyncio.sleep(0.05)  # the transfer queue pushes the task right after commit
    assert reply.backlog_count_hint == 1
    worker = BlockWorker(cluster.frontend, queue, {"a@1": echo})
    async with worker:
        for _ in range(200):
            reply = await client.stub.DescribeTaskQueue(describe, timeout=10)
            if reply.pollers and reply.backlog_count_hint == 0:
                break
            await asyncio.sleep(0.05)  # no event marks "the stale task was dropped"
        assert reply.pollers and reply.backlog_count_hint == 0
    assert (run_id, "a") not in worker.attempts


async def test_terminate(cluster: Cluster, client: Client) -> None:
    queue, flow = _queue(), _flow()
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "blocks": [
                {"id": "a", "external": {"block": "a@1", "timeouts": {"start_to_close": "5s"}}}
            ],
        }
    )
    run_id, _ = await client.start(flow)
    terminate = flow_service_pb2.TerminateRunRequest(namespace=client.namespace, reason="bad data")
    terminate.run.run_id = run_id
    await client.stub.TerminateRun(terminate, timeout=10)
    closed = await client.close_event(run_id)
    assert closed.event_type == history_pb2.EVENT_TYPE_RUN_TERMINATED
    assert closed.run_terminated_event_attributes.reason == "bad data"
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await client.stub.TerminateRun(terminate, timeout=10)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_start_is_idempotent_by_request_id(cluster: Cluster, client: Client) -> None:
    queue, flow = _queue(), _flow()
    await client.register(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "blocks": [
                {"id": "a", "external": {"block": "a@1", "timeouts": {"start_to_close": "5s"}}}
            ],
        }
    )
    run_id = f"order-{uuid.uuid4().hex[:6]}"
    _, first = await client.start(flow, run_id=run_id, request_id="req-1")
    _, again = await client.start(flow, run_id=run_id, request_id="req-1")
    assert first.started and not again.started
    assert again.execution_id == first.execution_id
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await client.start(flow, run_id=run_id, request_id="req-2")
    error = from_rpc_error(other.value)
    assert other.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error.reason == "RUN_ALREADY_STARTED"
    assert error.metadata["execution_id"] == first.execution_id


async def test_version_zero_registers_the_next_version(cluster: Cluster, client: Client) -> None:
    flow = _flow()
    blueprint = {
        "name": flow,
        "task_queue": "cpu",
        "blocks": [{"id": "a", "external": {"block": "a@1", "timeouts": {"start_to_close": "5s"}}}],
    }
    first = await client.register({**blueprint, "version": 0})
    second = await client.register({**blueprint, "version": 0})
    again = await client.register({**blueprint, "version": 2})
    assert (first.flow.version, second.flow.version) == (1, 2)
    assert first.created and second.created and not again.created


async def test_a_start_of_the_latest_takes_a_version_registered_since(
    cluster: Cluster, client: Client
) -> None:
    """History keeps the latest version it read as a hint; a version registered after it must
    still be the one the next start of version 0 takes (the store checks the hint)."""
    flow = _flow()

    def blueprint(version: int, queue: str) -> dict[str, Any]:
        return {
            "name": flow,
            "version": version,
            "task_queue": queue,
            "blocks": [
                {"id": "a", "external": {"block": "a@1", "timeouts": {"start_to_close": "5s"}}}
            ],
        }

    async def started_version() -> tuple[int, str]:
        run_id, _ = await client.start(flow)
        info = (await client.describe(run_id)).run_info
        return info.flow.version, info.task_queue.name

    await client.register(blueprint(1, "queue-of-v1"))
    assert await started_version() == (1, "queue-of-v1")
    assert await started_version() == (1, "queue-of-v1")  # from the hint, checked
    await client.register(blueprint(2, "queue-of-v2"))
    assert await started_version() == (2, "queue-of-v2")
    assert await started_version() == (2, "queue-of-v2")
