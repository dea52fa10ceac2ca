"""The day-long soak, compressed (`--soak MINUTES`): one open loop at a steady rate (default
116 runs/s, 10 million a day) for the whole duration, on a namespace whose retention is short
(`--retention`, default 5 minutes), so that closed runs are deleted while the load goes on.

Every interval (`--soak-interval-s`, default 60 s) the probes read CPU, PostgreSQL's counters,
its size on disk and the live and dead rows of each table. The report has a row per interval:
runs started and completed, p50/p99 start-to-complete of the runs started in it, CPU ms per
run, commits per run, the database's size and its rows by table.

It passes when:
- **latency holds**: every interval's p99 is within 1.5x of the first's (the first interval
  whose runs all completed; the warm-up's are not counted);
- **the database stops growing**: over the second half of the soak (and from one interval after
  retention started deleting), the size at the last interval is within 10% of the smallest
  size in that span. PostgreSQL reuses the space of deleted rows once autovacuum has passed;
  it does not give it back to the disk, so the size levels off rather than falling.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench import load
from bench.harness import BenchError, Setup
from bench.probes import CpuProbe, PostgresProbe, Tracked
from bench.report import distribution
from bench.scenarios import SCENARIOS
from bench.tideflow import WorkerProcesses, connect_driver, prepare
from deploy.local.deployment import DATABASE, Deployment

logger = logging.getLogger("bench.soak")

P99_GROWTH_LIMIT = 1.5
SIZE_GROWTH_LIMIT = 0.10
TABLE_ROWS_SHOWN = 50


@dataclass(frozen=True)
class SoakPlan:
    rate: float = 116.0
    minutes: float = 30.0
    interval_s: float = 60.0
    retention_s: float = 300.0
    quiesce_s: float = 60.0

    @property
    def intervals(self) -> int:
        return max(1, math.ceil(self.minutes * 60 / self.interval_s))


@dataclass
class Interval:
    index: int
    started: int
    completed: int
    """Runs (any start time) that completed inside the interval."""
    failed: int
    p50_ms: float | None
    p99_ms: float | None
    cpu_ms_per_run: float | None
    commits_per_run: float | None
    db_bytes: int
    live_rows: dict[str, int] = field(default_factory=dict)
    dead_rows: int = 0


@dataclass
class SoakResult:
    plan: dict[str, Any]
    intervals: list[Interval]
    p99_ok: bool
    p99_baseline_ms: float | None
    size_ok: bool
    size_note: str
    unfinished: int


class TableRows:
    """Live and dead rows per table of the cluster's database (pg_stat_user_tables: the
    statistics collector's estimates, refreshed by autovacuum and analyze)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._connection: asyncpg.Connection | None = None

    async def read(self) -> tuple[dict[str, int], int]:
        if self._connection is None:
            self._connection = await asyncpg.connect(self.dsn)
        rows = await self._connection.fetch(
            "SELECT relname, n_live_tup, n_dead_tup FROM pg_stat_user_tables ORDER BY relname"
        )
        live = {str(r["relname"]): int(r["n_live_tup"]) for r in rows}
        return live, sum(int(r["n_dead_tup"]) for r in rows)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


@dataclass
class _Reading:
    cpu: dict[str, float]
    db: dict[str, int]
    live: dict[str, int]
    dead: int


async def soak(
    run_once: load.RunOnce,
    plan: SoakPlan,
    *,
    cpu: CpuProbe,
    postgres: PostgresProbe,
    tables: TableRows,
    prefix: str,
) -> SoakResult:
    loop = asyncio.get_running_loop()
    samples: list[load.Sample] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(due: float) -> None:
        sample = load.Sample(f"{prefix}-{len(samples)}", due, loop.time())
        samples.append(sample)
        try:
            sample.ok = bool(await run_once(sample.key))
        except Exception as e:  # a failed run is a result
            logger.debug("run %s failed: %r", sample.key, e)
        finally:
            sample.closed = loop.time()

    async def read() -> _Reading:
        live, dead = await tables.read()
        return _Reading(cpu.read(), await postgres.read(), live, dead)

    readings = [await read()]
    t0 = loop.time()
    edges = [t0 + (i + 1) * plan.interval_s for i in range(plan.intervals)]

    async def probe_at_edges() -> None:
        for number, edge in enumerate(edges):
            await asyncio.sleep(max(0.0, edge - loop.time()))
            readings.append(await read())
            logger.info(
                "soak interval %d/%d: %s bytes, %d runs started",
                number + 1,
                len(edges),
                f"{readings[-1].db.get('bytes', 0):,}",
                sum(1 for s in samples if edge - plan.interval_s <= s.due < edge),
            )

    prober = asyncio.create_task(probe_at_edges())
    try:
        for i in itertools.count():
            due = t0 + i / plan.rate
            if due >= edges[-1]:
                break
            await asyncio.sleep(max(0.0, due - loop.time()))
            task = asyncio.create_task(one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await prober
    finally:
        if not prober.done():
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=plan.quiesce_s)
            for task in pending:
                task.cancel()
    return summarise(plan, samples, readings, t0)


def summarise(
    plan: SoakPlan, samples: list[load.Sample], readings: list[_Reading], t0: float
) -> SoakResult:
    intervals: list[Interval] = []
    for index in range(len(readings) - 1):
        start, end = t0 + index * plan.interval_s, t0 + (index + 1) * plan.interval_s
        begun = [s for s in samples if start <= s.due < end]
        done = [s for s in samples if s.ok and s.closed is not None and start <= s.closed < end]
        latencies = [(s.closed - s.due) * 1000 for s in begun if s.ok and s.closed is not None]
        found = distribution(latencies)
        before, after = readings[index], readings[index + 1]
        cpu_s = sum(CpuProbe.delta(before.cpu, after.cpu).values())
        commits = after.db.get("commits", 0) - before.db.get("commits", 0)
        intervals.append(
            Interval(
                index=index,
                started=len(begun),
                completed=len(done),
                failed=sum(1 for s in begun if s.closed is not None and not s.ok),
                p50_ms=found.p50 if found else None,
                p99_ms=found.p99 if found else None,
                cpu_ms_per_run=round(cpu_s * 1000 / len(done), 2) if done else None,
                commits_per_run=round(commits / len(done), 2) if done else None,
                db_bytes=after.db.get("bytes", 0),
                live_rows=after.live,
                dead_rows=after.dead,
            )
        )
    p99_ok, baseline = _p99_holds(intervals)
    size_ok, note = _size_levels_off(intervals, plan)
    return SoakResult(
        plan={
            "rate": plan.rate,
            "minutes": plan.minutes,
            "interval_s": plan.interval_s,
            "retention_s": plan.retention_s,
        },
        intervals=intervals,
        p99_ok=p99_ok,
        p99_baseline_ms=baseline,
        size_ok=size_ok,
        size_note=note,
        unfinished=sum(1 for s in samples if s.closed is None),
    )


def _p99_holds(intervals: list[Interval]) -> tuple[bool, float | None]:
    timed = [i for i in intervals if i.p99_ms is not None]
    if not timed:
        return False, None
    baseline = timed[0].p99_ms
    assert baseline is not None
    return all((i.p99_ms or 0.0) <= P99_GROWTH_LIMIT * baseline for i in timed), baseline


def _size_levels_off(intervals: list[Interval], plan: SoakPlan) -> tuple[bool, str]:
    """Deletion starts `retention_s` after the first runs closed, and autovacuum makes the
    space reusable some intervals later. Over the second half of the soak, or from one
    interval after deletion started if that is later, the size may not grow by more than
    10% over its smallest value."""
    settled = max(math.ceil(plan.retention_s / plan.interval_s) + 1, len(intervals) // 2)
    after = intervals[settled:]
    if len(after) < 2:
        return False, (
            f"too short to tell: retention deletes from interval {settled}, and the soak has"
            f" {len(intervals)}"
        )
    low = min(i.db_bytes for i in after)
    last = after[-1].db_bytes
    growth = (last - low) / low if low else math.inf
    note = (
        f"from interval {settled} on (retention deleting): smallest {low / 2**20:,.1f} MiB,"
        f" last {last / 2**20:,.1f} MiB ({growth:+.1%})"
    )
    return growth <= SIZE_GROWTH_LIMIT, note


def markdown(result: SoakResult, *, title: str, notes: str = "") -> str:
    plan = result.plan
    # The tables runs fill (the others hold a handful of rows: members, shards, flows).
    tables = sorted(
        {t for i in result.intervals for t, n in i.live_rows.items() if n >= TABLE_ROWS_SHOWN}
    )
    out = [
        f"# {title}",
        "",
        f"{plan['rate']:g} runs/s for {plan['minutes']:g} min, a row per {plan['interval_s']:g}"
        f" s; namespace retention {plan['retention_s']:g} s. {notes}",
        "",
        f"- **p99 within {P99_GROWTH_LIMIT}x of the first interval's"
        f" ({_ms(result.p99_baseline_ms)} ms): {'yes' if result.p99_ok else 'NO'}**",
        f"- **database size levels off: {'yes' if result.size_ok else 'NO'}** ({result.size_note})",
        f"- runs still open at the end: {result.unfinished}",
        "",
        "| interval | started | completed | failed | p50 ms | p99 ms | CPU ms/run | PG commits/run"
        " | DB MiB | dead rows | " + " | ".join(tables) + " |",
        "|" + "---|" * (10 + len(tables)),
    ]
    for i in result.intervals:
        out.append(
            f"| {i.index + 1} | {i.started} | {i.completed} | {i.failed} | {_ms(i.p50_ms)}"
            f" | {_ms(i.p99_ms)} | {_ms(i.cpu_ms_per_run, 2)} | {_ms(i.commits_per_run, 2)}"
            f" | {i.db_bytes / 2**20:,.1f} | {i.dead_rows:,} | "
            + " | ".join(f"{i.live_rows.get(t, 0):,}" for t in tables)
            + " |"
        )
    return "\n".join(out) + "\n"


def _ms(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


async def bench_soak(
    scenario_name: str, plan: SoakPlan, setup: Setup, workdir: Path
) -> tuple[SoakResult, str]:
    """The soak on a deployment started here (`setup.topology` on `setup.backend`, which
    must be PostgreSQL); the result and a line on where it ran."""
    if setup.backend != "postgres" or setup.address is not None:
        raise BenchError("the soak runs on a deployment it starts, on postgres")
    scenario = SCENARIOS[scenario_name]
    deployment = Deployment(
        setup.topology,
        setup.backend,
        shard_count=setup.shards,
        history_processes=setup.history,
        matching_processes=setup.matching,
        settings={},
        max_connections=setup.max_connections,
    )
    workers = WorkerProcesses(workdir)
    driver = None
    postgres = tables = None
    try:
        logger.info("starting %s topology on %s", setup.topology, setup.backend)
        await deployment.start()
        assert deployment.postgres is not None
        address = deployment.frontend
        groups = [
            Tracked(name, [pid], with_children=name == "postgres")
            for name, pid in deployment.pids().items()
        ]
        postgres = PostgresProbe(deployment.postgres.dsn("postgres"), DATABASE)
        tables = TableRows(deployment.postgres.dsn(DATABASE))
        flow, queue, info = await prepare(address, scenario, retention_s=plan.retention_s)
        await workers.start(
            address,
            queue,
            processes=max(setup.worker_processes, scenario.worker_processes),
            pollers=setup.worker_pollers,
            concurrency=setup.worker_concurrency,
            eager=scenario.eager,
        )
        groups += [Tracked("worker", workers.pids), Tracked("driver", [os.getpid()])]
        driver = await connect_driver(setup.driver, address, flow, scenario.run_input())
        result = await soak(
            driver.run,
            plan,
            cpu=CpuProbe(groups),
            postgres=postgres,
            tables=tables,
            prefix=uuid.uuid4().hex[:8],
        )
    except Exception:
        sys.stderr.write(deployment.logs() + "\n")
        raise
    finally:
        if driver is not None:
            await driver.close()
        await workers.stop()
        for probe in (postgres, tables):
            if probe is not None:
                await probe.close()
        deployment.stop()
    where = (
        f"{scenario_name} on the {setup.topology} topology, {setup.backend}"
        f" (Tideflow {info.server_version}, {info.history_shard_count} shards)"
    )
    return result, where
