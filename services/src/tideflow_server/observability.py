"""Traces and metrics (OpenTelemetry), for the Prometheus, Grafana and Jaeger stacks operators
already run.

Each server process sets up one tracer provider and one meter provider from `telemetry`
settings (`configure`), and the code reaches them through `telemetry()`: its tracer and the
instruments below, named after OpenTelemetry's semantic conventions where one exists
(`rpc.server.call.duration`) and under `tideflow.` otherwise. The counters and histograms a
run touches dozens of times are kept by prometheus_client (`FastCounter`, `FastHistogram`)
under the names OpenTelemetry's Prometheus exporter would give them, because the
OpenTelemetry SDK's measurements cost several times more; the gauges, read once a scrape, are
OpenTelemetry's. Until `configure` runs (and when tracing or metrics are off) they are all
no-ops, so instrumented code never checks whether telemetry is on.

Traces cross processes as W3C `traceparent` metadata on every gRPC call (the `Tracing` layer
reads it, the stubs of the internal calls write it: `traced`), and a block's trace
context is stored with the block, so that the worker that runs it, whichever and whenever,
continues the run's trace.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final, Protocol, TypeVar, cast

import grpc
import structlog
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context as TraceContext
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tideflow.api.v1 import flow_service_pb2, history_pb2
from tideflow_server.config import TelemetryConfig
from tideflow_server.internal.v1 import history_service_pb2
from tideflow_server.rpc.interceptors import (
    Call,
    Layer,
    Method,
    Proceed,
    current_call,
    service_error,
)

log = structlog.get_logger(__name__)
_PROPAGATOR: Final = TraceContextTextMapPropagator()
S = TypeVar("S")
TRACEPARENT: Final = "traceparent"
SCOPE: Final = "tideflow"
_DURATION_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip


class _Family:
    """A metric family on the per-run path, kept by prometheus_client in the registry the
    OpenTelemetry reader serves too, so it is scraped from the same /metrics under the name
    OpenTelemetry's Prometheus exporter would give it (`tideflow.runs.started` becomes
    `tideflow_runs_started_total`). The OpenTelemetry SDK's add() and record() cost 5-10 us a
    measurement (attribute hashing, aggregation under a lock) against about 1 us here, and a
    run makes dozens of them (docs/performance.md). Its series are kept per label values
    (`series`), so a measurement costs one dict lookup and one observe or inc. Before
    `enable` (metrics off) every series is a no-op."""

    def __init__(self, name: str, description: str, labels: tuple[str, ...] = ()) -> None:
        self.labels = labels
        self._name, self._description = name, description
        self._metric: Any = None
        self._series: dict[tuple[str, ...], Any] = {}

    def _make(self, name: str, description: str, labels: list[str]) -> Any:
        raise NotImplementedError

    def enable(self) -> None:
        self._metric = self._make(
            self._name, self._description, [label.replace(".", "_") for label in self.labels]
        )

    def series(self, *values: str) -> Any:
        """The series of `values`, one for each of `labels`, in order."""
        found = self._series.get(values)
        if found is None:
            if self._metric is None:
                return _NO_SERIES
            found = self._series[values] = self._metric.labels(*values) if values else self._metric
        return found

    def bind(self, attributes: Mapping[str, Any]) -> Any:
        """The series of `attributes` (one value for each of `labels`)."""
        return self.series(*(str(attributes[k]) for k in self.labels))


class FastHistogram(_Family):
    """A histogram (`observe`), in seconds unless `buckets` says otherwise."""

    def __init__(
        self,
        name: str,
        description: str,
        labels: tuple[str, ...] = (),
        buckets: tuple[float, ...] = (),
    ) -> None:
        super().__init__(name, description, labels)
        self._buckets = buckets or _DURATION_BUCKETS

    def _make(self, name: str, description: str, labels: list[str]) -> Any:
        import prometheus_client  # noqa: PLC0415 - only with metrics on

        return prometheus_client.Histogram(name, description, labels, buckets=self._buckets)

    def bind(self, attributes: Mapping[str, Any]) -> Observer:
        series: Observer = super().bind(attributes)
        return series


class FastCounter(_Family):
    """A counter (`inc`); served as `<name>_total`."""

    def _make(self, name: str, description: str, labels: list[str]) -> Any:
        import prometheus_client  # noqa: PLC0415 - only with metrics on

        return prometheus_client.Counter(name, description, labels)

    def add(self, amount: int, attributes: Mapping[str, Any]) -> None:
        """Count `amount` in the series of `attributes` (off the per-run path)."""
        self.bind(attributes).inc(amount)


class Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class _NoSeries:
    def observe(self, amount: float) -> None:
        """Metrics are off."""

    def inc(self, amount: float = 1) -> None:
        """Metrics are off."""


_NO_SERIES: Final = _NoSeries()


class Telemetry:
    """The tracer and the instruments of one process."""

    def __init__(self, tracer: trace.Tracer, meter: metrics.Meter, *, tracing: bool) -> None:
        self.tracer = tracer
        self.tracing = tracing
        """Spans are recorded (and worth building attributes for)."""
        self.rpc_duration = FastHistogram(
            "rpc_server_call_duration_seconds",
            "gRPC calls served, by method and status (rpc.server.call.duration)",
            ("rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code"),
        )
        self.decision_duration = FastHistogram(
            "tideflow_history_decision_duration_seconds",
            "One history decision: load, decide, commit (tideflow.history.decision.duration)",
            ("tideflow.decision",),
        )
        self.commit_batch_size = FastHistogram(
            "tideflow_history_commit_batch_size",
            "Decisions a history host commits together (tideflow.history.commit.batch_size)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.persistence_duration = FastHistogram(
            "tideflow_persistence_operation_duration_seconds",
            "Persistence calls, by store and operation (tideflow.persistence.operation.duration)",
            ("tideflow.operation",),
        )
        self.persistence_errors = FastCounter(
            "tideflow_persistence_errors",
            "Persistence calls that failed, by operation and error (tideflow.persistence.errors)",
            ("tideflow.operation", "tideflow.error"),
        )
        self.shard_movements = FastCounter(
            "tideflow_history_shard_movements",
            "Shards acquired and lost by this host (tideflow.history.shard.movements)",
            ("tideflow.movement",),
        )
        self.runs_started = FastCounter(
            "tideflow_runs_started",
            "Runs started, by namespace (tideflow.runs.started)",
            ("tideflow.namespace",),
        )
        self.runs_closed = FastCounter(
            "tideflow_runs_closed",
            "Runs closed, by namespace and status (tideflow.runs.closed)",
            ("tideflow.namespace", "tideflow.status"),
        )
        self.tasks_added = FastCounter(
            "tideflow_matching_tasks_added",
            "Block tasks added to a task queue (tideflow.matching.tasks.added)",
            ("tideflow.task_queue", "tideflow.sync_match"),
        )
        self.blocks_dispatched = FastCounter(
            "tideflow_blocks_dispatched",
            "Block attempts handed to workers, by matching or by history directly"
            " (tideflow.blocks.dispatched)",
            ("tideflow.dispatched_by",),
        )
        self.tasks_dispatched = FastCounter(
            "tideflow_matching_tasks_dispatched",
            "Block tasks handed to a worker, by task queue (tideflow.matching.tasks.dispatched)",
            ("tideflow.task_queue",),
        )
        self.schedule_to_start = FastHistogram(
            "tideflow_matching_schedule_to_start_duration_seconds",
            "From a block attempt's schedule to its start, by task queue"
            " (tideflow.matching.schedule_to_start.duration)",
            ("tideflow.task_queue",),
        )
        self._meter = meter

    def enable(self) -> None:
        """Create the families in prometheus_client's registry (metrics on)."""
        import prometheus_client  # noqa: PLC0415 - only with metrics on

        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        for family in vars(self).values():
            if isinstance(family, _Family):
                family.enable()

    def observe(
        self,
        name: str,
        unit: str,
        description: str,
        read: Callable[[], Iterator[tuple[float, dict[str, str]]]],
    ) -> None:
        """A gauge read at each scrape: `read` yields (value, attributes)."""

        def callback(_: metrics.CallbackOptions) -> Iterator[metrics.Observation]:
            for value, attributes in read():
                yield metrics.Observation(value, attributes)

        self._meter.create_observable_gauge(
            name, callbacks=[callback], unit=unit, description=description
        )


@contextmanager
def decision(shard_id: int, run_id: str, kind: str | None = None) -> Iterator[trace.Span]:
    """One history decision: a span (current within, so the blocks it schedules keep its
    context) when tracing, and its duration either way. `kind`: what made it, by default the
    RPC being served ("timer" or "transfer" for the queues'). Set `tideflow.events` on the
    span."""
    if kind is None:
        call = current_call()
        kind = call.method.name if call is not None else "queue"
    t = _current
    start = time.perf_counter()
    try:
        if sampled():
            attributes: dict[str, str | int] = {
                "tideflow.shard": shard_id,
                "tideflow.run_id": run_id,
                "tideflow.decision": kind,
            }
            with t.tracer.start_as_current_span("history.decision", attributes=attributes) as span:
                yield span
        else:
            yield trace.INVALID_SPAN
    finally:
        t.decision_duration.series(kind).observe(time.perf_counter() - start)


def dispatched(trace_context: Mapping[str, str], block_id: str, by: str) -> None:
    """A block attempt handed to a worker (by matching, or by history directly): a span in
    the run's trace, child of the decision that scheduled it."""
    t = _current
    t.blocks_dispatched.series(by).inc()
    if t.tracing and _sampled_headers(trace_context):
        attributes = {"tideflow.block_id": block_id, "tideflow.dispatched_by": by}
        with t.tracer.start_as_current_span(
            "block.dispatch", context=extract(trace_context), attributes=attributes
        ):
            pass


@contextmanager
def attached(trace_context: Mapping[str, str]) -> Iterator[None]:
    """`trace_context` (W3C headers a message carried) as the current context within."""
    parent = extract(trace_context) if _current.tracing else None
    if parent is None or not _sampled_headers(trace_context):
        yield
        return
    token = otel_context.attach(parent)
    try:
        yield
    finally:
        otel_context.detach(token)


_CLOSES: Final = {
    history_pb2.EVENT_TYPE_RUN_COMPLETED: "completed",
    history_pb2.EVENT_TYPE_RUN_FAILED: "failed",
    history_pb2.EVENT_TYPE_RUN_TIMED_OUT: "timed_out",
    history_pb2.EVENT_TYPE_RUN_CANCELED: "canceled",
    history_pb2.EVENT_TYPE_RUN_TERMINATED: "terminated",
}


def count_runs(events: Sequence[history_pb2.HistoryEvent], namespace: Callable[[], str]) -> None:
    """Runs started and closed by a committed step's events."""
    if not _metrics_on:
        return
    t = _current
    for event in events:
        if event.event_type == history_pb2.EVENT_TYPE_RUN_STARTED:
            t.runs_started.series(namespace()).inc()
        elif (status := _CLOSES.get(event.event_type)) is not None:
            t.runs_closed.series(namespace(), status).inc()


def task_added(task_queue: str, *, sync_matched: bool) -> None:
    """A block task added to a task queue: handed to a waiting poll at once, or backlogged."""
    _current.tasks_added.series(task_queue, "true" if sync_matched else "false").inc()


def task_dispatched(
    task_queue: str, started: history_service_pb2.RecordBlockStartedResponse, block_id: str
) -> None:
    """A block task matching handed to a poll: counted, its schedule-to-start latency, and a
    span in the run's trace."""
    if _metrics_on:
        t = _current
        t.tasks_dispatched.series(task_queue).inc()
        waited_ns = (
            started.started_time.ToNanoseconds()
            - started.current_attempt_scheduled_time.ToNanoseconds()
        )
        t.schedule_to_start.series(task_queue).observe(max(0, waited_ns) / 1e9)
    dispatched(started.trace_context, block_id, "matching")


def direct_dispatched(task_queue: str, task: flow_service_pb2.PollBlockTaskResponse) -> None:
    """A task history started in its commit (direct dispatch), handed to a poll by matching."""
    _current.tasks_dispatched.series(task_queue).inc()
    dispatched(task.trace_context, task.block_id, "history")


_current = Telemetry(
    trace.NoOpTracerProvider().get_tracer(SCOPE),
    metrics.NoOpMeterProvider().get_meter(SCOPE),
    tracing=False,
)


def telemetry() -> Telemetry:
    return _current


# -- trace context ---------------------------------------------------------------------------


def sampled() -> bool:
    """Whether the current trace is being recorded (this process's span, or a caller's)."""
    return _current.tracing and trace.get_current_span().get_span_context().trace_flags.sampled


def inject() -> dict[str, str]:
    """The current span as W3C headers, when its trace is sampled; else empty (nothing worth
    storing or sending along a stream)."""
    if not sampled():
        return {}
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


def _sampled_headers(carrier: Mapping[str, str]) -> bool:
    """The W3C `traceparent`'s sampled flag (the low bit of its last field)."""
    flags = carrier.get(TRACEPARENT, "")[-2:]
    try:
        return bool(int(flags, 16) & 1)
    except ValueError:
        return False


def extract(carrier: Mapping[str, str]) -> TraceContext | None:
    """The context W3C headers carry, or None without a `traceparent`."""
    if not carrier or TRACEPARENT not in carrier:
        return None
    return _PROPAGATOR.extract(dict(carrier))


def _metadata_carrier(call: Call) -> dict[str, str]:
    carrier: dict[str, str] = {}
    for key, value in call.context.invocation_metadata() or ():
        if key in ("traceparent", "tracestate"):
            carrier[key] = value if isinstance(value, str) else value.decode("latin-1")
    return carrier


def _status_of(call: Call, error: BaseException) -> grpc.StatusCode:
    if isinstance(error, grpc.aio.AbortError):
        code = call.context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    if isinstance(error, Exception):
        return service_error(error).code
    return grpc.StatusCode.CANCELLED


class Tracing(Layer):
    """A SERVER span per call, child of the caller's `traceparent` when it sends one."""

    def __init__(self, t: Telemetry) -> None:
        self._t = t

    def applies(self, method: Method) -> bool:
        return not method.streaming and not method.service.startswith("grpc.")

    async def unary(self, call: Call, request: Any, proceed: Proceed) -> Any:
        method = call.method
        carrier = _metadata_carrier(call)
        parent = extract(carrier)
        if parent is not None and not _sampled_headers(carrier):
            # A caller that decided not to trace: follow it, at the cost of its context only.
            token = otel_context.attach(parent)
            try:
                return await proceed(request, call)
            finally:
                otel_context.detach(token)
        with self._t.tracer.start_as_current_span(
            method.path[1:],
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": method.service,
                "rpc.method": method.name,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await proceed(request, call)
            except BaseException as e:
                code = _status_of(call, e)
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                span.set_status(Status(StatusCode.ERROR, code.name))
                raise


class Metrics(Layer):
    """`rpc.server.call.duration` of every call, by method and status code."""

    def __init__(self, t: Telemetry) -> None:
        self._histogram = t.rpc_duration
        self._series: dict[tuple[str, str, int], Observer] = {}

    def applies(self, method: Method) -> bool:
        return not method.streaming

    def _series_of(self, method: Method, code: grpc.StatusCode) -> Observer:
        key = (method.service, method.name, code.value[0])
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self._histogram.bind(
                {
                    "rpc.system": "grpc",
                    "rpc.service": method.service,
                    "rpc.method": method.name,
                    "rpc.grpc.status_code": code.value[0],
                }
            )
        return series

    async def unary(self, call: Call, request: Any, proceed: Proceed) -> Any:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await proceed(request, call)
        except BaseException as e:
            code = _status_of(call, e)
            raise
        finally:
            self._series_of(call.method, code).observe(time.perf_counter() - start)


def layers() -> list[Layer]:
    """Tracing and metrics, first in every server's chain, each only when it is on."""
    t = _current
    chosen: list[Layer] = []
    if t.tracing:
        chosen.append(Tracing(t))
    if _metrics_on:
        chosen.append(Metrics(t))
    return chosen


class _TracedStub:
    """A generated stub whose every call carries the current span as `traceparent` metadata
    (sampled or not, so the callee follows this side's sampling decision). Cheaper than a
    grpc.aio client interceptor, which turns each call into an intercepted call of its own."""

    def __init__(self, stub: object) -> None:
        self._stub = stub

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)

        def call(request: Any, **kwargs: Any) -> Any:
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier)
            if carrier:
                kwargs["metadata"] = (*kwargs.get("metadata", ()), *carrier.items())
            return method(request, **kwargs)

        setattr(self, name, call)
        return call


def traced(stub: S) -> S:
    """`stub`, propagating trace context on its calls when tracing is on; else itself."""
    return cast(S, _TracedStub(stub)) if _current.tracing else stub


Gauges = Callable[[], Iterator[tuple[str, float, dict[str, str]]]]
"""Yields (which, value, attributes) at each scrape."""


def _gauge(name: str, unit: str, description: str, which: str, read: Gauges) -> None:
    def values() -> Iterator[tuple[float, dict[str, str]]]:
        for kind, value, attributes in read():
            if kind == which:
                yield value, attributes

    _current.observe(name, unit, description, values)


def watch_matching(read: Gauges) -> None:
    """A matching host's task queues: backlog ("backlog"), oldest task's age ("age"),
    pollers ("pollers"), each by task queue."""
    if not _metrics_on:
        return
    _gauge(
        "tideflow.matching.backlog.count",
        "{task}",
        "Block tasks waiting in a task queue's partitions on this host (an estimate)",
        "backlog",
        read,
    )
    _gauge(
        "tideflow.matching.backlog.age",
        "s",
        "Age of the oldest block task waiting in memory, by task queue",
        "age",
        read,
    )
    _gauge("tideflow.matching.pollers", "{poller}", "Workers polling lately", "pollers", read)


def watch_history(read: Gauges) -> None:
    """A history host: shards owned ("shards"), and its outbox and timer queues' lag
    ("lag", by queue) and tasks in delivery ("pending", by queue)."""
    if not _metrics_on:
        return
    _gauge("tideflow.history.shards.owned", "{shard}", "Shards this host owns", "shards", read)
    _gauge(
        "tideflow.history.queue.lag",
        "s",
        "How long the oldest due outbox task or timer has waited, by queue",
        "lag",
        read,
    )
    _gauge(
        "tideflow.history.queue.pending",
        "{task}",
        "Outbox tasks and timers being delivered, by queue",
        "pending",
        read,
    )


def shard_moved(movement: str) -> None:
    """A shard acquired, released or lost by this host."""
    _current.shard_movements.series(movement).inc()


def metrics_on() -> bool:
    return _metrics_on


# -- set up ---------------------------------------------------------------------------------

_metrics_on = False


def configure(config: TelemetryConfig, *, service: str, instance: str) -> int | None:
    """Set this process's providers from `config` (once; a later call changes nothing) and
    start the Prometheus endpoint. Returns the endpoint's port, if it serves one."""
    global _current, _metrics_on  # noqa: PLW0603 - one set of providers per process
    if _current.tracing or _metrics_on:
        return None
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - only when on

    resource = Resource.create({"service.name": service, "service.instance.id": instance})
    tracer: trace.Tracer = trace.NoOpTracerProvider().get_tracer(SCOPE)
    meter: metrics.Meter = metrics.NoOpMeterProvider().get_meter(SCOPE)
    port: int | None = None
    if config.tracing.enabled:
        tracer = _tracer_provider(config, resource).get_tracer(SCOPE)
    if config.metrics.prometheus_port is not None:
        provider, port = _meter_provider(config, resource)
        meter = provider.get_meter(SCOPE)
        _metrics_on = True
    _current = Telemetry(tracer, meter, tracing=config.tracing.enabled)
    if _metrics_on:
        _current.enable()
    return port


def _tracer_provider(config: TelemetryConfig, resource: Any) -> trace.TracerProvider:
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: PLC0415

    tracing = config.tracing
    exporter: Any
    if tracing.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        exporter = OTLPSpanExporter(endpoint=tracing.otlp_endpoint, insecure=True)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as HttpSpanExporter,
        )

        exporter = HttpSpanExporter(endpoint=tracing.otlp_endpoint)
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(tracing.sample_ratio))
    )
    provider.add_span_processor(
        BatchSpanProcessor(exporter, schedule_delay_millis=tracing.export_delay_ms)
    )
    trace.set_tracer_provider(provider)
    return provider


def _meter_provider(config: TelemetryConfig, resource: Any) -> tuple[metrics.MeterProvider, int]:
    import prometheus_client  # noqa: PLC0415
    from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.view import (  # noqa: PLC0415
        ExplicitBucketHistogramAggregation,
        View,
    )

    reader = PrometheusMetricReader()
    seconds = View(
        instrument_name="*duration",
        aggregation=ExplicitBucketHistogramAggregation(_DURATION_BUCKETS),
    )
    provider = MeterProvider(resource=resource, metric_readers=[reader], views=[seconds])
    metrics.set_meter_provider(provider)
    wanted = config.metrics.prometheus_port or 0
    server, _ = prometheus_client.start_http_server(wanted, addr=config.metrics.prometheus_host)
    port = int(server.server_port)
    log.info("metrics served", url=f"http://{config.metrics.prometheus_host}:{port}/metrics")
    return provider, port


def flush() -> None:
    """Send the spans still waiting (a stopping process)."""
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if callable(force_flush):
        force_flush(5_000)
