"""The example worker's blocks: the polyglot demo's (`py.summarize@1`) and the worker
conformance blocks (`conf.*`, docs/workers.md) that the Go and TypeScript examples serve too."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from tideflow import block
from tideflow.errors import ApplicationError
from tideflow.worker import BlockCancelled, context


@block("py.summarize", version=1)
async def summarize(value: dict[str, Any]) -> dict[str, Any]:
    text = str(value.get("text", ""))
    end = text.find(". ")
    return {"first_sentence": text if end < 0 else text[: end + 1], "worker": "python"}


@block("conf.echo", version=1)
async def echo(value: Any) -> Any:
    return value


@block("conf.flaky", version=1)
async def flaky(value: dict[str, Any]) -> dict[str, Any]:
    attempt = context().info.attempt
    if attempt <= int(value.get("fail_attempts", 0)):
        raise ApplicationError(f"attempt {attempt} failed", type="Flaky")
    return {"attempt": attempt}


@block("conf.fatal", version=1)
async def fatal(value: dict[str, Any]) -> Any:
    raise ApplicationError(
        f"fatal: {value.get('reason', '')}", value, type="Fatal", non_retryable=True
    )


@block("conf.wait_cancel", version=1)
async def wait_cancel(value: Any) -> Any:
    beats = 0
    while True:
        beats += 1
        await context().heartbeat({"beats": beats})
        await asyncio.sleep(0.1)


@block("conf.stall", version=1)
async def stall(value: Any) -> Any:
    info = context().info
    if info.attempt >= 2:
        return {"attempt": info.attempt, "resumed": info.heartbeat_details}
    await context().heartbeat({"progress": 1})
    await asyncio.Event().wait()  # until the worker cancels it at shutdown
    raise BlockCancelled("unreachable")


@block("conf.big", version=1)
async def big(value: dict[str, Any]) -> dict[str, Any]:
    return {"blob": "x" * int(value["size"])}


@block("conf.slow", version=1)
def slow(value: dict[str, Any]) -> dict[str, Any]:
    # A sync block in the worker's threads: a shutdown lets it finish (up to the drain timeout).
    # The heartbeat says it is running here (a start the server recorded may still be on its
    # way to the worker).
    context().heartbeat_sync({"running": True})
    time.sleep(int(value["ms"]) / 1000)
    return {"slept_ms": value["ms"]}


DEMO: list[Callable[..., Any]] = [summarize]
CONFORMANCE: list[Callable[..., Any]] = [echo, flaky, fatal, wait_cancel, stall, big, slow]
