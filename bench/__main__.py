"""Measure Tideflow (and, with --peers, other engines) on one scenario and load plan.

    python -m bench seq3                                   # split topology on PostgreSQL
    python -m bench fanout --inflight 50,100 --window-s 15
    python -m bench seq3 --rates 50,100,150,200            # open-loop sweep, with a chart
    python -m bench seq3 --topology cluster --history 2 --matching 2 --backend cassandra
    python -m bench seq3 --address 127.0.0.1:7233          # a cluster that is already up
    python -m bench seq3 --peers temporal,dbos
    python -m bench model --topology dev --max-batches 1,8,32,128   # the model worker

Writes bench/results/<time>-<scenario>-<topology>-<backend>.{json,md,png} and prints the
markdown summary. bench/README.md defines every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar, cast

from bench.chart import dip_chart, latency_chart
from bench.harness import BenchError, PeersUnavailable, Plan, Setup, bench
from bench.hostloss import Fault
from bench.model import DEFAULT_MAX_BATCHES, ModelPlan, ModelReport, bench_model
from bench.report import Report
from bench.scenarios import SCENARIOS
from bench.soak import SoakPlan, SoakResult, bench_soak
from bench.soak import markdown as soak_markdown
from deploy.local.deployment import BACKENDS, DEFAULT_BACKEND, TOPOLOGIES, Backend, Topology

RESULTS = Path(__file__).resolve().parent / "results"
T = TypeVar("T")


def _backends(text: str) -> list[Backend]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give one or more of {', '.join(BACKENDS)}, each once"
        )
    return cast(list[Backend], names)


def _list(parse: Callable[[str], T]) -> Callable[[str], list[T]]:
    def parse_list(text: str) -> list[T]:
        return [parse(item) for item in text.split(",") if item.strip()]

    return parse_list


def _pid(text: str) -> tuple[str, int]:
    name, _, pid = text.partition("=")
    if not name or not pid.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=PID, got {text!r}")
    return name, int(pid)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", nargs="?", default="seq3", choices=sorted(SCENARIOS))
    where = p.add_argument_group("what runs where")
    where.add_argument("--topology", choices=TOPOLOGIES, default="split")
    where.add_argument(
        "--backend",
        type=_backends,
        help="default: sqlite for dev, postgres otherwise; several (postgres,cassandra) run the"
        " same plan on each in turn and compare them with the first",
    )
    where.add_argument("--history", type=int, default=1, help="history processes (cluster)")
    where.add_argument("--matching", type=int, default=1, help="matching processes (cluster)")
    where.add_argument("--shards", type=int, help="history shards (default: 4 dev, 16 otherwise)")
    where.add_argument("--max-connections", type=int, default=20, help="DB pool per process")
    where.add_argument(
        "--cassandra-nodes",
        type=int,
        default=1,
        help="Cassandra as a ring of N nodes on 127.0.0.1-N (replication factor N, LOCAL_QUORUM)",
    )
    where.add_argument(
        "--kill",
        type=Fault.parse,
        metavar="ROLE@SECONDS",
        help="kill -9 the first history (or matching) process this many seconds into the first"
        " open-loop window, and report the handover and the throughput dip (bench/hostloss.py)",
    )
    where.add_argument("--address", help="measure the cluster whose frontend is here instead")
    where.add_argument(
        "--pid",
        type=_pid,
        action="append",
        default=[],
        metavar="NAME=PID",
        help="with --address: a process to measure the CPU of (name 'postgres' adds children)",
    )
    where.add_argument(
        "--pg-stats", metavar="DSN", help="with --address: the cluster's PostgreSQL database"
    )
    plan = p.add_argument_group("load plan")
    plan.add_argument("--warmup-runs", type=int, default=10, help="before the sequential phase")
    plan.add_argument("--sequential", type=int, default=100, help="runs, one at a time")
    plan.add_argument(
        "--inflight",
        type=_list(int),
        help="closed-loop windows: runs in flight, comma-separated (default 100 without --rates)",
    )
    plan.add_argument(
        "--rates",
        type=_list(float),
        default=[],
        help="open-loop windows: starts/s, comma-separated",
    )
    plan.add_argument(
        "--soak",
        type=float,
        metavar="MINUTES",
        help="instead of windows: one open loop at the first --rates rate (default 116/s) for"
        " this long, retention deleting meanwhile; a row per interval (bench/soak.py)",
    )
    plan.add_argument(
        "--soak-interval-s", type=float, default=60.0, help="with --soak: seconds per row"
    )
    plan.add_argument(
        "--retention-s",
        type=float,
        default=300.0,
        help="with --soak: the bench namespace's retention (default 5 minutes)",
    )
    plan.add_argument("--warmup-s", type=float, default=3.0, help="load before each window")
    plan.add_argument("--window-s", type=float, default=15.0, help="measured window length")
    plan.add_argument(
        "--drain-s", type=float, default=30.0, help="longest wait for a window's runs to close"
    )
    where.add_argument(
        "--telemetry",
        choices=["off", "metrics", "tracing", "both"],
        default="off",
        help="tracing sampled at 1%% (to a local OTLP collector), metrics on, or both",
    )
    drive = p.add_argument_group("driver and workers")
    drive.add_argument(
        "--driver",
        choices=["sdk", "stubs"],
        default="sdk",
        help="load driver: the SDK client, or the generated stubs on one channel",
    )
    drive.add_argument("--worker-processes", type=int, default=1)
    drive.add_argument(
        "--worker-pollers", type=int, default=50, help="long polls per worker process"
    )
    drive.add_argument(
        "--worker-concurrency", type=int, default=200, help="blocks at once per worker process"
    )
    model = p.add_argument_group("the model scenario (bench/model.py)")
    model.add_argument(
        "--max-batches",
        type=_list(int),
        default=DEFAULT_MAX_BATCHES,
        help="one window per max_batch setting of the model worker (default 1,8,32,128);"
        " runs in flight: --inflight's first value, else 2 x max_batch (at least 8)",
    )
    model.add_argument("--max-wait-ms", type=float, default=5.0, help="the worker's max_wait")
    model.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--peers", type=_list(str), default=[], help="e.g. temporal,dbos")
    p.add_argument("--out", type=Path, default=RESULTS, help="where reports go")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def write(report: Report, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = out / f"{stamp}-{report.scenario}-{report.topology}-{report.backend}"
    written = [base.with_suffix(".json"), base.with_suffix(".md")]
    written[0].write_text(json.dumps(report.to_json(), indent=2) + "\n")
    written[1].write_text(report.markdown())
    chart = base.with_suffix(".png")
    title = f"{report.scenario} on {report.topology}/{report.backend}: latency against load"
    if latency_chart(report.systems, chart, title=title):
        written.append(chart)
    dip = base.with_name(base.name + "-dip.png")
    if dip_chart(report.systems, dip, title=f"{report.scenario}: a process killed under load"):
        written.append(dip)
    return written


async def _main(plan: Plan, setup: Setup) -> Report:
    # SIGTERM unwinds like Ctrl-C, through every cleanup on the way out.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await bench(plan, setup)


async def _main_model(plan: ModelPlan, setup: Setup, workdir: Path) -> ModelReport:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await bench_model(plan, setup, workdir)


def run_model(args: argparse.Namespace, setup: Setup) -> int:
    """The model scenario: its own table (a row per max_batch), written like the others."""
    plan = ModelPlan(
        max_batches=args.max_batches,
        inflight=args.inflight[0] if args.inflight else None,
        max_wait_ms=args.max_wait_ms,
        provider=args.provider,
        warmup_s=args.warmup_s,
        window_s=args.window_s,
        drain_s=args.drain_s,
    )
    workdir = Path(tempfile.mkdtemp(prefix="tideflow-bench-model-"))
    report = _run_guarded(_main_model(plan, setup, workdir), workdir)
    if isinstance(report, int):
        return report
    _write_table(args.out, f"model-{report.topology}-{report.backend}", report.to_json(),
                 report.markdown())  # fmt: skip
    return 0


def run_soak(args: argparse.Namespace, setup: Setup) -> int:
    """The soak: its own table (a row per interval), written like the others."""
    plan = SoakPlan(
        rate=args.rates[0] if args.rates else 116.0,
        minutes=args.soak,
        interval_s=args.soak_interval_s,
        retention_s=args.retention_s,
    )
    workdir = Path(tempfile.mkdtemp(prefix="tideflow-bench-soak-"))
    ran = _run_guarded(_main_soak(args.scenario, plan, setup, workdir), workdir)
    if isinstance(ran, int):
        return ran
    result, where = ran
    text = soak_markdown(result, title=f"soak: {where}")
    _write_table(args.out, f"soak-{setup.topology}-{setup.backend}", asdict(result), text)
    return 0 if result.p99_ok and result.size_ok else 3


def _run_guarded(main: Coroutine[Any, Any, T], workdir: Path) -> T | int:
    """`main` run to its end, its workdir removed; or the exit status, said on stderr, when
    the system could not be measured (logs kept) or the run was interrupted."""
    try:
        result = asyncio.run(main)
    except BenchError as e:
        print(f"python -m bench: {e} (worker logs kept in {workdir})", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("python -m bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def _write_table(out: Path, name: str, data: Any, text: str) -> None:
    """Print a mode's table and write it, with its JSON, as `<UTC time>-<name>`."""
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{name}"
    base.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    base.with_suffix(".md").write_text(text)
    print(f"wrote {base}.json and .md", file=sys.stderr)


async def _main_soak(
    scenario: str, plan: SoakPlan, setup: Setup, workdir: Path
) -> tuple[SoakResult, str]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await bench_soak(scenario, plan, setup, workdir)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    topology = cast(Topology, args.topology)
    inflight = args.inflight if args.inflight is not None else ([] if args.rates else [100])
    plan = Plan(
        scenario=args.scenario,
        warmup_runs=args.warmup_runs,
        sequential_runs=args.sequential,
        closed_inflight=inflight,
        open_rates=args.rates,
        warmup_s=args.warmup_s,
        window_s=args.window_s,
        drain_s=args.drain_s,
    )
    backends = args.backend or [DEFAULT_BACKEND[topology]]
    setup = Setup(
        topology=topology,
        backend=backends[0],
        also=backends[1:],
        shards=args.shards or (4 if topology == "dev" else 16),
        history=args.history,
        matching=args.matching,
        address=args.address,
        pids=dict(args.pid),
        pg_stats=args.pg_stats,
        driver=args.driver,
        worker_processes=args.worker_processes,
        worker_pollers=args.worker_pollers,
        worker_concurrency=args.worker_concurrency,
        max_connections=args.max_connections,
        cassandra_nodes=args.cassandra_nodes,
        kill=args.kill,
        peers=args.peers,
        telemetry=args.telemetry,
    )
    if topology != "cluster" and (args.history, args.matching) != (1, 1):
        print("python -m bench: --history and --matching need --topology cluster", file=sys.stderr)
        return 2
    if args.soak is not None:
        if args.peers or args.address or setup.also or setup.backend != "postgres":
            print(
                "python -m bench: --soak runs on a postgres deployment it starts, without peers",
                file=sys.stderr,
            )
            return 2
        return run_soak(args, setup)
    if args.scenario == "model":
        if args.peers or args.rates:
            print(
                "python -m bench: the model scenario runs closed loop, without peers",
                file=sys.stderr,
            )
            return 2
        return run_model(args, setup)
    if setup.also and (args.peers or args.address):
        print("python -m bench: several backends run without peers or --address", file=sys.stderr)
        return 2
    if topology == "cluster" and "sqlite" in backends:
        print(
            "python -m bench: the cluster topology runs on postgres or cassandra", file=sys.stderr
        )
        return 2
    try:
        report = asyncio.run(_main(plan, setup))
    except PeersUnavailable as e:
        print(f"python -m bench: {e}", file=sys.stderr)
        return 2
    except BenchError as e:
        print(f"python -m bench: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("python -m bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    print(report.markdown())
    for path in write(report, args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
