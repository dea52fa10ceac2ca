"""Temporal: `temporal server start-dev` on a SQLite file, a worker process, the driver."""

from __future__ import annotations

import asyncio
import os
import re
import uuid

from bench.peers._env import ensure_env
from bench.peers._harness import HERE, peer_result, run_driver
from bench.peers._model import PeerPlan, PeerResult
from bench.peers._proc import Children, wait_port, wait_ready
from deploy.ports import free_port

# Tideflow's SQLite backend runs WAL with synchronous=NORMAL by default; the dev server gets
# the same, so both survive a process crash and neither fsyncs every commit. Set
# TIDEFLOW_BENCH_TEMPORAL_SQLITE_SYNC=FULL to compare against Tideflow's FULL.
SQLITE_SYNCHRONOUS = os.environ.get("TIDEFLOW_BENCH_TEMPORAL_SQLITE_SYNC", "NORMAL")
WORKER_SLOTS = 1000


async def _cli_version(temporal: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        temporal, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    # "temporal version 1.9.1 (Server 1.32.0, UI 2.54.1)"
    found = re.search(r"version (\S+) \(Server (\S+?),", out.decode())
    return f"temporal CLI {found[1]} (server {found[2]})" if found else out.decode().strip()


async def run(plan: PeerPlan) -> PeerResult:
    env = await asyncio.to_thread(ensure_env, "temporal")
    temporal = str(env.bin / "temporal")
    cli = await _cli_version(temporal)
    sdk = env.version_of("temporalio")
    workdir = plan.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    database = workdir / "temporal.db"
    for stale in (database, *workdir.glob("temporal.db-*"), workdir / "activity-timings.tsv"):
        stale.unlink(missing_ok=True)
    ready = workdir / "worker.ready"
    ready.unlink(missing_ok=True)
    port = free_port()
    task_queue = f"bench-{uuid.uuid4().hex[:8]}"

    async with Children() as children:
        server = await children.start(
            "temporal-server",
            [
                temporal, "server", "start-dev",
                "--db-filename", database,
                "--headless",
                "--ip", "127.0.0.1",
                "--port", str(port),
                "--log-level", "warn",
                "--sqlite-pragma", "journal_mode=wal",
                "--sqlite-pragma", f"synchronous={SQLITE_SYNCHRONOUS}",
            ],
            log=workdir / "temporal-server.log",
            cwd=workdir,
        )  # fmt: skip
        await wait_port(server, port, timeout_s=60)
        address = f"127.0.0.1:{port}"
        worker = await children.start(
            "worker",
            [
                env.python, HERE / "temporal_worker.py",
                "--address", address,
                "--task-queue", task_queue,
                "--timings", workdir / "activity-timings.tsv",
                "--ready", ready,
                "--max-concurrent", str(WORKER_SLOTS),
            ],
            log=workdir / "worker.log",
            cwd=workdir,
        )  # fmt: skip
        await wait_ready(worker, ready, timeout_s=90)
        out = await run_driver(
            children,
            env,
            "temporal_driver.py",
            plan,
            cpu_processes={"temporal-server": server.pid, "worker": worker.pid},
            cpu_trees={},
            peer={
                "address": address,
                "namespace": "default",
                "task_queue": task_queue,
                "timings": str(workdir / "activity-timings.tsv"),
                "version": f"temporalio {sdk}, {cli}",
            },
        )

    notes = [
        f"{cli} `server start-dev`, one process, on a file-backed SQLite database "
        f"(journal_mode=WAL, synchronous={SQLITE_SYNCHRONOUS}), headless, log level warn; "
        "the dev server is Temporal's single-binary build, not its multi-service "
        "production deployment",
        f"worker in its own process: temporalio {sdk}, SDK defaults (sandboxed workflows, "
        f"eager activity dispatch) but {WORKER_SLOTS} activity and workflow-task slots",
        "driver in its own process: start_workflow, then handle.result() (long poll)",
        "schedule_to_start_ms: per activity, started_time - current_attempt_scheduled_time "
        "from activity.info() (server clock; near 0 when the activity was dispatched eagerly "
        "with the workflow task)",
    ]
    return peer_result("temporal", plan, out, notes)
