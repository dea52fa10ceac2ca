"""Run the Python example worker: `python -m workers.python_example [--blocks demo|conformance]`.

Serves its block set on one task queue until SIGTERM or SIGINT, then stops polling, lets running
blocks finish and answer (at most --drain-timeout-s) and exits 0. The flags are the ones every
example worker takes (Go: workers/go, TypeScript: workers/node).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import grpc

from tideflow import Worker
from workers.python_example.blocks import CONFORMANCE, DEMO

BLOCK_SETS = {"demo": DEMO, "conformance": CONFORMANCE}


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    worker = Worker(
        args.address,
        task_queue=args.task_queue,
        blocks=BLOCK_SETS[args.blocks],
        namespace=args.namespace,
        identity=args.identity or f"{socket.gethostname()}:{os.getpid()}",
        max_concurrent=args.max_concurrent,
        api_key=args.api_key or None,
        tls=_credentials(args),
    )
    runner = asyncio.create_task(worker.run())
    await stop.wait()
    await worker.shutdown(grace_s=args.drain_timeout_s)
    await runner


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | bool:
    if not (args.tls_ca or args.tls_cert):
        return False

    def read(path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(
        root_certificates=read(args.tls_ca),
        private_key=read(args.tls_key),
        certificate_chain=read(args.tls_cert),
    )


def _tracing() -> Callable[[], None] | None:
    """Spans of each block attempt exported over OTLP (gRPC) when the standard
    OTEL_EXPORTER_OTLP_ENDPOINT is set; the returned function flushes them at exit."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    from opentelemetry import trace  # noqa: PLC0415 - only when tracing
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    provider = TracerProvider(resource=Resource.create({"service.name": "tideflow-python-worker"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(insecure=True)))
    trace.set_tracer_provider(provider)
    return provider.shutdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.python_example", description=__doc__)
    parser.add_argument("--address", default="127.0.0.1:7233", help="frontend host:port")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--task-queue", default="python")
    parser.add_argument("--identity", default="", help="default host:pid")
    parser.add_argument("--max-concurrent", type=int, default=10)
    parser.add_argument("--blocks", choices=sorted(BLOCK_SETS), default="demo")
    parser.add_argument("--drain-timeout-s", type=float, default=30.0)
    parser.add_argument(
        "--api-key", default=os.environ.get("TIDEFLOW_API_KEY", ""), help="a worker key"
    )
    parser.add_argument("--tls-ca", default="", help="connect with TLS, trusting this CA (PEM)")
    parser.add_argument("--tls-cert", default="", help="client certificate (PEM), for mTLS")
    parser.add_argument("--tls-key", default="", help="the client certificate's key (PEM)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    flush = _tracing()
    try:
        asyncio.run(serve(args))
    finally:
        if flush is not None:
            flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
