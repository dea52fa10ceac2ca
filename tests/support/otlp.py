"""A test OTLP collector: a real gRPC server speaking OpenTelemetry's trace export protocol,
which every process of a test (servers and workers) sends its spans to, so a test can look at
one trace across processes."""

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
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._changed = asyncio.Condition()

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received: list[Span] = []
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
