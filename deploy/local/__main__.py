"""Run a local cluster until Ctrl-C.

    python -m deploy.local up --topology split --backend postgres
    python -m deploy.local up --topology cluster --history 2 --matching 2 --backend cassandra

Starts the databases the topology needs (a durable throwaway PostgreSQL; a single-node
Cassandra for `--backend cassandra`), sets the schema up, starts the server processes, prints
where everything is, and on Ctrl-C or SIGTERM stops it all and removes its files.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import cast

from deploy.local.deployment import (
    BACKENDS,
    DEFAULT_BACKEND,
    TOPOLOGIES,
    Backend,
    Deployment,
    Topology,
)


async def up(args: argparse.Namespace) -> None:
    topology = cast(Topology, args.topology)
    deployment = Deployment(
        topology,
        cast(Backend, args.backend or DEFAULT_BACKEND[topology]),
        shard_count=args.shards,
        history_processes=args.history,
        matching_processes=args.matching,
        cassandra_nodes=args.cassandra_nodes,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await deployment.start()
        assert deployment.cluster is not None
        print(f"frontend   {deployment.frontend}")
        if deployment.postgres is not None:
            print(f"postgres   {deployment.postgres.dsn('tideflow')}")
        if deployment.cassandra is not None and (ports := deployment.cassandra.ports()):
            print(f"cassandra  127.0.0.1:{ports.native}")
        if deployment.ring is not None:
            ring = deployment.ring
            addresses = ", ".join(ring.addresses)
            print(f"cassandra  {addresses} port {ring.native_port} (RF {ring.size})")
        for name, process in deployment.cluster.processes.items():
            print(f"{name:<10} pid {process.pid}, log {process.log_path}")
        print(f"config     {deployment.cluster.config}")
        print("Ctrl-C to stop and remove everything", flush=True)
        await stop.wait()
    finally:
        deployment.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start a local cluster and keep it up until Ctrl-C")
    start.add_argument("--topology", choices=TOPOLOGIES, default="split")
    start.add_argument(
        "--backend", choices=BACKENDS, default=None, help="default: sqlite for dev, else postgres"
    )
    start.add_argument("--history", type=int, default=1, help="history processes (cluster)")
    start.add_argument("--matching", type=int, default=1, help="matching processes (cluster)")
    start.add_argument("--shards", type=int, default=16, help="history shards")
    start.add_argument(
        "--cassandra-nodes", type=int, default=1, help="a ring of N nodes on 127.0.0.1-N (RF N)"
    )
    args = parser.parse_args(argv)
    try:
        asyncio.run(up(args))
    except ValueError as e:
        print(f"python -m deploy.local: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
