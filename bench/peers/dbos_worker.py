"""DBOS worker for the peer benchmark: the three scenario workflows and their steps.

Runs in the DBOS peer's environment (stdlib and dbos only), in its own process: it launches
DBOS on the system database, registers the benchmark queue, and executes the workflows the
driver enqueues there with a DBOSClient (DBOS's "queue worker" deployment). Workflows and
steps are `async def`, so the fan-out's ten steps run concurrently (asyncio.gather, started
in a fixed order as DBOS requires).

    python dbos_worker.py --database-url postgresql://.../dbos_bench --queue bench \
        --poll-s 0.05 --ready worker.ready
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from pathlib import Path

from dbos import DBOS

APP_NAME = "tideflow-bench"
APP_VERSION = "bench"
FANOUT_WIDTH = 10


@DBOS.step(name="noop")
async def noop() -> None:
    return None


@DBOS.step(name="echo")
async def echo(data: str) -> str:
    return data


@DBOS.workflow(name="seq3")
async def seq3() -> None:
    for _ in range(3):
        await noop()


@DBOS.workflow(name="fanout")
async def fanout() -> None:
    await noop()
    await asyncio.gather(*(noop() for _ in range(FANOUT_WIDTH)))
    await noop()


@DBOS.workflow(name="payload")
async def payload(data: str) -> str:
    for _ in range(3):
        data = await echo(data)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--poll-s", type=float, required=True)
    parser.add_argument("--ready", type=Path, required=True)
    args = parser.parse_args()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    DBOS(
        config={
            "name": APP_NAME,
            "application_version": APP_VERSION,
            "system_database_url": args.database_url,
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    try:
        DBOS.register_queue(
            args.queue, polling_interval_sec=args.poll_s, on_conflict="always_update"
        )
        args.ready.write_text("ready\n")
        stop.wait()
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    main()
