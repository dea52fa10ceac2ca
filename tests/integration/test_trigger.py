"""tideflow-trigger (`python -m workers.trigger`) as a real process in front of a SQLite
cluster: webhooks start and signal runs and publish events, once per delivery id, and every
refusal starts nothing."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.cluster import Cluster, running_sqlite_cluster, sdk_client
from tests.support.postgres import free_port
from tideflow.client import Client
from tideflow.errors import NotFoundError

ROOT = Path(__file__).resolve().parents[2]
HOOK_SECRET = "hook-secret-1"
API_KEY = "key-for-payments"
FLOW = "orders"


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with running_sqlite_cluster(tmp_path_factory.mktemp("trigger")) as started:
        yield started


@pytest.fixture(scope="module")
async def client(cluster: Cluster) -> AsyncIterator[Client]:
    async with sdk_client(cluster) as opened:
        # An order run: waits for its `shipped` signal, and takes `order_event` signals
        # meanwhile (each recorded in its history).
        await opened.register_flow(
            {
                "name": FLOW,
                "version": 1,
                "blocks": [{"id": "shipped", "signal": {"signal_name": "shipped"}}],
            }
        )
        yield opened


ROUTES = {
    "routes": [
        {
            "path": "/hooks/orders",
            "action": "signal_with_start",
            "flow": f"{FLOW}@1",
            "run_id": "'order-' + body.order_id",
            "signal": "order_event",
            "input": "{'order_id': body.order_id}",
            "signal_input": "body",
            "auth": {"hmac_sha256": {"secret": "ORDERS_HOOK"}},
        },
        {
            "path": "/hooks/payments",
            "action": "publish",
            "event_type": "payment.received",
            "correlation_key": "body.order_id",
            "payload": "{'amount': body.amount}",
            "auth": {"api_keys_sha256": [hashlib.sha256(API_KEY.encode()).hexdigest()]},
        },
    ]
}


@pytest.fixture(scope="module")
async def trigger(
    cluster: Cluster, client: Client, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """The trigger's base URL, once /healthz answers."""
    folder = tmp_path_factory.mktemp("trigger-service")
    routes = folder / "routes.yaml"
    routes.write_text(yaml.safe_dump(ROUTES))
    port = free_port()
    argv = [
        *(sys.executable, "-m", "workers.trigger", "--routes", str(routes)),
        *("--address", cluster.frontend, "--port", str(port)),
    ]
    log = folder / "trigger.log"
    env = {**os.environ, "TIDEFLOW_SECRET_ORDERS_HOOK": HOOK_SECRET}
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: ASYNC220 - starts at once
            argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(300):
                if process.poll() is not None:
                    pytest.fail(f"trigger exited:\n{log.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(base + "/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
        yield base
    finally:
        process.terminate()
        # uvicorn shuts down gracefully, then ends by the signal it got (as process managers
        # expect); anything else is a crash.
        assert process.wait(10) in (0, -signal.SIGTERM), log.read_text()
        assert "Application shutdown complete" in log.read_text()


def signed(body: bytes, secret: str = HOOK_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def post_order(
    base: str, order: dict[str, Any], delivery: str, *, signature: str | None = None
) -> httpx.Response:
    body = json.dumps(order).encode()
    headers = {"X-Tideflow-Delivery": delivery, "Content-Type": "application/json"}
    headers["X-Tideflow-Signature"] = signature if signature is not None else signed(body)
    async with httpx.AsyncClient() as http:
        return await http.post(base + "/hooks/orders", content=body, headers=headers)


async def signals(client: Client, run_id: str) -> list[Any]:
    handle = client.get_run(run_id)
    return [
        json.loads(e.run_signaled_event_attributes.input.payloads[0].data)
        async for e in handle.history()
        if e.HasField("run_signaled_event_attributes")
    ]


async def test_a_webhook_starts_a_run_and_a_redelivery_changes_nothing(
    client: Client, trigger: str
) -> None:
    order = uuid.uuid4().hex[:8]
    first = await post_order(trigger, {"order_id": order, "status": "placed"}, f"d-{order}-1")
    assert first.status_code == 202, first.text
    assert first.json()["run_id"] == f"order-{order}" and first.json()["started"] is True
    again = await post_order(trigger, {"order_id": order, "status": "placed"}, f"d-{order}-1")
    assert again.status_code == 202, again.text
    assert again.json()["started"] is False
    assert again.json()["execution_id"] == first.json()["execution_id"]
    assert await signals(client, f"order-{order}") == [{"order_id": order, "status": "placed"}]

    paid = await post_order(trigger, {"order_id": order, "status": "paid"}, f"d-{order}-2")
    assert paid.status_code == 202 and paid.json()["started"] is False
    assert [s["status"] for s in await signals(client, f"order-{order}")] == ["placed", "paid"]
    described = await client.get_run(f"order-{order}").describe()
    assert described.run_info.run.execution_id == first.json()["execution_id"]


async def test_publish_delivers_an_event_to_a_waiting_run(client: Client, trigger: str) -> None:
    flow = f"waits-{uuid.uuid4().hex[:8]}"
    await client.register_flow(
        {
            "name": flow,
            "version": 1,
            "blocks": [
                {"id": "paid", "event": {"event_type": "payment.received", "correlation": "input"}}
            ],
            "output": "${blocks.paid.output.payload}",
        }
    )
    order = uuid.uuid4().hex[:8]
    waiting = await client.start_run(flow, order, run_id=flow)
    async with httpx.AsyncClient() as http:
        reply = await http.post(
            trigger + "/hooks/payments",
            json={"order_id": order, "amount": 20},
            headers={"X-Tideflow-Delivery": f"p-{order}", "Authorization": f"Bearer {API_KEY}"},
        )
    assert reply.status_code == 202, reply.text
    assert reply.json() == {"event_id": f"p-{order}"}
    assert await waiting.result(timeout=30) == {"amount": 20}


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("bad json", 400, "not JSON"),
        ("unknown route", 404, "no route"),
        ("bad signature", 401, "signature"),
        ("no delivery id", 400, "X-Tideflow-Delivery"),
        ("mapping fails", 422, "order_id"),
    ],
)
async def test_a_refused_webhook_starts_nothing(
    client: Client, trigger: str, case: str, status: int, reason: str
) -> None:
    order = uuid.uuid4().hex[:8]
    body = json.dumps({"order_id": order}).encode()
    path, headers = "/hooks/orders", {"X-Tideflow-Delivery": f"r-{order}"}
    if case == "bad json":
        body = b'{"order_id": '
    elif case == "unknown route":
        path = "/hooks/nope"
    elif case == "no delivery id":
        headers = {}
    elif case == "mapping fails":
        body = json.dumps({"id": order}).encode()
    headers["X-Tideflow-Signature"] = signed(
        body, "wrong" if case == "bad signature" else HOOK_SECRET
    )
    async with httpx.AsyncClient() as http:
        reply = await http.post(trigger + path, content=body, headers=headers)
    assert reply.status_code == status, reply.text
    assert reason in reply.json()["error"]
    with pytest.raises(NotFoundError):
        await client.get_run(f"order-{order}").describe()


def test_a_wrong_route_table_exits_naming_the_key(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        yaml.safe_dump(
            {
                "routes": [
                    {"path": "/x", "action": "signal_with_start", "run_id": "body.(", "flow": "f"}
                ]
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "workers.trigger", "--routes", str(routes)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2
    assert "routes.0.run_id" in done.stderr and "CEL" in done.stderr
