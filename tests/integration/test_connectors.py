"""The connector worker (`python -m workers.connectors`) as a real process on a SQLite cluster,
calling an HTTP server this module starts on 127.0.0.1, a throwaway PostgreSQL, and the
cluster itself (publish@1)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.support.cluster import Cluster, running_sqlite_cluster, sdk_client
from tests.support.postgres import PostgresServer, free_port
from tideflow.api.v1 import history_pb2
from tideflow.client import Client, RunHandle
from tideflow.errors import RunFailedError

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "connectors"
SECRET = "s3cr3t-token-value"
BREAKER_FAILURES = 3
RESULT_TIMEOUT_S = 30.0


@dataclass
class Target:
    """The HTTP server the blocks call: what it answers, and what it was sent."""

    port: int
    calls: dict[str, int] = field(default_factory=dict)
    authorization: list[str] = field(default_factory=list)
    healthy: bool = False
    """/down answers 500 until the test sets this."""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _app(target: Target) -> Starlette:
    async def flaky(request: Request) -> Response:
        key = request.query_params["key"]
        target.calls[key] = target.calls.get(key, 0) + 1
        if target.calls[key] <= 2:
            return PlainTextResponse("try later", status_code=503)
        return JSONResponse({"ok": True, "calls": target.calls[key]})

    async def missing(request: Request) -> Response:
        return JSONResponse({"error": "no such order"}, status_code=404)

    async def slow(request: Request) -> Response:
        await asyncio.sleep(5)
        return PlainTextResponse("late")

    async def down(request: Request) -> Response:
        target.calls["down"] = target.calls.get("down", 0) + 1
        if target.healthy:
            return JSONResponse({"ok": True})
        return PlainTextResponse("boom", status_code=500)

    async def whoami(request: Request) -> Response:
        # Echoes the credential, as a careless API would: the worker must not record it.
        auth = request.headers.get("authorization", "")
        target.authorization.append(auth)
        return PlainTextResponse(f"you sent {auth}")

    return Starlette(
        routes=[
            Route("/flaky", flaky),
            Route("/missing", missing),
            Route("/slow", slow),
            Route("/down", down),
            Route("/whoami", whoami),
        ]
    )


async def _serve(target: Target) -> AsyncIterator[Target]:
    server = uvicorn.Server(
        uvicorn.Config(_app(target), host="127.0.0.1", port=target.port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield target
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="module")
async def target() -> AsyncIterator[Target]:
    async for served in _serve(Target(free_port())):
        yield served


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with running_sqlite_cluster(tmp_path_factory.mktemp("connectors")) as started:
        yield started


@pytest.fixture(scope="module")
async def client(cluster: Cluster) -> AsyncIterator[Client]:
    async with sdk_client(cluster) as opened:
        yield opened


@dataclass
class ConnectorWorker:
    process: subprocess.Popen[bytes]
    health_port: int
    log: Path

    async def health(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"http://127.0.0.1:{self.health_port}/health")
        body: dict[str, Any] = reply.json()
        return body


@pytest.fixture(scope="module")
def connector_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("connector-config") / "connectors.yaml"
    path.write_text("connections: {}\n")
    return path


@pytest.fixture(scope="module")
async def connectors(
    cluster: Cluster, connector_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ConnectorWorker]:
    log = tmp_path_factory.mktemp("connector-worker") / "worker.log"
    health_port = free_port()
    argv = [
        *(sys.executable, "-m", "workers.connectors", "--address", cluster.frontend),
        *("--task-queue", QUEUE, "--config", str(connector_config)),
        *("--health-port", str(health_port), "--breaker-failures", str(BREAKER_FAILURES)),
        *("--breaker-recovery-s", "1"),
    ]
    env = {**os.environ, "TIDEFLOW_SECRET_API_TOKEN": SECRET}
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: ASYNC220 - starts at once
            argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    worker = ConnectorWorker(process, health_port, log)
    try:
        for _ in range(300):
            if process.poll() is not None:
                pytest.fail(f"connector worker exited:\n{log.read_text()}")
            try:
                await worker.health()
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        yield worker
    finally:
        process.terminate()
        process.wait(10)


async def run(
    client: Client, block: str, value: Any, *, attempts: int = 5, interval: str = "0.1s"
) -> RunHandle:
    flow = f"{block.split('@', maxsplit=1)[0]}-{uuid.uuid4().hex[:8]}"
    await client.register_flow(
        {
            "name": flow,
            "version": 1,
            "task_queue": QUEUE,
            "retry": {"initial_interval": interval, "maximum_attempts": attempts},
            "timeouts": {"start_to_close": "10s"},
            "blocks": [{"id": "call", "external": {"block": block}, "input": "${input}"}],
            "output": "${blocks.call.output}",
        }
    )
    return await client.start_run(flow, value, run_id=flow)


async def history(handle: RunHandle) -> list[history_pb2.HistoryEvent]:
    return [event async for event in handle.history()]


def started_event(found: list[history_pb2.HistoryEvent]) -> history_pb2.BlockStartedEventAttributes:
    (started,) = [
        e.block_started_event_attributes
        for e in found
        if e.HasField("block_started_event_attributes")
    ]
    return started


def failed_event(found: list[history_pb2.HistoryEvent]) -> history_pb2.BlockFailedEventAttributes:
    (failed,) = [
        e.block_failed_event_attributes
        for e in found
        if e.HasField("block_failed_event_attributes")
    ]
    return failed


async def test_a_503_is_retried_until_the_server_answers(
    client: Client, connectors: ConnectorWorker, target: Target
) -> None:
    key = uuid.uuid4().hex
    handle = await run(client, "http@1", {"url": target.url("/flaky"), "query": {"key": key}})
    result = await handle.result(timeout=RESULT_TIMEOUT_S)
    assert result["status"] == 200 and result["body"] == {"ok": True, "calls": 3}
    started = started_event(await history(handle))
    assert started.attempt == 3
    assert started.last_failure.application_failure_info.type == "HttpServerError"


async def test_a_404_fails_at_once_with_the_response_recorded(
    client: Client, connectors: ConnectorWorker, target: Target
) -> None:
    handle = await run(client, "http@1", {"url": target.url("/missing")})
    with pytest.raises(RunFailedError):
        await handle.result(timeout=RESULT_TIMEOUT_S)
    found = await history(handle)
    assert started_event(found).attempt == 1
    info = failed_event(found).failure.application_failure_info
    assert (info.type, info.non_retryable) == ("HttpClientError", True)
    (detail,) = info.details.payloads
    assert b'"status": 404' in detail.data or b'"status":404' in detail.data
    assert b"no such order" in detail.data


async def test_a_timeout_fails_retryable(
    client: Client, connectors: ConnectorWorker, target: Target
) -> None:
    handle = await run(client, "http@1", {"url": target.url("/slow"), "timeout_s": 0.3}, attempts=2)
    with pytest.raises(RunFailedError):
        await handle.result(timeout=RESULT_TIMEOUT_S)
    found = await history(handle)
    assert started_event(found).attempt == 2
    info = failed_event(found).failure.application_failure_info
    assert (info.type, info.non_retryable) == ("HttpTimeout", False)


async def test_the_breaker_opens_after_failures_and_recovers(
    client: Client, connectors: ConnectorWorker
) -> None:
    # A host of its own, so the other tests' calls do not count against its breaker.
    async for down in _serve(Target(free_port())):
        for _ in range(BREAKER_FAILURES):
            handle = await run(client, "http@1", {"url": down.url("/down")}, attempts=1)
            with pytest.raises(RunFailedError):
                await handle.result(timeout=RESULT_TIMEOUT_S)
        calls = down.calls["down"]
        handle = await run(client, "http@1", {"url": down.url("/down")}, attempts=1)
        with pytest.raises(RunFailedError):
            await handle.result(timeout=RESULT_TIMEOUT_S)
        info = failed_event(await history(handle)).failure.application_failure_info
        assert (info.type, info.non_retryable) == ("CircuitOpen", False)
        assert down.calls["down"] == calls, "an open breaker fails fast, without a request"
        host = f"127.0.0.1:{down.port}"
        health = await connectors.health()
        assert health["breakers"][host] == "opened" and health["status"] == "degraded"

        # Healthy again: once the recovery time passes, a half-open call goes through and
        # closes the breaker (the block's retries wait out the open state).
        down.healthy = True
        handle = await run(
            client, "http@1", {"url": down.url("/down")}, attempts=20, interval="0.2s"
        )
        assert (await handle.result(timeout=RESULT_TIMEOUT_S))["status"] == 200
        assert (await connectors.health())["breakers"][host] == "closed"


async def test_secrets_are_sent_but_never_recorded(
    client: Client, connectors: ConnectorWorker, target: Target
) -> None:
    handle = await run(
        client,
        "http@1",
        {"url": target.url("/whoami"), "headers": {"Authorization": "Bearer ${secret:API_TOKEN}"}},
    )
    result = await handle.result(timeout=RESULT_TIMEOUT_S)
    assert target.authorization[-1] == f"Bearer {SECRET}"
    assert result["body"] == "you sent Bearer ***"
    recorded = b"".join(e.SerializeToString() for e in await history(handle))
    assert SECRET.encode() not in recorded
    assert b"${secret:API_TOKEN}" in recorded


async def test_publish_delivers_an_event_to_a_waiting_run(
    client: Client, connectors: ConnectorWorker
) -> None:
    flow = f"waits-{uuid.uuid4().hex[:8]}"
    await client.register_flow(
        {
            "name": flow,
            "version": 1,
            "blocks": [
                {
                    "id": "paid",
                    "event": {"event_type": "order.paid", "correlation": "input.order"},
                }
            ],
            "output": "${blocks.paid.output.payload}",
        }
    )
    order = uuid.uuid4().hex
    waiting = await client.start_run(flow, {"order": order}, run_id=flow)
    publisher = await run(
        client,
        "publish@1",
        {
            "namespace": client.namespace,
            "event_type": "order.paid",
            "correlation_key": order,
            "payload": {"amount": 20},
        },
    )
    published = await publisher.result(timeout=RESULT_TIMEOUT_S)
    assert published["event_id"]
    assert await waiting.result(timeout=RESULT_TIMEOUT_S) == {"amount": 20}


@pytest.fixture
def ledger(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"ledger_{uuid.uuid4().hex[:8]}"
    postgres_server.psql(f"CREATE DATABASE {name}")
    postgres_server.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric(10,2), placed date);"
        "INSERT INTO orders VALUES (1, 40.00, '2024-03-01'), (2, 12.50, '2024-03-02');",
        database=name,
    )
    yield postgres_server.dsn(name)


@pytest.mark.postgres
async def test_sql_runs_a_parameterised_query(
    client: Client, cluster: Cluster, ledger: str, tmp_path: Path
) -> None:
    config = tmp_path / "connectors.yaml"
    config.write_text("connections:\n  ledger: {dsn_secret: LEDGER_DSN}\n")
    queue = f"sql-{uuid.uuid4().hex[:8]}"
    argv = [
        *(sys.executable, "-m", "workers.connectors", "--address", cluster.frontend),
        *("--task-queue", queue, "--config", str(config)),
    ]
    env = {**os.environ, "TIDEFLOW_SECRET_LEDGER_DSN": ledger}
    process = subprocess.Popen(argv, cwd=ROOT, env=env)  # noqa: ASYNC220 - starts at once
    try:
        flow = f"sql-{uuid.uuid4().hex[:8]}"
        await client.register_flow(
            {
                "name": flow,
                "version": 1,
                "task_queue": queue,
                "retry": {"maximum_attempts": 1},
                "timeouts": {"start_to_close": "10s"},
                "blocks": [{"id": "q", "external": {"block": "sql@1"}, "input": "${input}"}],
                "output": "${blocks.q.output}",
            }
        )
        query = "SELECT id, total, placed FROM orders WHERE total > $1 ORDER BY id"
        handle = await client.start_run(
            flow, {"connection": "ledger", "query": query, "params": [10]}, run_id=flow
        )
        result = await handle.result(timeout=RESULT_TIMEOUT_S)
        assert result == {
            "rows": [
                {"id": 1, "total": "40.00", "placed": "2024-03-01"},
                {"id": 2, "total": "12.50", "placed": "2024-03-02"},
            ],
            "row_count": 2,
            "truncated": False,
        }
        bad = await client.start_run(
            flow, {"connection": "ledger", "query": "SELECT nope FROM orders"}, run_id=flow + "-bad"
        )
        with pytest.raises(RunFailedError):
            await bad.result(timeout=RESULT_TIMEOUT_S)
        info = failed_event(await history(bad)).failure.application_failure_info
        assert (info.type, info.non_retryable) == ("SqlError", True)
        assert b"42703" in info.details.payloads[0].data  # undefined_column
    finally:
        process.terminate()
        process.wait(10)
