"""Run one peer by hand and print a summary (stderr) and the PeerResult JSON (stdout).

    python -m bench.peers temporal --scenario seq3 --closed 50 --open 100 --window-s 10
    python -m bench.peers dbos --scenario seq3 --postgres-dsn postgresql://postgres@127.0.0.1:5432/postgres
    python -m bench.peers dbos --scenario seq3 --start-postgres --closed 20

`--start-postgres` starts a throwaway durable PostgreSQL (tests/support/postgres.py) for the
run and removes it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench.peers import PEERS, SCENARIOS, PeerPlan, PeerResult, run_peer


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _latency(values: list[float]) -> str:
    if not values:
        return "no runs"
    return (
        f"median {statistics.median(values):.1f} ms, p99 {_percentile(values, 0.99):.1f} ms "
        f"(n={len(values)})"
    )


def summary(result: PeerResult) -> str:
    lines = [f"{result.peer} {result.scenario} ({result.version})"]
    lines.append(f"  sequential: {_latency(result.sequential_ms)}")
    for w in result.windows:
        label = f"closed {w.inflight}" if w.mode == "closed" else f"open {w.target_rate:g}/s"
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in sorted(w.cpu_s.items()))
        lines.append(
            f"  {label}: {w.runs_per_second:.1f} runs/s, {_latency(w.latencies_ms)}; cpu s: {cpu}"
        )
        if w.schedule_to_start_ms:
            lines.append(f"    schedule-to-start: {_latency(w.schedule_to_start_ms)}")
    lines.append(f"  notes: {result.notes}")
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> PeerResult:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"tideflow-peer-{args.peer}-"))
    postgres = None
    dsn: str = args.postgres_dsn or ""
    if args.start_postgres:
        from tests.support.postgres import PostgresServer  # noqa: PLC0415 - only for this flag

        postgres = PostgresServer(durable=True).start()
        dsn = postgres.dsn("postgres")
    try:
        plan = PeerPlan(
            scenario=args.scenario,
            workdir=workdir,
            postgres_dsn=dsn,
            warmup_runs=args.warmup,
            sequential_runs=args.sequential,
            closed_inflight=args.closed,
            open_rates=args.open,
            warmup_s=args.warmup_s,
            window_s=args.window_s,
        )
        print(f"{args.peer}: workdir {workdir}", file=sys.stderr)
        return await run_peer(args.peer, plan)
    finally:
        if postgres is not None:
            postgres.remove()


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("peer", choices=PEERS)
    parser.add_argument("--scenario", choices=SCENARIOS, default="seq3")
    parser.add_argument("--postgres-dsn", help="superuser DSN (database postgres); dbos needs it")
    parser.add_argument("--start-postgres", action="store_true")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--closed", type=int, action="append", default=[], metavar="N")
    parser.add_argument("--open", type=float, action="append", default=[], metavar="R")
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--window-s", type=float, default=15.0)
    args = parser.parse_args()
    if args.peer == "dbos" and not (args.postgres_dsn or args.start_postgres):
        parser.error("dbos needs --postgres-dsn or --start-postgres")
    result = asyncio.run(_main(args))
    print(summary(result), file=sys.stderr)
    json.dump(result.to_json(), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
