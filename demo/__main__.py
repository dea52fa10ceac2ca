"""Tideflow first-run demo: document intake across two task queues.

    python -m demo          # start a throwaway server + workers, process demo/documents, stop
    python -m demo --keep   # same, then keep server and workers up until Ctrl-C

`python -m demo` picks a free port and a fresh SQLite file in a temporary directory, starts
`tideflow-server start-dev` (namespace "demo") and two worker processes
(`python -m workers.documents --task-queue cpu` and `--task-queue ml`), registers the flow in
demo/intake.yaml, starts one run per document (run id = file name without extension), shows
live progress, prints the results with the path each document took, and then stops every
process it started.

The flow asks a human to review a document its classifier is unsure of (signal `review`).
The demo plays the reviewers (`REVIEWS`): it answers when it sees, in DescribeRun, the review
waiting (or, for one document, once the review has escalated to the second reviewer), and
leaves one review unanswered so that it times out. The paths it prints are read from
DescribeRun's block summaries (statuses, routes, escalations, compensations), not from what
the demo did.

With `--keep` (what `make dev` runs) the server listens on 127.0.0.1:7233 with its database
in .tideflow/demo.db, so `tidectl ... -n demo` works against it after the demo table is
printed; Ctrl-C stops the server and workers. Process logs go next to the database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from demo._processes import (
    STARTUP_TIMEOUT_S,
    Processes,
    free_port,
    run_id_for,
    server_argv,
    wait_ready,
    workspace,
)
from tideflow.api.v1 import common_pb2, flow_service_pb2, run_pb2
from tideflow.client import Client, RunHandle
from tideflow.errors import TideflowError

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ROOT / "demo" / "documents"
BLUEPRINT = ROOT / "demo" / "intake.yaml"
NAMESPACE = "demo"
RUN_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.2
REVIEW_BLOCK = "human_review"
REVIEW_SIGNAL = "review"
MAP_BLOCK = "pages"


@dataclass(frozen=True, slots=True)
class Review:
    """How the demo's reviewer answers one document's review."""

    label: str
    reviewer: str
    after_escalation: bool = False
    """Answer only once the review escalated (the second reviewer answers)."""


REVIEWS: dict[str, Review] = {
    "scan_invoice_ocr.txt": Review("invoice", "first reviewer"),
    "meeting_notes.txt": Review("other", "second reviewer", after_escalation=True),
    # delivery_note_smudged.txt: nobody answers; its review times out to the fallback label.
}

# Wide enough for the tables when the output is a pipe (tests, CI logs).
console = Console(width=None if sys.stdout.isatty() else 150)


# -- progress ----------------------------------------------------------------------------


@dataclass
class Progress:
    document: str
    status: str = "STARTING"
    path: str = ""
    block: str = ""
    done: list[str] = field(default_factory=list)
    reviewed: bool = False
    """The demo sent this run's review signal."""
    described: flow_service_pb2.DescribeRunResponse | None = None


def _status_style(status: str) -> str:
    return {"COMPLETED": "green", "RUNNING": "yellow", "FAILED": "red"}.get(status, "white")


def _progress_table(rows: list[Progress]) -> Table:
    table = Table(title="Runs (flow intake@1, namespace demo)", title_justify="left")
    table.add_column("document", no_wrap=True)
    table.add_column("status")
    table.add_column("path so far")
    table.add_column("current block")
    table.add_column("finished / skipped blocks")
    for row in rows:
        table.add_row(
            row.document,
            f"[{_status_style(row.status)}]{row.status}[/]",
            row.path,
            row.block,
            ", ".join(row.done),
        )
    return table


async def _poll(handle: RunHandle, row: Progress) -> None:
    while True:
        reply = await handle.describe()
        row.described = reply
        row.status = _run_status(reply.run_info.status)
        row.path = run_path(reply)
        row.block = ", ".join(
            f"{p.block_id} (attempt {p.attempt})" if p.attempt > 1 else p.block_id
            for p in reply.pending_blocks
        )
        # A map's items' blocks (pages[0].dates) are summed up in the path, not listed.
        row.done = [
            b.block_id + (" (skipped)" if _block_status(b.status) == "SKIPPED" else "")
            for b in reply.blocks
            if _block_status(b.status) in ("SUCCEEDED", "SKIPPED") and "[" not in b.block_id
        ]
        if row.status != "RUNNING":
            return
        await _answer_review(handle, row, reply)
        await asyncio.sleep(POLL_INTERVAL_S)


async def _answer_review(
    handle: RunHandle, row: Progress, reply: flow_service_pb2.DescribeRunResponse
) -> None:
    """Play the reviewer of `REVIEWS`: signal once the review block waits for it (after its
    escalation, for a second reviewer). The request id makes a resent signal a no-op."""
    review = REVIEWS.get(row.document)
    block = _blocks(reply).get(REVIEW_BLOCK)
    if review is None or row.reviewed or block is None or not block.HasField("waiting"):
        return
    if review.after_escalation and not block.escalated:
        return
    answer = {"label": review.label, "reviewer": review.reviewer}
    await handle.signal(REVIEW_SIGNAL, answer, request_id=f"{handle.run_id}/review")
    row.reviewed = True


def _run_status(value: common_pb2.RunStatus.ValueType) -> str:
    return common_pb2.RunStatus.Name(value).removeprefix("RUN_STATUS_")


def _block_status(value: common_pb2.BlockStatus.ValueType) -> str:
    return common_pb2.BlockStatus.Name(value).removeprefix("BLOCK_STATUS_")


def _blocks(reply: flow_service_pb2.DescribeRunResponse) -> dict[str, run_pb2.BlockSummary]:
    return {b.block_id: b for b in reply.blocks}


# -- the path a document took, from DescribeRun ------------------------------------------


def _review_path(review: run_pb2.BlockSummary | None) -> str:
    """The review: skipped by the switch (confident classifier), answered, or timed out to
    its on_timeout route, with the escalations it made first."""
    if review is None:
        return ""
    status = _block_status(review.status)
    if status == "SKIPPED":
        return "auto"
    escalated = "".join(f"escalated to {target}, then " for target in review.escalated)
    if status == "SUCCEEDED":
        return f"{escalated}reviewed by signal"
    if status == "FAILED" and review.routed:
        return f"{escalated}timed out -> {review.route}"
    if review.HasField("waiting"):
        return f"{escalated}waiting for {review.waiting.signal.signal_name}"
    return f"{escalated}review {status.lower()}"


def _pages_path(reply: flow_service_pb2.DescribeRunResponse) -> str:
    """How many of the map's items (pages) ran: its blocks are `pages[<index>].<id>`."""
    prefix = MAP_BLOCK + "["
    items = {b.block_id.split(".", 1)[0] for b in reply.blocks if b.block_id.startswith(prefix)}
    return f"{len(items)} page{'s' if len(items) != 1 else ''}" if items else ""


def _end_path(reply: flow_service_pb2.DescribeRunResponse) -> str:
    """How the run ended: filed, or the block that failed it and what was compensated."""
    blocks = _blocks(reply)
    undone = [f"{b.compensates} by {b.block_id}" for b in reply.blocks if b.compensates]
    failed = [
        b.block_id
        for b in reply.blocks
        if _block_status(b.status) == "FAILED" and not b.routed and not b.compensates
    ]
    if failed:
        end = f"{failed[0]} failed"
        return f"{end} -> compensated {', '.join(undone)}" if undone else end
    filed = blocks.get("file")
    return "filed" if filed is not None and _block_status(filed.status) == "SUCCEEDED" else ""


def run_path(reply: flow_service_pb2.DescribeRunResponse) -> str:
    """The path a document took through the flow, as its run's block summaries show it."""
    parts = (_review_path(_blocks(reply).get(REVIEW_BLOCK)), _pages_path(reply), _end_path(reply))
    return " -> ".join(part for part in parts if part)


# -- results -----------------------------------------------------------------------------


def _money(value: Any, currency: Any) -> str:
    if value is None:
        return "-"
    symbol = {"USD": "$", "EUR": "€", "GBP": "£"}.get(str(currency), "")
    return f"{symbol}{value:,.2f}"


@dataclass
class Outcome:
    """How one document's run ended."""

    document: str
    status: str
    path: str
    result: dict[str, Any] | None = None
    error: str = ""

    @property
    def compensated(self) -> bool:
        """Failed, and undid what it had done (the path says by which blocks)."""
        return self.status == "FAILED" and "compensated" in self.path


def _paths_table(outcomes: list[Outcome]) -> Table:
    table = Table(title="Paths (from DescribeRun)", title_justify="left")
    table.add_column("document", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("path", no_wrap=True)
    for outcome in outcomes:
        status = f"[{_status_style(outcome.status)}]{outcome.status}[/]"
        table.add_row(outcome.document, status, outcome.path)
    return table


def _results_table(outcomes: list[Outcome]) -> Table:
    table = Table(title="Results", title_justify="left", show_lines=True)
    table.add_column("document", no_wrap=True)
    for column in ("label", "total", "dates", "parties", "valid / issues"):
        table.add_column(column)
    for outcome in outcomes:
        result = outcome.result
        if result is None:
            error = outcome.error or outcome.status
            table.add_row(outcome.document, "-", "-", "-", "-", f"[red]run failed: {error}[/]")
            continue
        amounts = result.get("amounts") or {}
        validation = result.get("validation") or {}
        verdict = (
            "[green]valid[/]"
            if validation.get("valid")
            else "[red]invalid[/]\n" + "\n".join(f"- {i}" for i in validation.get("issues", []))
        )
        table.add_row(
            outcome.document,
            f"{result.get('label')} ({result.get('confidence', 0):.2f})\n"
            f"{result.get('label_source')}",
            _money(amounts.get("total"), amounts.get("currency")) if amounts else "(skipped)",
            "\n".join((result.get("dates") or [])[:3]) or "-",
            "\n".join(result.get("parties") or []) or "-",
            verdict,
        )
    return table


async def _outcome(handle: RunHandle, row: Progress) -> Outcome:
    reply = await handle.describe()
    outcome = Outcome(row.document, _run_status(reply.run_info.status), run_path(reply))
    try:
        outcome.result = await handle.result(timeout=5)
    except (TideflowError, TimeoutError) as e:
        outcome.error = str(e)
    return outcome


async def _process(address: str, documents: list[Path], run_ids: list[str]) -> list[Outcome]:
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
                _, pending = await asyncio.wait(pending, timeout=POLL_INTERVAL_S)
                live.update(_progress_table(rows))
            for task in pending:
                task.cancel()
            live.update(_progress_table(rows))
        return [await _outcome(h, r) for h, r in zip(handles, rows, strict=True)]
    finally:
        await client.close()


def _as_expected(outcome: Outcome) -> bool:
    """Completed, or failed after undoing its work (the saga the demo shows)."""
    return outcome.status == "COMPLETED" or outcome.compensated


def _summary(outcomes: list[Outcome]) -> str:
    completed = sum(o.status == "COMPLETED" for o in outcomes)
    compensated = sum(o.compensated for o in outcomes)
    other = len(outcomes) - completed - compensated
    return (
        f"{len(outcomes)} runs: {completed} completed, {compensated} failed and compensated, "
        f"{other} failed otherwise or unfinished"
    )


def _where_next(address: str, run_ids: list[str]) -> None:
    console.print("\n[bold]Where to look next[/]")
    # Global options come before the command (`tidectl -n demo run list`).
    console.print(f"  tidectl -n {NAMESPACE} --address {address} run list")
    console.print(f"  tidectl -n {NAMESPACE} --address {address} run describe {run_ids[0]}")
    console.print("  blueprint: demo/intake.yaml   blocks: workers/documents/blocks.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep everything up until Ctrl-C")
    args = parser.parse_args(argv)
    documents = sorted(DOCUMENTS.glob("*.txt"))
    started = time.monotonic()
    processes = Processes()
    with workspace(args.keep) as work:
        db = work / ("demo.db" if args.keep else "tideflow.db")
        port = 7233 if args.keep else free_port()
        address = f"127.0.0.1:{port}"
        try:
            server_log = work / "server.log"
            server = processes.spawn("server", server_argv(db, port, NAMESPACE), server_log)
            console.print(f"started tideflow-server pid {server.pid} on {address} (db {db})")
            wait_ready(server, server_log)
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
            run_ids = [run_id_for(d) + suffix for d in documents]
            outcomes = asyncio.run(_process(address, documents, run_ids))
            console.print()  # the progress table's last frame ends without a newline in a pipe
            console.print(_results_table(outcomes))
            console.print(_paths_table(outcomes))
            _where_next(address, run_ids)
            console.print(f"\n{_summary(outcomes)}, {time.monotonic() - started:.1f}s")
            if args.keep:
                console.print(f"\nserver and workers keep running (logs in {work}); Ctrl-C to stop")
                with contextlib.suppress(KeyboardInterrupt):
                    while all(p.poll() is None for _, p, _ in processes.children):
                        time.sleep(0.5)
            return 0 if all(_as_expected(o) for o in outcomes) else 1
        except KeyboardInterrupt:
            return 130
        finally:
            pids = ", ".join(str(p.pid) for _, p, _ in processes.children)
            processes.stop()
            console.print(f"stopped server and workers (pids {pids})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
