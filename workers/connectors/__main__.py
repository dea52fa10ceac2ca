"""Run the connector worker: `python -m workers.connectors [--config connectors.yaml]`.

Serves `http@1`, `sql@1` and `publish@1` on `--task-queue` (default `connectors`) until SIGTERM
or SIGINT, then drains. `--health-port` serves GET /health (each target host's circuit breaker)
on 127.0.0.1. The YAML config names the PostgreSQL connections `sql@1` may use:

    connections:
      ledger: {dsn_secret: LEDGER_DSN}        # or dsn: postgresql://...
    breaker: {failures: 5, recovery_s: 30}

Secrets (`${secret:NAME}` in http@1 headers and query values, `dsn_secret`) come from env
`TIDEFLOW_SECRET_<NAME>` or `--secrets-dir/<NAME>`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from tideflow import Worker, block
from workers.connectors.breakers import Breakers
from workers.connectors.health import app
from workers.connectors.http import HttpBlock
from workers.connectors.publish import PublishBlock
from workers.connectors.secrets import Secrets
from workers.connectors.sql import SqlBlock


def _block(name: str, handler: Callable[[Any], Awaitable[Any]]) -> Callable[..., Any]:
    """`handler` as block type `<name>@1`."""

    @block(name, version=1)
    async def run(value: Any) -> Any:
        return await handler(value)

    return run


def _config(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise SystemExit(f"{path}: the config is a mapping (connections, breaker)")
    return loaded


async def serve(args: argparse.Namespace) -> None:
    config = _config(args.config)
    breaker = config.get("breaker") or {}
    breakers = Breakers(
        threshold=int(breaker.get("failures", args.breaker_failures)),
        recovery_s=float(breaker.get("recovery_s", args.breaker_recovery_s)),
    )
    secrets = Secrets(Path(args.secrets_dir) if args.secrets_dir else None)
    sql = SqlBlock(dict(config.get("connections") or {}), secrets)
    publish = PublishBlock(args.address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with httpx.AsyncClient(follow_redirects=False) as http_client:
        http = HttpBlock(http_client, breakers, secrets)
        worker = Worker(
            args.address,
            task_queue=args.task_queue,
            namespace=args.namespace,
            identity=args.identity or None,
            max_concurrent=args.max_concurrent,
            blocks=[_block("http", http), _block("sql", sql), _block("publish", publish)],
        )
        health: asyncio.Task[None] | None = None
        server: uvicorn.Server | None = None
        if args.health_port:
            server = uvicorn.Server(
                uvicorn.Config(
                    app(breakers), host="127.0.0.1", port=args.health_port, log_level="warning"
                )
            )
            health = asyncio.create_task(server.serve())
        runner = asyncio.create_task(worker.run())
        await stop.wait()
        await worker.shutdown(grace_s=args.drain_timeout_s)
        await runner
        if server is not None and health is not None:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await health
    await sql.close()
    await publish.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.connectors", description=__doc__)
    parser.add_argument("--address", default="127.0.0.1:7233", help="frontend host:port")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--task-queue", default="connectors")
    parser.add_argument("--identity", default="")
    parser.add_argument("--max-concurrent", type=int, default=50)
    parser.add_argument("--config", help="YAML: connections, breaker")
    parser.add_argument("--secrets-dir", help="a folder of secret files, one per name")
    parser.add_argument("--health-port", type=int, default=0, help="serve GET /health here")
    parser.add_argument("--breaker-failures", type=int, default=5)
    parser.add_argument("--breaker-recovery-s", type=float, default=30.0)
    parser.add_argument("--drain-timeout-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
