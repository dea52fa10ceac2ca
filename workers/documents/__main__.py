"""Run a document worker: `python -m workers.documents --task-queue cpu|ml`.

`cpu` serves intake, the extractors, validate, notify and the archive blocks (reserve, index,
file, release, unindex); `ml` serves classify. SIGINT/SIGTERM stop polling and let running
blocks finish.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from tideflow.worker import Worker
from workers.documents.blocks import BLOCKS_BY_QUEUE


async def _serve(address: str, namespace: str, task_queue: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Worker(
        address, task_queue=task_queue, blocks=BLOCKS_BY_QUEUE[task_queue], namespace=namespace
    ):
        logging.info("document worker on %s/%s at %s", namespace, task_queue, address)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.documents", description=__doc__)
    parser.add_argument("--task-queue", required=True, choices=sorted(BLOCKS_BY_QUEUE))
    parser.add_argument("--address", default="127.0.0.1:7233", help="frontend host:port")
    parser.add_argument("--namespace", default="demo")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_serve(args.address, args.namespace, args.task_queue))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
