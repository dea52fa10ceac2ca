"""Run the model worker: `python -m workers.ml_model [--model PATH.onnx] [--max-batch N]`.

Serves `model.predict@1` on `--task-queue` (default `ml`) from one ONNX model, batching tasks
across runs (see workers/ml_model/README.md). Without `--model` it serves the digits
classifier at `.tideflow/models/digits.onnx`, built there on first use. SIGINT/SIGTERM stop
polling, let what was polled run and be answered (at most `--drain-timeout-s`), and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import cast

from workers.ml_model.build import build
from workers.ml_model.model import Model, Provider, UnsupportedModel
from workers.ml_model.worker import ModelWorker, Options

DEFAULT_MODEL = Path(".tideflow/models/digits.onnx")
logger = logging.getLogger("workers.ml_model")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m workers.ml_model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--address", default="127.0.0.1:7233", help="frontend host:port")
    p.add_argument("--namespace", default="default")
    p.add_argument("--task-queue", default="ml")
    p.add_argument("--identity", help="default host:pid")
    p.add_argument("--api-key", default=os.environ.get("TIDEFLOW_API_KEY", ""), help="a worker key")
    p.add_argument(
        "--model", type=Path, help=f"an ONNX file (default: {DEFAULT_MODEL}, built when missing)"
    )
    p.add_argument(
        "--model-name", help="the name tasks ask for in input.model (default: the file's stem)"
    )
    p.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--max-batch", type=int, default=16, help="tasks per forward pass, at most")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a batch waits for more tasks after its first arrived",
    )
    p.add_argument("--pollers", type=int, default=0, help="polls per queue (default max-batch)")
    p.add_argument("--drain-timeout-s", type=float, default=30.0)
    p.add_argument("--stats-interval-s", type=float, default=10.0, help="stats line period")
    p.add_argument("--stats-file", type=Path, help="write the stats here as JSON on exit")
    p.add_argument(
        "--describe", action="store_true", help="print the model and provider as JSON and exit"
    )
    return p


async def _serve(worker: ModelWorker) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await worker.run(stop)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    if args.max_batch < 1 or args.max_wait_ms < 0 or args.pollers < 0:
        print("--max-batch must be >= 1, --max-wait-ms and --pollers >= 0", file=sys.stderr)
        return 2
    path = args.model or DEFAULT_MODEL
    if args.model is None and not path.exists():
        logger.info("building the default model at %s", path)
        build(path)
    try:
        model = Model(
            path, name=args.model_name or path.stem, provider=cast(Provider, args.provider)
        )
    except (UnsupportedModel, OSError) as e:
        print(f"python -m workers.ml_model: {e}", file=sys.stderr)
        return 2
    if args.describe:
        print(json.dumps(model.describe(), indent=2))
        return 0
    options = Options(
        address=args.address,
        namespace=args.namespace,
        task_queue=args.task_queue,
        identity=args.identity or f"{socket.gethostname()}:{os.getpid()}",
        max_batch=args.max_batch,
        max_wait_s=args.max_wait_ms / 1000,
        pollers=args.pollers,
        drain_timeout_s=args.drain_timeout_s,
        stats_interval_s=args.stats_interval_s,
        stats_file=args.stats_file,
        api_key=args.api_key,
    )
    asyncio.run(_serve(ModelWorker(model, options)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
