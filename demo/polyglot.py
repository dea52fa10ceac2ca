"""Tideflow polyglot demo: one flow, blocks on Python, Go, TypeScript and model workers.

    python -m demo.polyglot          # what `make demo-polyglot` runs (it builds the workers)

Starts a throwaway `tideflow-server start-dev` (SQLite, namespace "polyglot"), then four worker
processes, each on its own task queue: the Python SDK example worker, the Go example worker
(`workers/go/bin/tideflow-go-worker`), the TypeScript example worker
(`workers/node/dist/example.js`) and the ONNX model worker (`workers.ml_model`, dynamic
batching). Registers demo/polyglot.yaml and starts one run per sample document: the title goes
to TypeScript, the text to Python and Go, and a handwritten digit from scikit-learn's digits
set (the "page number box" of the scan) to the model. Prints each run's result, with the
worker languages that answered, and stops every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from demo._processes import (
    ROOT,
    STARTUP_TIMEOUT_S,
    Processes,
    free_port,
    run_id_for,
    server_argv,
    wait_ready,
    workspace,
)
from tideflow.client import Client

NAMESPACE = "polyglot"
DOCUMENTS = ROOT / "demo" / "documents"
BLUEPRINT = ROOT / "demo" / "polyglot.yaml"
GO_WORKER = ROOT / "workers" / "go" / "bin" / "tideflow-go-worker"
NODE_WORKER = ROOT / "workers" / "node" / "dist" / "example.js"
MODEL = "digits"
RUN_TIMEOUT_S = 60.0

console = Console(width=None if sys.stdout.isatty() else 150)


@dataclass(frozen=True, slots=True)
class Worker:
    """One worker process of the demo: its task queue and how to start it."""

    language: str
    task_queue: str
    argv: list[str]


def workers(address: str) -> list[Worker]:
    def flags(queue: str) -> list[str]:
        return ["--address", address, "--namespace", NAMESPACE, "--task-queue", queue]

    demo = ["--blocks", "demo"]
    model = ["--max-batch", "8"]
    return [
        Worker(
            "python",
            "polyglot-python",
            [sys.executable, "-m", "workers.python_example", *flags("polyglot-python"), *demo],
        ),
        Worker("go", "polyglot-go", [str(GO_WORKER), *flags("polyglot-go"), *demo]),
        Worker("node", "polyglot-node", ["node", str(NODE_WORKER), *flags("polyglot-node"), *demo]),
        Worker(
            "model (ONNX Runtime)",
            "models",
            [sys.executable, "-m", "workers.ml_model", *flags("models"), *model],
        ),
    ]


def digits(count: int) -> list[tuple[list[float], int]]:
    """`count` handwritten digits (8x8 pixels, 0-16) and their true labels, from the data set
    scikit-learn ships."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 - heavy, only the demo needs it

    data = load_digits()
    return [([float(v) for v in data.data[i]], int(data.target[i])) for i in range(count)]


def _missing_builds() -> list[str]:
    missing = []
    if not GO_WORKER.exists():
        missing.append(f"{GO_WORKER.relative_to(ROOT)} (make go-build)")
    if not NODE_WORKER.exists():
        missing.append(f"{NODE_WORKER.relative_to(ROOT)} (make node-build)")
    return missing


async def _run_all(address: str, documents: list[Path], run_ids: list[str]) -> list[Any]:
    client = await Client.connect(address, namespace=NAMESPACE, timeout_s=STARTUP_TIMEOUT_S)
    try:
        blueprint = yaml.safe_load(BLUEPRINT.read_text())
        await client.register_flow(blueprint)
        console.print(f"registered flow [bold]{blueprint['name']}@{blueprint['version']}[/]")
        handles = []
        for path, run_id, (pixels, _) in zip(
            documents, run_ids, digits(len(documents)), strict=True
        ):
            title = path.stem.replace("_", " ")
            text = path.read_text(encoding="utf-8")
            run_input = {"title": title, "text": text, "model": MODEL, "digit": pixels}
            handles.append(await client.start_run(blueprint["name"], run_input, run_id=run_id))
        return list(await asyncio.gather(*(h.result(timeout=RUN_TIMEOUT_S) for h in handles)))
    finally:
        await client.close()


def _table(documents: list[Path], results: list[Any]) -> Table:
    table = Table(title="Runs (flow polyglot@1)", title_justify="left")
    for column in ("document", "slug (node)", "words (go)", "first sentence (python)"):
        table.add_column(column)
    table.add_column("digit (model) / true")
    truths = [label for _, label in digits(len(documents))]
    for path, result, truth in zip(documents, results, truths, strict=True):
        sentence = str(result["first_sentence"]).strip().replace("\n", " ")
        mark = "[green]✓[/]" if result["digit"] == truth else "[red]✗[/]"
        table.add_row(
            path.name,
            result["slug"],
            str(result["words"]),
            sentence[:60] + ("…" if len(sentence) > 60 else ""),
            f"{result['digit']} / {truth} {mark}",
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.polyglot", description=__doc__)
    parser.parse_args(argv)
    missing = _missing_builds()
    if missing:
        console.print(f"[red]not built:[/] {', '.join(missing)}; `make demo-polyglot` builds them")
        return 2
    documents = sorted(DOCUMENTS.glob("*.txt"))
    started = time.monotonic()
    processes = Processes()
    with workspace(False) as work:
        port = free_port()
        address = f"127.0.0.1:{port}"
        try:
            log = work / "server.log"
            server = processes.spawn("server", server_argv(work / "t.db", port, NAMESPACE), log)
            wait_ready(server, log)
            console.print(f"started tideflow-server pid {server.pid} on {address}")
            for worker in workers(address):
                log = work / f"{worker.task_queue}.log"
                proc = processes.spawn(worker.language, worker.argv, log)
                console.print(
                    f"started {worker.language} worker pid {proc.pid} on task queue "
                    f"{worker.task_queue!r}"
                )
            run_ids = [run_id_for(d) for d in documents]
            results = asyncio.run(_run_all(address, documents, run_ids))
            console.print(_table(documents, results))
            languages = sorted({w for r in results for w in r["workers"]} | {"model"})
            console.print(
                f"\n{len(results)} runs completed on {', '.join(languages)} workers, "
                f"{time.monotonic() - started:.1f}s"
            )
            return 0
        except KeyboardInterrupt:
            return 130
        finally:
            processes.stop()


if __name__ == "__main__":
    raise SystemExit(main())
