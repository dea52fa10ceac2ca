"""Temporal worker for the peer benchmark: the three scenario workflows and their activities.

Runs in the Temporal peer's environment (stdlib and temporalio only), in its own process,
like Tideflow's block worker. Every activity appends `workflow_id<TAB>ms` to the timings
file, where ms is its schedule-to-start as the server recorded it (scheduled time of this
attempt to started time); the driver reads the lines of the runs it measured.

    python temporal_worker.py --address 127.0.0.1:7233 --task-queue bench \
        --timings timings.tsv --ready worker.ready
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import TextIO

from temporalio import activity, workflow
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.worker import Worker

# Tideflow's bench flows use a 30 s start-to-close timeout on every block.
ACTIVITY_TIMEOUT = timedelta(seconds=30)
FANOUT_WIDTH = 10

_timings: TextIO | None = None


def _record_schedule_to_start() -> None:
    if _timings is None:
        return
    info = activity.info()
    waited = info.started_time - info.current_attempt_scheduled_time
    _timings.write(f"{info.workflow_id}\t{waited.total_seconds() * 1000:.3f}\n")


@activity.defn(name="noop")
async def noop() -> None:
    _record_schedule_to_start()


@activity.defn(name="echo")
async def echo(data: str) -> str:
    _record_schedule_to_start()
    return data


@workflow.defn(name="seq3")
class Seq3:
    @workflow.run
    async def run(self) -> None:
        for _ in range(3):
            await workflow.execute_activity(noop, start_to_close_timeout=ACTIVITY_TIMEOUT)


@workflow.defn(name="fanout")
class Fanout:
    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(noop, start_to_close_timeout=ACTIVITY_TIMEOUT)
        await asyncio.gather(
            *(
                workflow.execute_activity(noop, start_to_close_timeout=ACTIVITY_TIMEOUT)
                for _ in range(FANOUT_WIDTH)
            )
        )
        await workflow.execute_activity(noop, start_to_close_timeout=ACTIVITY_TIMEOUT)


@workflow.defn(name="payload")
class Payload:
    @workflow.run
    async def run(self, data: str) -> str:
        for _ in range(3):
            data = await workflow.execute_activity(
                echo, data, start_to_close_timeout=ACTIVITY_TIMEOUT
            )
        return data


async def _connect(address: str, namespace: str, timeout_s: float) -> Client:
    """A client once the server answers for the namespace (the dev server registers
    "default" a moment after it starts listening)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client = await Client.connect(address, namespace=namespace)
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=namespace)
            )
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--timings", type=Path, required=True)
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--max-concurrent", type=int, default=1000)
    args = parser.parse_args()

    global _timings  # noqa: PLW0603 - activities write here; set once before the worker runs
    client = await _connect(args.address, args.namespace, timeout_s=60)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with args.timings.open("a", buffering=1) as timings:
        _timings = timings
        worker = Worker(
            client,
            task_queue=args.task_queue,
            workflows=[Seq3, Fanout, Payload],
            activities=[noop, echo],
            # The SDK's defaults (100 each) would cap a fan-out window below what the
            # driver asks for; the server, not the worker's slots, should be the limit.
            max_concurrent_activities=args.max_concurrent,
            max_concurrent_workflow_tasks=args.max_concurrent,
        )
        async with worker:
            args.ready.write_text("ready\n")
            await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
