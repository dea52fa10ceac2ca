"""A block worker in its own process, for tests that kill workers.

    python -m tests.support.worker_process ADDRESS NAMESPACE TASK_QUEUE IDENTITY MODE

The block `work@1` prints `started <run_id> <attempt>` and then never finishes: with MODE
`heartbeat` it heartbeats every 0.2 s, with `silent` it does not. With MODE `steps` the worker
runs `step@1` instead, without eager dispatch: it prints `started <run_id> <block_id>
<attempt> <wall time>`, sleeps its input's `sleep` seconds and returns its input. SIGTERM
stops the worker gracefully (its polls end, running blocks finish).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import Any

from tideflow import Worker, block
from tideflow.worker import context


def _work(mode: str) -> Any:
    @block("work", version=1)
    async def work(value: Any) -> Any:
        info = context().info
        print(f"started {info.run_id} {info.attempt}", flush=True)
        while True:
            if mode == "heartbeat":
                await context().heartbeat({"progress": "working"})
            await asyncio.sleep(0.2)

    return work


@block("step", version=1)
async def _step(value: Any) -> Any:
    info = context().info
    print(f"started {info.run_id} {info.block_id} {info.attempt} {time.time():.6f}", flush=True)
    await asyncio.sleep(value["sleep"])
    return value


async def main(address: str, namespace: str, task_queue: str, identity: str, mode: str) -> None:
    steps = mode == "steps"
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Worker(
        address,
        task_queue=task_queue,
        blocks=[_step] if steps else [_work(mode)],
        namespace=namespace,
        identity=identity,
        # Eager dispatch would keep a run on one worker by itself; `steps` tests the routing.
        eager=not steps,
        max_concurrent=50 if steps else 10,
    ):
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
