"""Telemetry of the stores: a decorator over the store interfaces that times every call, counts
the ones that fail by error, and, inside a traced call, makes each a span.

Like fault injection (faults.py) it wraps the interfaces rather than subclassing a backend, so
every backend is measured alike; with telemetry off the stores are not wrapped at all. The
instruments come from the caller (the server's `observability.telemetry()`), so persistence
knows nothing of how they are exported.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol, cast

from opentelemetry import trace

from tideflow_server.persistence import errors as store
from tideflow_server.persistence.interfaces import Persistence

STORES: Final = (
    "shards",
    "executions",
    "history",
    "tasks",
    "metadata",
    "visibility",
    "cluster",
    "events",
)


class Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class Histogram(Protocol):
    def bind(self, attributes: Mapping[str, str]) -> Observer: ...


class Counter(Protocol):
    def add(self, amount: int, attributes: dict[str, str]) -> None: ...


class _Instruments:
    def __init__(self, duration: Histogram, errors: Counter, tracer: trace.Tracer | None) -> None:
        self.duration = duration
        self.errors = errors
        self.tracer = tracer


class _Store:
    """One store, each coroutine method timed (wrapped on first use, then cached)."""

    def __init__(self, name: str, inner: object, instruments: _Instruments) -> None:
        self._name = name
        self._inner = inner
        self._instruments = instruments

    def __getattr__(self, attribute: str) -> Any:
        method = getattr(self._inner, attribute)
        if not inspect.iscoroutinefunction(method):
            return method
        timed = _timed(f"{self._name}.{attribute}", method, self._instruments)
        setattr(self, attribute, timed)
        return timed


def _timed(
    operation: str, method: Callable[..., Awaitable[Any]], instruments: _Instruments
) -> Callable[..., Awaitable[Any]]:
    attributes = {"tideflow.operation": operation}
    duration = instruments.duration.bind(attributes)
    error_attributes: dict[str, dict[str, str]] = {}
    span_name = f"persistence.{operation}"

    async def call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            tracer = instruments.tracer
            # A span only inside a recorded one: an untraced call costs no span object.
            if tracer is not None and trace.get_current_span().is_recording():
                with tracer.start_as_current_span(span_name, attributes=attributes):
                    return await method(*args, **kwargs)
            return await method(*args, **kwargs)
        except store.PersistenceError as e:
            kind = type(e).__name__
            labelled = error_attributes.get(kind)
            if labelled is None:
                labelled = error_attributes[kind] = {**attributes, "tideflow.error": kind}
            instruments.errors.add(1, labelled)
            raise
        finally:
            duration.observe(time.perf_counter() - start)

    return call


class _Persistence:
    def __init__(self, inner: Persistence, instruments: _Instruments) -> None:
        self._inner = inner
        for name in STORES:
            setattr(self, name, _Store(name, getattr(inner, name), instruments))

    @property
    def backend(self) -> str:
        return self._inner.backend

    async def close(self) -> None:
        await self._inner.close()

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)


def instrument(
    persistence: Persistence,
    *,
    duration: Histogram,
    errors: Counter,
    tracer: trace.Tracer | None,
) -> Persistence:
    """`persistence` with every store call measured (`tracer`: spans too, inside traces)."""
    return cast(Persistence, _Persistence(persistence, _Instruments(duration, errors, tracer)))
