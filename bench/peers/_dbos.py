"""DBOS: a fresh database on the harness's PostgreSQL, a queue-worker process, the driver."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.peers._env import ensure_env
from bench.peers._harness import HERE, peer_result, run_driver
from bench.peers._model import PeerPlan, PeerResult
from bench.peers._proc import Children, wait_ready

DATABASE = "dbos_bench"
QUEUE = "bench"
APP_NAME = "tideflow-bench"  # as in dbos_worker.py
APP_VERSION = "bench"

# DBOS's queue is polled: its worker looks for enqueued workflows every polling_interval_sec
# (DBOS's default is 1 s, which would put half a second of idle wait into every sequential
# run). 50 ms keeps that wait near Tideflow's and Temporal's dispatch, at the price of 20
# dequeue queries a second while idle, which the PostgreSQL CPU figure shows.
QUEUE_POLL_S = float(os.environ.get("TIDEFLOW_BENCH_DBOS_QUEUE_POLL_S", "0.05"))
# How often the driver asks which of its outstanding runs have finished (one query for all).
RESULT_POLL_S = float(os.environ.get("TIDEFLOW_BENCH_DBOS_RESULT_POLL_S", "0.01"))


def database_url(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"postgres_dsn must be a postgresql:// URL, not {dsn!r}")
    return urlunsplit(("postgresql", parts.netloc, f"/{database}", parts.query, ""))


def _parent_pid(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[1])


async def _fresh_database(dsn: str) -> tuple[int | None, str]:
    """Drop and create the benchmark database, so every run starts from empty tables.

    Returns the postmaster's pid (when the server runs on this machine, for its CPU) and a
    line on its durability settings.
    """
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        # The backend's parent is the postmaster; read it while the backend still lives.
        postmaster = _parent_pid(int(await conn.fetchval("SELECT pg_backend_pid()")))
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("server_version", "fsync", "synchronous_commit", "full_page_writes")
        }
    finally:
        await conn.close()
    durability = (
        f"PostgreSQL {settings['server_version']} (fsync={settings['fsync']}, "
        f"synchronous_commit={settings['synchronous_commit']}, "
        f"full_page_writes={settings['full_page_writes']})"
    )
    return postmaster, durability


async def run(plan: PeerPlan) -> PeerResult:
    if not plan.postgres_dsn:
        raise ValueError("the dbos peer needs PeerPlan.postgres_dsn")
    url = database_url(plan.postgres_dsn, DATABASE)
    env = await asyncio.to_thread(ensure_env, "dbos")
    version = env.version_of("dbos")
    workdir = plan.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    postmaster, durability = await _fresh_database(plan.postgres_dsn)
    ready = workdir / "worker.ready"
    ready.unlink(missing_ok=True)

    async with Children() as children:
        worker = await children.start(
            "worker",
            [
                env.python, HERE / "dbos_worker.py",
                "--database-url", url,
                "--queue", QUEUE,
                "--poll-s", str(QUEUE_POLL_S),
                "--ready", ready,
            ],
            log=workdir / "worker.log",
            cwd=workdir,
        )  # fmt: skip
        # The first launch creates DBOS's schema in the new database.
        await wait_ready(worker, ready, timeout_s=120)
        out = await run_driver(
            children,
            env,
            "dbos_driver.py",
            plan,
            cpu_processes={"worker": worker.pid},
            cpu_trees={"postgres": postmaster} if postmaster else {},
            peer={
                "database_url": url,
                "queue": QUEUE,
                "app_name": APP_NAME,
                "app_version": APP_VERSION,
                "result_poll_s": RESULT_POLL_S,
                "version": f"dbos {version}",
            },
        )

    notes = [
        f"dbos {version} on {durability}, a fresh database {DATABASE!r} per run",
        f"workflows enqueued by a DBOSClient in the driver process on queue {QUEUE!r} and "
        f"executed by a separate worker process (DBOS.launch; async workflows and steps, "
        f"default pickle serializer, default pool sizes), queue polling_interval_sec="
        f"{QUEUE_POLL_S} (DBOS default 1.0)",
        f"completion: the driver polls list_workflows for all outstanding runs every "
        f"{RESULT_POLL_S} s (DBOS has no completion push), so latencies include up to that",
        "schedule_to_start_ms is empty: DBOS runs steps inline in the workflow, nothing "
        "dispatches a step; the queue's enqueue-to-dequeue per workflow follows instead",
    ]
    if not postmaster:
        notes.append("no postgres CPU: the server's processes are not visible here")
    return peer_result("dbos", plan, out, notes)
