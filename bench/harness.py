"""One bench invocation: start (or reach) Tideflow, measure it on the plan, then each requested
peer on the same plan, one after another, and build the report."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field, replace
from itertools import count
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from bench import load
from bench.hostloss import Fault, HostKiller
from bench.probes import CpuProbe, PostgresProbe, Tracked, jit_seconds
from bench.report import Report, SystemRun, Window, distribution, summarise_system
from bench.scenarios import SCENARIOS
from bench.tideflow import Driver, WorkerProcesses, connect_driver, prepare, sticky_counts
from deploy.local.deployment import DATABASE, Backend, Deployment, Topology
from deploy.local.postgres import PostgresServer
from deploy.ports import free_port
from tideflow.api.v1.operator_service_pb2 import GetClusterInfoResponse as ServerInfo

logger = logging.getLogger("bench")

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Plan:
    """The load plan every system runs (mirrors `bench.peers.PeerPlan`)."""

    scenario: str
    warmup_runs: int = 10
    sequential_runs: int = 100
    closed_inflight: list[int] = field(default_factory=list)
    open_rates: list[float] = field(default_factory=list)
    warmup_s: float = 3.0
    window_s: float = 15.0
    drain_s: float = 30.0
    quiesce_s: float = 60.0


@dataclass
class Setup:
    """Where and how Tideflow runs, and how it is driven."""

    topology: Topology
    backend: Backend
    shards: int
    also: list[Backend] = field(default_factory=list)
    """More backends to run the same plan on, one after another, after `backend` (each a
    fresh deployment; the report compares them with the first)."""
    history: int = 1
    matching: int = 1
    address: str | None = None
    """An existing cluster's frontend: nothing is started."""
    pids: dict[str, int] = field(default_factory=dict)
    """With `address`: processes to measure, by name."""
    pg_stats: str | None = None
    """With `address`: a DSN of the cluster's PostgreSQL database, for its commit counters."""
    driver: Driver = "sdk"
    worker_processes: int = 1
    worker_pollers: int = 50
    worker_concurrency: int = 200
    max_connections: int = 20
    cassandra_nodes: int = 1
    kill: Fault | None = None
    """A server process killed during the first open-loop window (bench/hostloss.py)."""
    peers: list[str] = field(default_factory=list)
    telemetry: Literal["off", "metrics", "tracing", "both"] = "off"
    """Tracing sampled at TRACE_SAMPLE_RATIO (to a local OTLP collector process) and/or
    metrics on (a Prometheus endpoint per server process)."""


TRACE_SAMPLE_RATIO = 0.01


class _Collector:
    """The OTLP collector process spans go to when telemetry is on (deploy/local/otlp.py)."""

    def __init__(self, which: str) -> None:
        self.which = which
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deploy.local.otlp", "--port", str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise BenchError("the OTLP collector did not start")

    def settings(self) -> dict[str, Any]:
        telemetry: dict[str, Any] = {}
        if self.which in ("tracing", "both"):
            telemetry["tracing"] = {
                "otlp_endpoint": f"127.0.0.1:{self.port}",
                "sample_ratio": TRACE_SAMPLE_RATIO,
            }
        if self.which in ("metrics", "both"):
            telemetry["metrics"] = {"prometheus_port": 0}
        return {"telemetry": telemetry}

    def stop(self) -> int:
        """Stop it; the spans it received."""
        self.process.terminate()
        out, _ = self.process.communicate(timeout=30)
        counted = [line.split()[1] for line in out.splitlines() if line.startswith("spans ")]
        return int(counted[-1]) if counted else -1


WARMUP_RUN_TIMEOUT_S = 30.0


class BenchError(RuntimeError):
    """The system under test does not work well enough to be measured."""


class PeersUnavailable(RuntimeError):
    """--peers was given but bench/peers/ is not in this checkout."""


def load_peers(names: list[str]) -> ModuleType:
    """`bench.peers`, imported only when peers are asked for, with the names checked."""
    try:
        module = importlib.import_module("bench.peers")
    except ModuleNotFoundError as e:
        if e.name not in ("bench.peers", "bench"):
            raise
        raise PeersUnavailable(
            "--peers needs bench/peers/ (the peer runners), which this checkout does not have"
            " yet; run without --peers"
        ) from e
    unknown = sorted(set(names) - set(module.PEERS))
    if unknown:
        raise PeersUnavailable(f"unknown peers {unknown}: bench/peers knows {list(module.PEERS)}")
    return module


def _environment() -> dict[str, Any]:
    def git(*args: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        return ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    return {
        "commit": commit,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": ", ".join(f"{v:.2f}" for v in os.getloadavg()),
        "cpu_probe_ms_start": cpu_probe_ms(),
    }


def cpu_probe_ms() -> float:
    """How fast one core is right now: the best of three timings of a fixed pure-Python
    loop, in ms (lower is faster). A shared VM can run at half speed for an hour; reports
    taken at different probe times are not comparable."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i % 7
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 1)


class _Edges:
    """Probe readings at the two edges of a window."""

    def __init__(self, cpu: CpuProbe, postgres: PostgresProbe | None) -> None:
        self.cpu = cpu
        self.postgres = postgres
        self.cpu_delta: dict[str, float] = {}
        self.db_delta: dict[str, int] = {}
        self._cpu: dict[str, float] = {}
        self._db: dict[str, int] = {}

    async def start(self) -> None:
        self._cpu = self.cpu.read()
        self._db = await self.postgres.read() if self.postgres is not None else {}

    async def end(self) -> None:
        self.cpu_delta = CpuProbe.delta(self._cpu, self.cpu.read())
        if self.postgres is not None:
            self.db_delta = PostgresProbe.delta(self._db, await self.postgres.read())


JIT_SETTLE_INFLIGHT = 40
JIT_SETTLE_STEP_S = 5.0
JIT_SETTLED_SHARE = 0.03
"""A JVM's JIT has settled when its compiler threads use under 3% of a core over a step."""
JIT_SETTLE_MAX_S = 240.0


async def settle_jit(run_once: load.RunOnce, jvms: list[int], *, tag: str) -> float:
    """Run load until the JIT compilers of every JVM go quiet (a fresh Cassandra spends half
    its CPU compiling for its first minutes under load, which a long-running node does not);
    the seconds it took."""
    stop = asyncio.Event()
    keys = count()

    async def loop() -> None:
        while not stop.is_set():
            await run_once(f"{tag}-jit-{next(keys)}")

    began = time.monotonic()
    loops = [asyncio.create_task(loop()) for _ in range(JIT_SETTLE_INFLIGHT)]
    try:
        before = [jit_seconds(jvm) for jvm in jvms]
        while time.monotonic() - began < JIT_SETTLE_MAX_S:
            await asyncio.sleep(JIT_SETTLE_STEP_S)
            now = [jit_seconds(jvm) for jvm in jvms]
            busiest = max(b - a for a, b in zip(before, now, strict=True))
            if busiest < JIT_SETTLED_SHARE * JIT_SETTLE_STEP_S:
                break
            before = now
    finally:
        stop.set()
        await asyncio.gather(*loops, return_exceptions=True)
    settled = time.monotonic() - began
    logger.info("JIT settled after %.0f s of load (%d runs)", settled, next(keys))
    return settled


def _arming(edges: _Edges, killer: HostKiller) -> load.Edge:
    """The window's start edge, which also arms the kill."""

    async def start() -> None:
        killer.arm(asyncio.get_running_loop().time())
        await edges.start()

    return start


async def measure_tideflow(
    run_once: load.RunOnce,
    plan: Plan,
    workers: WorkerProcesses,
    cpu: CpuProbe,
    postgres: PostgresProbe | None,
    *,
    jvms: list[int] | None = None,
    killer: HostKiller | None = None,
) -> tuple[list[float], list[float], list[Window], float | None]:
    """Sequential phase and every window, after the JIT of `jvms` (Cassandra nodes) settled;
    (sequential ms, their schedule-to-start ms, windows, seconds the JIT took to settle)."""
    tag = uuid.uuid4().hex[:8]
    for number in range(plan.warmup_runs):
        key = f"{tag}-warmup-{number}"
        try:
            ok = await asyncio.wait_for(run_once(key), WARMUP_RUN_TIMEOUT_S)
        except TimeoutError:
            ok = False
        if not ok:
            raise BenchError(
                f"warm-up run {key} did not complete within {WARMUP_RUN_TIMEOUT_S:.0f}s:"
                " the cluster is not running blocks (its logs are above)"
            )
    settled = await settle_jit(run_once, jvms, tag=tag) if jvms else None
    await workers.schedule_to_start([])  # forget the warm-up's samples
    sequential = await load.sequential(run_once, plan.sequential_runs, prefix=f"{tag}-seq")
    sequential_s2s = await workers.schedule_to_start(sequential.completed_keys)
    if (found := distribution(sequential.latencies_ms)) is not None:
        logger.info("sequential: %d runs, median %.1f ms", found.count, found.p50)
    shapes: list[tuple[str, float]] = [("closed", n) for n in plan.closed_inflight]
    shapes += [("open", r) for r in plan.open_rates]
    windows: list[Window] = []
    for number, (mode, amount) in enumerate(shapes):
        edges = _Edges(cpu, postgres)
        faulty = killer if mode == "open" and not any(w.mode == "open" for w in windows) else None
        common: dict[str, Any] = {
            "warmup_s": plan.warmup_s,
            "window_s": plan.window_s,
            "drain_s": plan.drain_s,
            "quiesce_s": plan.quiesce_s,
            "on_window_start": edges.start if faulty is None else _arming(edges, faulty),
            "on_window_end": edges.end,
            "prefix": f"{tag}-w{number}",
        }
        if mode == "closed":
            measured = await load.closed_loop(run_once, inflight=int(amount), **common)
        else:
            measured = await load.open_loop(run_once, rate=amount, **common)
        window = Window(
            mode=measured.mode,
            inflight=measured.inflight,
            target_rate=measured.target_rate,
            completed=len(measured.latencies_ms),
            seconds=measured.window_s,
            latencies_ms=measured.latencies_ms,
            schedule_to_start_ms=await workers.schedule_to_start(measured.completed_keys),
            cpu_s=edges.cpu_delta,
            started=len(measured.counted),
            failed=measured.failed,
            unfinished=measured.unfinished,
            start_lag_ms=measured.start_lag_ms if mode == "open" else [],
            db=edges.db_delta,
            closed_in_window=measured.completions,
            latency_by_second=[values for _, values in measured.latency_by_second()],
            fault=(await faulty.result(measured)).to_json() if faulty is not None else None,
        )
        logger.info(
            "%s: %.1f runs/s, %d counted runs (%d failed, %d unfinished)",
            window.label,
            window.completed / window.seconds,
            window.started or 0,
            window.failed or 0,
            window.unfinished or 0,
        )
        windows.append(window)
    return sequential.latencies_ms, sequential_s2s, windows, settled


async def run_tideflow(
    plan: Plan,
    setup: Setup,
    deployment: Deployment | None,
    workdir: Path,
    *,
    system: str = "tideflow",
) -> SystemRun:
    scenario = SCENARIOS[plan.scenario]
    groups: list[Tracked] = []
    postgres: PostgresProbe | None = None
    if deployment is not None:
        address = deployment.frontend
        for name, pid in deployment.pids().items():
            if name == "postgres" and setup.backend == "sqlite":
                continue  # started for the peers only
            groups.append(Tracked(name, [pid], with_children=name == "postgres"))
        if deployment.postgres is not None and setup.backend != "sqlite":
            postgres = PostgresProbe(deployment.postgres.dsn("postgres"), DATABASE)
    else:
        assert setup.address is not None
        address = setup.address
        groups += [
            Tracked(name, [pid], with_children=name == "postgres")
            for name, pid in setup.pids.items()
        ]
        if setup.pg_stats:
            postgres = PostgresProbe(setup.pg_stats, urlsplit(setup.pg_stats).path.lstrip("/"))
    flow, queue, info = await prepare(address, scenario)
    if deployment is None:
        setup.backend = cast(Backend, info.persistence_backend or setup.backend)
    workers = WorkerProcesses(workdir)
    # A scenario may need more workers than asked for (the report says how many ran).
    setup.worker_processes = max(setup.worker_processes, scenario.worker_processes)
    driver = None
    sticky: tuple[int, int] | None = None
    settled: float | None = None
    try:
        await workers.start(
            address,
            queue,
            processes=setup.worker_processes,
            pollers=setup.worker_pollers,
            concurrency=setup.worker_concurrency,
            eager=scenario.eager,
        )
        groups += [Tracked("worker", workers.pids), Tracked("driver", [os.getpid()])]
        driver = await connect_driver(setup.driver, address, flow, scenario.run_input())
        jvms = [
            pid
            for name, pid in (deployment.pids() if deployment is not None else {}).items()
            if name.startswith("cassandra")
        ]
        sequential, sequential_s2s, windows, settled = await measure_tideflow(
            driver.run,
            plan,
            workers,
            CpuProbe(groups),
            postgres,
            jvms=jvms,
            killer=HostKiller(deployment, setup.kill) if deployment and setup.kill else None,
        )
        sticky = await sticky_counts(address, queue) if plan.scenario == "sticky" else None
    except BaseException:
        workers.kill()
        raise
    finally:
        if driver is not None:
            await driver.close()
        await workers.stop()
        if postgres is not None:
            await postgres.close()
    notes = _notes(setup, info if deployment is None else None, settled, sticky)
    return SystemRun(
        system=system,
        version=info.server_version,
        scenario=plan.scenario,
        sequential_ms=sequential,
        windows=windows,
        notes=notes,
        sequential_schedule_to_start_ms=sequential_s2s,
    )


def _notes(
    setup: Setup,
    existing: ServerInfo | None,
    settled: float | None,
    sticky: tuple[int, int] | None,
) -> str:
    """The report's line on where Tideflow ran (`existing`: a cluster the bench did not
    start, as it describes itself)."""
    if existing is not None:
        notes = (
            f"existing cluster at {setup.address} ({existing.persistence_backend}, visibility"
            f" on {existing.visibility_backend}, {existing.history_shard_count} shards)"
        )
    else:
        notes = f"{setup.topology} topology on {setup.backend}"
    if existing is None and setup.backend == "cassandra":
        nodes = setup.cassandra_nodes
        ring = (
            f" as a ring of {nodes} nodes (RF {nodes}, LOCAL_QUORUM, SERIAL)" if nodes > 1 else ""
        )
        notes += (
            f" (histories on Cassandra{ring}, commitlog_sync periodic as Cassandra ships it;"
            " visibility on PostgreSQL, whose commits the DB column counts; measured after"
            f" {settled or 0:.0f} s of load let the JIT settle)"
        )
    if sticky is not None:
        hits, fallbacks = sticky
        offers = hits + fallbacks
        notes += (
            f"; {setup.worker_processes} workers without eager dispatch; sticky hit ratio"
            f" {hits / offers if offers else 0:.1%} ({hits} hits, {fallbacks} fallbacks to the"
            " normal queue, over every phase)"
        )
    return notes


async def run_peers(
    plan: Plan, names: list[str], postgres_dsn: str, workdir: Path
) -> tuple[list[SystemRun], dict[str, str]]:
    """Each peer on the same plan, one after another; a peer that fails is reported, not
    fatal."""
    module = load_peers(names)
    runs: list[SystemRun] = []
    errors: dict[str, str] = {}
    for name in names:
        peer_dir = workdir / f"peer-{name}"
        peer_dir.mkdir(parents=True, exist_ok=True)
        peer_plan = module.PeerPlan(
            scenario=plan.scenario,
            workdir=peer_dir,
            postgres_dsn=postgres_dsn,
            warmup_runs=plan.warmup_runs,
            sequential_runs=plan.sequential_runs,
            closed_inflight=list(plan.closed_inflight),
            open_rates=list(plan.open_rates),
            warmup_s=plan.warmup_s,
            window_s=plan.window_s,
        )
        logger.info("peer %s: running the same plan", name)
        try:
            result = await module.run_peer(name, peer_plan)
            runs.append(SystemRun.from_peer(result))
        except Exception as e:
            logger.error("peer %s failed:\n%s", name, traceback.format_exc())
            errors[name] = f"{type(e).__name__}: {e}"
    return runs, errors


def _deployment(setup: Setup, collector: _Collector | None, backend: Backend) -> Deployment:
    return Deployment(
        setup.topology,
        backend,
        shard_count=setup.shards,
        history_processes=setup.history,
        matching_processes=setup.matching,
        # The server's own defaults, not the tests' fast membership.
        settings=collector.settings() if collector is not None else {},
        max_connections=setup.max_connections,
        cassandra_nodes=setup.cassandra_nodes,
        with_postgres=bool(setup.peers),
    )


async def _other_backends(
    plan: Plan, setup: Setup, collector: _Collector | None, workdir: Path
) -> list[SystemRun]:
    """The same plan on each of `setup.also`, one fresh deployment after another."""
    runs: list[SystemRun] = []
    for backend in setup.also:
        deployment = _deployment(setup, collector, backend)
        try:
            logger.info("starting %s topology on %s", setup.topology, backend)
            await deployment.start()
            again = replace(setup, backend=backend)
            name = f"tideflow on {backend}"
            runs.append(await run_tideflow(plan, again, deployment, workdir, system=name))
        except Exception:
            sys.stderr.write(deployment.logs() + "\n")
            raise
        finally:
            deployment.stop()
    return runs


async def bench(plan: Plan, setup: Setup) -> Report:
    if setup.peers:
        load_peers(setup.peers)  # fail before starting anything
    environment = _environment()
    workdir = Path(tempfile.mkdtemp(prefix="tideflow-bench-"))
    deployment = None
    own_postgres: PostgresServer | None = None  # with --address and --peers, for the peers
    on = setup.telemetry != "off" and setup.address is None
    collector = _Collector(setup.telemetry) if on else None
    if setup.address is None:
        deployment = _deployment(setup, collector, setup.backend)
    try:
        if deployment is not None:
            logger.info("starting %s topology on %s", setup.topology, setup.backend)
            await deployment.start()
        named = f"tideflow on {setup.backend}" if setup.also else "tideflow"
        try:
            tideflow = await run_tideflow(plan, setup, deployment, workdir, system=named)
        except Exception:
            if deployment is not None:
                sys.stderr.write(deployment.logs() + "\n")
            raise
        peers: list[SystemRun] = []
        if setup.also:
            assert deployment is not None  # --address measures one cluster
            deployment.stop()  # each backend gets the machine to itself
            deployment = None
            peers += await _other_backends(plan, setup, collector, workdir)
        errors: dict[str, str] = {}
        if setup.peers:
            if deployment is not None:
                deployment.stop(keep_postgres=True)  # the peers get the machine to themselves
                assert deployment.postgres is not None
                peer_postgres = deployment.postgres
            else:
                peer_postgres = own_postgres = PostgresServer(durable=True).start()
            dsn = peer_postgres.dsn("postgres")
            measured, errors = await run_peers(plan, setup.peers, dsn, workdir)
            peers += measured
    finally:
        if deployment is not None:
            deployment.stop()
        if own_postgres is not None:
            own_postgres.remove()
        if collector is not None:
            environment["telemetry"] = (
                f"{setup.telemetry} (tracing sampled at {TRACE_SAMPLE_RATIO:g}); "
                f"{collector.stop()} spans exported"
            )
        shutil.rmtree(workdir, ignore_errors=True)
    environment["loadavg_end"] = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    environment["cpu_probe_ms_end"] = cpu_probe_ms()
    return Report(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        scenario=plan.scenario,
        topology=setup.topology if setup.address is None else "existing",
        backend="+".join([setup.backend, *setup.also]),
        plan={
            **asdict(plan),
            **{k: v for k, v in asdict(setup).items() if k.startswith(("driver", "worker"))},
        },
        environment=environment,
        systems=[summarise_system(tideflow), *(summarise_system(p) for p in peers)],
        errors=errors,
    )
