"""A local OTLP collector: a real gRPC server speaking OpenTelemetry's trace export protocol.

Tests run it in-process and send it the spans of every process (servers and workers), to
look at one trace across processes. The bench runs it as a process of its own
(`python -m deploy.local.otlp --port N`), which counts the spans it receives and prints the
count when it stops, as the sink of a cluster whose tracing is on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    service: str
    instance: str
    attributes: dict[str, Any]
    kind: int


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, *, keep: bool = True) -> None:
        """`keep`: hold every span for `spans` (tests); else only count them."""
        self.spans: list[Span] = []
        self.received = 0
        self._keep = keep
        self._changed = asyncio.Condition()

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received: list[Span] = []
        if not self._keep:
            self.received += sum(
                len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans
            )
            return trace_service_pb2.ExportTraceServiceResponse()
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        Span(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            service=str(resource.get("service.name", "")),
                            instance=str(resource.get("service.instance.id", "")),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            kind=span.kind,
                        )
                    )
        async with self._changed:
            self.received += len(received)
            self.spans.extend(received)
            self._changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    async def wait_for(self, done: Callable[[list[Span]], bool], timeout_s: float = 30.0) -> None:
        """Until `done(spans)` holds (spans arrive in batches, as the exporters send them)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: done(self.spans)), timeout_s)


@asynccontextmanager
async def running_collector() -> AsyncIterator[tuple[Collector, str]]:
    """A collector on a free loopback port, and its address (host:port)."""
    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield collector, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def _serve(port: int) -> None:
    import signal  # noqa: PLC0415

    collector = Collector(keep=False)
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(1)
    print(f"spans {collector.received}", flush=True)


def main() -> None:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m deploy.local.otlp", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(_serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
