"""Load driver for the Temporal peer (stdlib and temporalio only; run by `run_peer`).

A run is `client.start_workflow(...)` and then `handle.result()`, both timed together.

    python temporal_driver.py --plan plan.json --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import random
import string
from collections import defaultdict
from pathlib import Path

from _loadgen import Plan, drive, write_result
from temporalio.client import Client

PAYLOAD_BYTES = 64 * 1024


def payload() -> str:
    # Random letters, so that no layer (SQLite pages, PostgreSQL TOAST) compresses it away.
    rng = random.Random(64)
    return "".join(rng.choices(string.ascii_letters + string.digits, k=PAYLOAD_BYTES))


def schedule_to_start(timings: Path) -> dict[str, list[float]]:
    by_run: dict[str, list[float]] = defaultdict(list)
    if timings.exists():
        for line in timings.read_text().splitlines():
            run_id, _, ms = line.partition("\t")
            if ms:
                by_run[run_id].append(float(ms))
    return by_run


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    plan = Plan.load(args.plan)
    peer = plan.peer
    client = await Client.connect(peer["address"], namespace=peer["namespace"])
    task_queue = peer["task_queue"]
    data = payload() if plan.scenario == "payload" else None

    async def run(run_id: str) -> None:
        handle = await client.start_workflow(
            plan.scenario,
            args=[data] if data is not None else [],
            id=run_id,
            task_queue=task_queue,
        )
        result = await handle.result()
        if data is not None and result != data:
            raise RuntimeError(f"{run_id}: the payload came back altered")

    sequential_ms, windows = await drive(plan, run)

    timings = schedule_to_start(Path(peer["timings"]))
    for window in windows:
        window.schedule_to_start_ms = [ms for rid in window.completed_ids for ms in timings[rid]]
    write_result(
        args.out,
        version=peer["version"],
        sequential_ms=sequential_ms,
        windows=windows,
        notes=[],
    )


if __name__ == "__main__":
    asyncio.run(main())
