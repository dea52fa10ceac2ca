"""Tideflow first-run demo: document intake across two task queues.

    python -m demo          # start a throwaway server + workers, process demo/documents, stop
    python -m demo --keep   # same, then keep server and workers up until Ctrl-C

`python -m demo` picks a free port and a fresh SQLite file in a temporary directory, starts
`tideflow-server start-dev` (namespace "demo") and two worker processes
(`python -m workers.documents --task-queue cpu` and `--task-queue ml`), registers the flow in
demo/intake.yaml, starts one run per document (run id = file name without extension), shows
live progress, prints the results, and then stops every process it started.

With `--keep` (what `make dev` runs) the server listens on 127.0.0.1:7233 with its database
in .tideflow/demo.db, so `tidectl ... -n demo` works against it after the demo table is
printed; Ctrl-C stops the server and workers. Process logs go next to the database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from tideflow.api.v1 import common_pb2
from tideflow.client import Client, RunHandle
from tideflow.errors import TideflowError

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ROOT / "demo" / "documents"
BLUEPRINT = ROOT / "demo" / "intake.yaml"
NAMESPACE = "demo"
READY_LINE = "tideflow dev server: frontend at"
STARTUP_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 60.0

# Wide enough for the tables when the output is a pipe (tests, CI logs).
console = Console(width=None if sys.stdout.isatty() else 150)


@dataclass
class Processes:
    """Every child process the demo started, with its log file; stopped in reverse order."""

    children: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        out = log.open("ab")
        try:
            proc = subprocess.Popen(
                argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        except BaseException:
            out.close()
            raise
        self.children.append((name, proc, out))
        return proc

    def stop(self, grace_s: float = 5.0) -> None:
        for _, proc, _ in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _, proc, out in reversed(self.children):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out.close()
        self.children.clear()


def _server_argv(db: Path, port: int) -> list[str]:
    exe = Path(sys.executable).with_name("tideflow-server")
    server = str(exe) if exe.exists() else shutil.which("tideflow-server")
    prefix = [server] if server else [sys.executable, "-m", "tideflow_server.main"]
    return [*prefix, "start-dev", "--db", str(db), "--port", str(port), "--namespace", NAMESPACE]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_ready(proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if READY_LINE in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise RuntimeError(f"tideflow-server did not become ready (see {log}):\n{tail}")


def _run_id(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", path.stem)


# -- progress ----------------------------------------------------------------------------


@dataclass
class Progress:
    document: str
    status: str = "STARTING"
    block: str = ""
    done: list[str] = field(default_factory=list)


def _status_style(status: str) -> str:
    return {"COMPLETED": "green", "RUNNING": "yellow", "FAILED": "red"}.get(status, "white")


def _progress_table(rows: list[Progress]) -> Table:
    table = Table(title="Runs (flow intake@1, namespace demo)", title_justify="left")
    table.add_column("document", no_wrap=True)
    table.add_column("status")
    table.add_column("current block")
    table.add_column("finished / skipped blocks")
    for row in rows:
        table.add_row(
            row.document,
            f"[{_status_style(row.status)}]{row.status}[/]",
            row.block,
            ", ".join(row.done),
        )
    return table


async def _poll(handle: RunHandle, row: Progress) -> None:
    while True:
        reply = await handle.describe()
        row.status = _run_status(reply.run_info.status)
        row.block = ", ".join(
            f"{p.block_id} (attempt {p.attempt})" if p.attempt > 1 else p.block_id
            for p in reply.pending_blocks
        )
        row.done = [
            b.block_id + (" (skipped)" if _block_status(b.status) == "SKIPPED" else "")
            for b in reply.blocks
            if _block_status(b.status) in ("SUCCEEDED", "SKIPPED")
        ]
        if row.status != "RUNNING":
            return
        await asyncio.sleep(0.2)


def _run_status(value: common_pb2.RunStatus.ValueType) -> str:
    return common_pb2.RunStatus.Name(value).removeprefix("RUN_STATUS_")


def _block_status(value: common_pb2.BlockStatus.ValueType) -> str:
    return common_pb2.BlockStatus.Name(value).removeprefix("BLOCK_STATUS_")


# -- results -----------------------------------------------------------------------------


def _money(value: Any, currency: Any) -> str:
    if value is None:
        return "-"
    symbol = {"USD": "$", "EUR": "€", "GBP": "£"}.get(str(currency), "")
    return f"{symbol}{value:,.2f}"


def _results_table(results: list[tuple[str, dict[str, Any] | str]]) -> Table:
    table = Table(title="Results", title_justify="left", show_lines=True)
    table.add_column("document", no_wrap=True)
    for column in ("label", "conf.", "total", "dates", "parties", "valid / issues"):
        table.add_column(column)
    for name, result in results:
        if isinstance(result, str):
            table.add_row(name, "-", "-", "-", "-", "-", f"[red]run failed: {result}[/]")
            continue
        amounts = result.get("amounts") or {}
        validation = result.get("validation") or {}
        verdict = (
            "[green]valid[/]"
            if validation.get("valid")
            else "[red]invalid[/]\n" + "\n".join(f"- {i}" for i in validation.get("issues", []))
        )
        table.add_row(
            name,
            str(result.get("label")),
            f"{result.get('confidence', 0):.2f}",
            _money(amounts.get("total"), amounts.get("currency")) if amounts else "(skipped)",
            "\n".join((result.get("dates") or [])[:3]) or "-",
            "\n".join(result.get("parties") or []) or "-",
            verdict,
        )
    return table


async def _process(
    address: str, documents: list[Path], run_ids: list[str]
) -> list[tuple[str, dict[str, Any] | str]]:
    client = await Client.connect(address, namespace=NAMESPACE, timeout_s=STARTUP_TIMEOUT_S)
    try:
        blueprint = yaml.safe_load(BLUEPRINT.read_text())
        await client.register_flow(blueprint)
        console.print(f"registered flow [bold]{blueprint['name']}@{blueprint['version']}[/]")
        handles: list[RunHandle] = []
        for path, run_id in zip(documents, run_ids, strict=True):
            text = path.read_text(encoding="utf-8")
            doc = {"name": path.name, "text": text}
            handles.append(await client.start_run(blueprint["name"], doc, run_id=run_id))
        rows = [Progress(path.name) for path in documents]
        with Live(_progress_table(rows), console=console, refresh_per_second=8) as live:
            polls = [asyncio.create_task(_poll(h, r)) for h, r in zip(handles, rows, strict=True)]
            pending: set[asyncio.Task[None]] = set(polls)
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while pending and time.monotonic() < deadline:
                _, pending = await asyncio.wait(pending, timeout=0.2)
                live.update(_progress_table(rows))
            for task in pending:
                task.cancel()
            live.update(_progress_table(rows))
        results: list[tuple[str, dict[str, Any] | str]] = []
        for path, handle in zip(documents, handles, strict=True):
            try:
                results.append((path.name, await handle.result(timeout=5)))
            except (TideflowError, TimeoutError) as e:
                results.append((path.name, str(e)))
        return results
    finally:
        await client.close()


def _where_next(address: str, run_ids: list[str]) -> None:
    console.print("\n[bold]Where to look next[/]")
    console.print(f"  tidectl run list -n {NAMESPACE} --address {address}")
    console.print(f"  tidectl run history {run_ids[0]} -n {NAMESPACE} --address {address}")
    console.print("  blueprint: demo/intake.yaml   blocks: workers/documents/blocks.py")


@contextlib.contextmanager
def _workspace(keep: bool) -> Iterator[Path]:
    if keep:
        path = ROOT / ".tideflow"
        path.mkdir(exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="tideflow-demo-") as tmp:
            yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep everything up until Ctrl-C")
    args = parser.parse_args(argv)
    documents = sorted(DOCUMENTS.glob("*.txt"))
    started = time.monotonic()
    processes = Processes()
    with _workspace(args.keep) as work:
        db = work / ("demo.db" if args.keep else "tideflow.db")
        port = 7233 if args.keep else _free_port()
        address = f"127.0.0.1:{port}"
        try:
            server_log = work / "server.log"
            server = processes.spawn("server", _server_argv(db, port), server_log)
            console.print(f"started tideflow-server pid {server.pid} on {address} (db {db})")
            _wait_ready(server, server_log)
            for queue in ("cpu", "ml"):
                worker = processes.spawn(
                    f"worker-{queue}",
                    [
                        *(sys.executable, "-m", "workers.documents", "--task-queue", queue),
                        *("--address", address, "--namespace", NAMESPACE),
                    ],
                    work / f"worker-{queue}.log",
                )
                console.print(f"started worker pid {worker.pid} on task queue {queue!r}")
            # Run ids are the file names; --keep reuses its database, so they get a suffix.
            suffix = time.strftime("-%H%M%S") if args.keep else ""
            run_ids = [_run_id(d) + suffix for d in documents]
            results = asyncio.run(_process(address, documents, run_ids))
            console.print(_results_table(results))
            _where_next(address, run_ids)
            failed = [name for name, r in results if isinstance(r, str)]
            console.print(
                f"\n{len(results)} runs, {len(failed)} failed, {time.monotonic() - started:.1f}s"
            )
            if args.keep:
                console.print(f"\nserver and workers keep running (logs in {work}); Ctrl-C to stop")
                with contextlib.suppress(KeyboardInterrupt):
                    while all(p.poll() is None for _, p, _ in processes.children):
                        time.sleep(0.5)
            return 1 if failed else 0
        except KeyboardInterrupt:
            return 130
        finally:
            pids = ", ".join(str(p.pid) for _, p, _ in processes.children)
            processes.stop()
            console.print(f"stopped server and workers (pids {pids})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
