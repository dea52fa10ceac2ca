"""The worker conformance suite: the same scenarios against the Python SDK's, the Go and the
TypeScript example workers, each a real process polling a real cluster (docs/workers.md says
what the conformance blocks do)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tests.integration.workers.conftest import Launcher, WorkerProcess
from tideflow.api.v1 import common_pb2, failure_pb2, history_pb2
from tideflow.client import Client, RunHandle
from tideflow.errors import RunFailedError

RESULT_TIMEOUT_S = 30.0
# A result this close to the 2 MiB payload limit still completes (the JSON around the blob,
# the payload's metadata and the message framing take the rest).
NEAR_LIMIT = 2 * 1024 * 1024 - 1024


def blueprint(
    flow: str, worker: WorkerProcess, block: str, *, heartbeat: str = ""
) -> dict[str, Any]:
    timeouts: dict[str, str] = {"start_to_close": "20s"}
    if heartbeat:
        timeouts["heartbeat"] = heartbeat
    return {
        "name": flow,
        "version": 1,
        "task_queue": worker.task_queue,
        "retry": {"initial_interval": "0.1s", "maximum_attempts": 5},
        "blocks": [
            {"id": "b", "external": {"block": block, "timeouts": timeouts}, "input": "${input}"}
        ],
        "output": "${blocks.b.output}",
    }


async def start(
    client: Client, worker: WorkerProcess, block: str, value: Any, *, heartbeat: str = ""
) -> RunHandle:
    flow = f"{block.split('@', maxsplit=1)[0].replace('.', '-')}-{uuid.uuid4().hex[:8]}"
    await client.register_flow(blueprint(flow, worker, block, heartbeat=heartbeat))
    return await client.start_run(flow, value, run_id=f"{flow}-run")


async def events(handle: RunHandle) -> list[history_pb2.HistoryEvent]:
    return [event async for event in handle.history()]


def attributes(found: list[history_pb2.HistoryEvent], kind: str) -> list[Any]:
    return [getattr(e, kind) for e in found if e.WhichOneof("attributes") == kind]


def application(failure: failure_pb2.Failure) -> failure_pb2.ApplicationFailureInfo:
    assert failure.WhichOneof("failure_info") == "application_failure_info", failure
    return failure.application_failure_info


def decoded(payloads: common_pb2.Payloads) -> Any:
    (payload,) = payloads.payloads
    assert payload.metadata["encoding"] == b"json/plain"
    return json.loads(payload.data)


@pytest.mark.parametrize("value", [{"text": "hello", "n": [1, 2.5, None]}, None])
async def test_a_block_completes_with_its_result(
    client: Client, worker: WorkerProcess, value: Any
) -> None:
    handle = await start(client, worker, "conf.echo@1", value)
    assert await handle.result(timeout=RESULT_TIMEOUT_S) == value


async def test_a_retryable_failure_is_retried_until_the_block_completes(
    client: Client, worker: WorkerProcess
) -> None:
    handle = await start(client, worker, "conf.flaky@1", {"fail_attempts": 2})
    assert await handle.result(timeout=RESULT_TIMEOUT_S) == {"attempt": 3}
    (started,) = attributes(await events(handle), "block_started_event_attributes")
    assert started.attempt == 3
    assert started.last_failure.message == "attempt 2 failed"
    assert started.last_failure.source == worker.language
    info = application(started.last_failure)
    assert (info.type, info.non_retryable) == ("Flaky", False)


async def test_a_non_retryable_failure_fails_the_run_after_one_attempt(
    client: Client, worker: WorkerProcess
) -> None:
    handle = await start(client, worker, "conf.fatal@1", {"reason": "bad scan"})
    with pytest.raises(RunFailedError):
        await handle.result(timeout=RESULT_TIMEOUT_S)
    found = await events(handle)
    (started,) = attributes(found, "block_started_event_attributes")
    (failed,) = attributes(found, "block_failed_event_attributes")
    assert started.attempt == 1
    assert failed.failure.message == "fatal: bad scan"
    assert failed.failure.source == worker.language
    info = application(failed.failure)
    assert (info.type, info.non_retryable) == ("Fatal", True)
    assert decoded(info.details) == {"reason": "bad scan"}


async def test_a_heartbeating_block_stops_when_its_run_is_canceled(
    client: Client, worker: WorkerProcess
) -> None:
    handle = await start(client, worker, "conf.wait_cancel@1", None, heartbeat="5s")
    await until_heartbeat(handle)
    await handle.cancel(reason="conformance")
    with pytest.raises(RunFailedError) as failed:
        await handle.result(timeout=RESULT_TIMEOUT_S)
    assert failed.value.status == "CANCELED"
    (canceled,) = attributes(await events(handle), "block_canceled_event_attributes")
    assert canceled.started_event_id > 0, "the worker acknowledged the cancellation"
    assert decoded(canceled.details)["beats"] > 0


async def test_a_block_whose_heartbeats_stop_is_retried_and_resumes_from_its_details(
    client: Client, worker: WorkerProcess
) -> None:
    handle = await start(client, worker, "conf.stall@1", None, heartbeat="1s")
    result = await handle.result(timeout=RESULT_TIMEOUT_S)
    assert result == {"attempt": 2, "resumed": {"progress": 1}}


async def test_a_result_near_the_payload_limit_completes(
    client: Client, worker: WorkerProcess
) -> None:
    handle = await start(client, worker, "conf.big@1", {"size": NEAR_LIMIT})
    result = await handle.result(timeout=RESULT_TIMEOUT_S)
    assert len(result["blob"]) == NEAR_LIMIT and set(result["blob"]) == {"x"}


async def test_a_graceful_shutdown_finishes_the_running_block(
    client: Client, worker: WorkerProcess
) -> None:
    handle = await start(client, worker, "conf.slow@1", {"ms": 1500})
    # Its heartbeat, not the start: a start history recorded at its commit (direct dispatch)
    # may still be on its way to the worker, and a worker stopping drops what it never got.
    await until_heartbeat(handle)
    worker.terminate()
    assert await handle.result(timeout=RESULT_TIMEOUT_S) == {"slept_ms": 1500}
    (started,) = attributes(await events(handle), "block_started_event_attributes")
    assert started.attempt == 1, "the block was not lost and retried"
    code = await asyncio.to_thread(worker.process.wait, 10)
    assert code == 0, worker.output()


async def until_heartbeat(handle: RunHandle) -> None:
    for _ in range(300):
        described = await handle.describe()
        if any(p.heartbeat_details.payloads for p in described.pending_blocks):
            return
        await asyncio.sleep(0.05)
    pytest.fail("the block never heartbeat")


async def test_a_runs_affinity_blocks_stay_on_the_worker_that_started_it(
    client: Client, launcher: Launcher
) -> None:
    # Two workers on one queue; blocks with `affinity: run` go to the sticky queue of the
    # worker that ran the run's previous block, so the whole chain runs on one of them.
    queue = f"conf-{launcher.language}-{uuid.uuid4().hex[:8]}"
    first, second = [await launcher.start(queue) for _ in range(2)]
    flow = f"chain-{uuid.uuid4().hex[:8]}"
    steps = [f"s{i}" for i in range(6)]
    await client.register_flow(
        {
            "name": flow,
            "version": 1,
            "task_queue": queue,
            "timeouts": {"start_to_close": "20s"},
            "blocks": [
                {
                    "id": step,
                    **({"needs": [steps[i - 1]]} if i else {}),
                    "external": {"block": "conf.echo@1", "affinity": "AFFINITY_RUN"},
                    "input": i,
                }
                for i, step in enumerate(steps)
            ],
        }
    )
    handle = await client.start_run(flow, None, run_id=f"{flow}-run")
    await handle.result(timeout=RESULT_TIMEOUT_S)
    ran_on = {
        s.identity for s in attributes(await events(handle), "block_started_event_attributes")
    }
    assert len(ran_on) == 1 and ran_on <= {first.identity, second.identity}, ran_on
