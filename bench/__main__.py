"""Measure a scenario against a cluster this harness starts itself.

    python -m bench seq3 --backend postgres --topology split --sequential 100 --inflight 100

`seq3` is a blueprint of three sequential no-op external blocks. The sequential phase starts
one run at a time and times start-to-complete; the closed-loop phase keeps `--inflight` runs
in flight until `--total` have completed and reports completed runs per second. PostgreSQL
runs durable (fsync and synchronous commit on). Results go to stdout and bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.support.cluster import Cluster
from tests.support.flows import BlockWorker, Client, Task
from tests.support.postgres import PostgresServer

SEQ3 = {
    "version": 1,
    "timeouts": {"start_to_close": "30s"},
    "blocks": [
        {"id": "a", "external": {"block": "noop@1"}},
        {"id": "b", "needs": ["a"], "external": {"block": "noop@1"}},
        {"id": "c", "needs": ["b"], "external": {"block": "noop@1"}},
    ],
}


async def noop(task: Task) -> Any:
    return None


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _one(client: Client, flow: str) -> float:
    started = time.perf_counter()
    run_id, _ = await client.start(flow, None, run_id=f"bench-{uuid.uuid4().hex}")
    await client.close_event(run_id, timeout_s=120)
    return time.perf_counter() - started


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="tideflow-bench-"))
    postgres = None
    if args.backend == "postgres":
        postgres = PostgresServer(durable=True).start()
        postgres.psql("CREATE DATABASE bench")
        persistence: dict[str, Any] = {
            "backend": "postgres",
            "postgres": {"dsn": postgres.dsn("bench"), "max_connections": 20},
        }
    else:
        persistence = {"backend": "sqlite", "sqlite": {"path": str(root / "bench.db")}}
    cluster = Cluster(root, persistence, split=args.topology == "split", shard_count=args.shards)
    cluster.schema_setup()
    await cluster.start()
    client = Client(cluster.frontend, namespace="bench")
    try:
        await client.ensure_namespace()
        flow = f"seq3_{uuid.uuid4().hex[:6]}"
        queue = f"bench-{uuid.uuid4().hex[:6]}"
        await client.register({**SEQ3, "name": flow, "task_queue": queue})
        async with BlockWorker(
            cluster.frontend, queue, {"noop@1": noop}, namespace="bench", concurrency=args.pollers
        ):
            for _ in range(args.warmup):
                await _one(client, flow)
            sequential = [await _one(client, flow) for _ in range(args.sequential)]

            latencies: list[float] = []
            started = time.perf_counter()
            remaining = args.total

            async def lane() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    latencies.append(await _one(client, flow))

            await asyncio.gather(*(lane() for _ in range(args.inflight)))
            elapsed = time.perf_counter() - started
        return {
            "scenario": "seq3",
            "backend": args.backend,
            "topology": args.topology,
            "shards": args.shards,
            "sequential": {
                "runs": len(sequential),
                "median_ms": round(statistics.median(sequential) * 1000, 2),
                "p95_ms": round(_percentile(sequential, 0.95) * 1000, 2),
            },
            "closed_loop": {
                "inflight": args.inflight,
                "completed": len(latencies),
                "seconds": round(elapsed, 2),
                "runs_per_second": round(len(latencies) / elapsed, 1),
                "median_ms": round(statistics.median(latencies) * 1000, 2),
                "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
            },
        }
    finally:
        await client.close()
        cluster.stop()
        if postgres is not None:
            postgres.remove()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenario", choices=["seq3"])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--topology", choices=["dev", "split"], default="split")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--inflight", type=int, default=100)
    parser.add_argument("--total", type=int, default=1000)
    parser.add_argument("--pollers", type=int, default=50)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (out / f"{stamp}-{args.scenario}-{args.backend}-{args.topology}.json").write_text(
        json.dumps(report, indent=2)
    )
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
