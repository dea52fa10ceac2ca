"""The bench's block worker, a process of its own running the SDK worker (`tideflow.worker`).

    python -m bench.worker --address HOST:PORT --namespace bench --task-queue Q \
        --pollers 20 --concurrency 200

It serves `noop@1` and `echo@1` (bench/scenarios.py) and notes each task's schedule-to-start
latency as the engine stamped it on the task: `started_time - current_attempt_scheduled_time`
(both set by history; the start is stamped when matching hands the task to a poll).

The load driver talks to it over stdin/stdout, one line each way:
`dump PATH` writes the samples noted since the last dump to PATH as JSON
({run_id: [milliseconds, ...]}), forgets them and answers `ok`; end of input stops it.
It prints `ready` once its pollers run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from tideflow.api.v1 import flow_service_pb2
from tideflow.worker import Worker, block

_samples: defaultdict[str, list[float]] = defaultdict(list)


@block("noop", version=1)
async def noop(value: Any) -> None:
    return None


@block("echo", version=1)
async def echo(value: Any) -> Any:
    return value


class TimedWorker(Worker):
    """The SDK worker, noting the engine's schedule and start times of every task it gets.

    The SDK hands a block only `BlockInfo`, which has no times, so this hooks the worker's
    per-task entry point."""

    async def _attempt(self, task: flow_service_pb2.PollBlockTaskResponse) -> None:
        if task.HasField("started_time"):
            scheduled = (
                task.current_attempt_scheduled_time
                if task.HasField("current_attempt_scheduled_time")
                else task.scheduled_time
            )
            nanos = task.started_time.ToNanoseconds() - scheduled.ToNanoseconds()
            _samples[task.run.run_id].append(nanos / 1e6)
        await super()._attempt(task)


def _dump(path: Path) -> None:
    path.write_text(json.dumps(_samples))
    _samples.clear()


async def _commands() -> None:
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        command, _, argument = line.strip().partition(" ")
        if command == "dump":
            _dump(Path(argument))
            print("ok", flush=True)
        elif command == "stop":
            return
        else:
            print(f"error unknown command {command!r}", flush=True)


async def main(args: argparse.Namespace) -> None:
    worker = TimedWorker(
        args.address,
        task_queue=args.task_queue,
        blocks=[noop, echo],
        namespace=args.namespace,
        identity=f"bench-worker-{args.index}",
        max_concurrent=max(args.concurrency, args.pollers),
        pollers=args.pollers,
        eager=not args.no_eager,
    )
    async with worker:
        await _commands()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--pollers", type=int, default=20, help="long polls in flight")
    parser.add_argument("--concurrency", type=int, default=200, help="blocks running at once")
    parser.add_argument("--index", type=int, default=0, help="this worker process's number")
    parser.add_argument("--no-eager", action="store_true", help="take no eager dispatch")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main(parse()))
