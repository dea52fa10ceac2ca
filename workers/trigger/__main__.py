"""Run tideflow-trigger: `python -m workers.trigger --routes routes.yaml [--port 8080]`.

Maps authenticated webhooks to SignalWithStartRun or PublishEvent by the route table (see
workers/trigger/README.md). A route table with errors exits 2, naming each offending key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from workers.trigger.app import Clients, build
from workers.trigger.routes import RouteTableError, load, secret


async def serve(app: Starlette, clients: Clients, host: str, port: int) -> None:
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info"))
    try:
        await server.serve()  # handles SIGTERM and SIGINT: stops accepting, finishes requests
    finally:
        await clients.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.trigger", description=__doc__)
    parser.add_argument("--routes", required=True, help="the route table (YAML)")
    parser.add_argument("--address", default="127.0.0.1:7233", help="frontend host:port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--secrets-dir", help="a folder of secret files, one per name")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    directory = Path(args.secrets_dir) if args.secrets_dir else None
    try:
        table = load(Path(args.routes))
        names = {r.auth.hmac_sha256.secret for r in table.routes if r.auth and r.auth.hmac_sha256}
        secrets = {name: secret(name, directory) for name in names}
    except RouteTableError as e:
        print(f"tideflow-trigger: {e}", file=sys.stderr)
        return 2
    clients = Clients(args.address)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(build(table, clients, secrets), clients, args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
