"""Load driver for the DBOS peer (stdlib and dbos only; run by `run_peer`).

A run is `DBOSClient.enqueue_async(...)` on the worker's queue, timed until the driver sees
the workflow finished. DBOS has no push notification of a workflow's completion (its own
handles poll the system database, one query per handle every second by default), so one
loop here asks `list_workflows` about every outstanding run each `result_poll_s` and
completes their waiters: the latency includes up to one such interval, and the load on
PostgreSQL stays one query per interval however many runs are in flight.

    python dbos_driver.py --plan plan.json --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import string
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _loadgen import Plan, Window, drive, write_result
from dbos import DBOSClient, EnqueueOptions

PAYLOAD_BYTES = 64 * 1024
FINISHED = ["SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"]


def payload() -> str:
    # Random letters, so that PostgreSQL's TOAST compression cannot shrink it away.
    rng = random.Random(64)
    return "".join(rng.choices(string.ascii_letters + string.digits, k=PAYLOAD_BYTES))


class Completions:
    """Waiters for enqueued workflows, completed by one batched status poll."""

    def __init__(self, client: DBOSClient, interval_s: float) -> None:
        self._client = client
        self._interval_s = interval_s
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        # enqueue -> dequeue per workflow (ms), from the status rows the poll reads anyway.
        self.queue_delay_ms: dict[str, float] = {}

    def expect(self, workflow_id: str) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[workflow_id] = future
        return future

    def forget(self, workflow_id: str) -> None:
        self._waiters.pop(workflow_id, None)

    async def poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            if not self._waiters:
                continue
            try:
                rows = await self._client.list_workflows_async(
                    workflow_ids=list(self._waiters), status=FINISHED, load_input=False
                )
            except Exception as e:  # a lost connection: say so, and poll again
                print(f"completion poll failed: {e!r}", file=sys.stderr)
                continue
            for row in rows:
                future = self._waiters.pop(row.workflow_id, None)
                if future is None or future.done():
                    continue
                if row.created_at is not None and row.dequeued_at is not None:
                    self.queue_delay_ms[row.workflow_id] = float(row.dequeued_at - row.created_at)
                if row.status == "SUCCESS":
                    future.set_result(row.output)
                else:
                    future.set_exception(RuntimeError(f"{row.status}: {row.error}"))


def queue_delay_note(windows: list[Window], delays: dict[str, float]) -> list[str]:
    notes = []
    for w in windows:
        values = sorted(delays[rid] for rid in w.completed_ids if rid in delays)
        if values:
            p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
            notes.append(
                f"{w.label}: enqueue-to-dequeue median {statistics.median(values):.1f} ms, "
                f"p99 {p99:.1f} ms"
            )
    return notes


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    plan = Plan.load(args.plan)
    peer = plan.peer
    # enqueue_async and list_workflows_async run the client's blocking calls in the loop's
    # default executor; give it (and the client's pool) room for the open-loop rates.
    threads = int(peer.get("client_threads", 32))
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=threads))
    client = DBOSClient(
        system_database_url=peer["database_url"],
        application_name=peer["app_name"],
        system_database_pool_size=threads,
    )
    completions = Completions(client, float(peer["result_poll_s"]))
    poller = asyncio.create_task(completions.poll_forever())
    data = payload() if plan.scenario == "payload" else None

    async def run(run_id: str) -> None:
        options: EnqueueOptions = {
            "workflow_name": plan.scenario,
            "queue_name": peer["queue"],
            "workflow_id": run_id,
            "app_version": peer["app_version"],
        }
        done = completions.expect(run_id)
        try:
            if data is None:
                await client.enqueue_async(options)
            else:
                await client.enqueue_async(options, data)
            result = await done
        finally:
            completions.forget(run_id)
        if data is not None and result != data:
            raise RuntimeError(f"{run_id}: the payload came back altered")

    try:
        sequential_ms, windows = await drive(plan, run)
    finally:
        poller.cancel()
    notes = queue_delay_note(windows, completions.queue_delay_ms)
    write_result(
        args.out,
        version=peer["version"],
        sequential_ms=sequential_ms,
        windows=windows,
        notes=notes,
    )
    client.destroy()


if __name__ == "__main__":
    asyncio.run(main())
