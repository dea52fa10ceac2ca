"""Block definitions and the context a running block sees."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_DEFINITION_ATTR = "__tideflow_block__"


class BlockCancelled(Exception):
    """Raised by a sync block that saw `is_cancelled()` to acknowledge the cancellation."""


@dataclass(frozen=True, slots=True)
class BlockDefinition:
    """What `@block` records about a function."""

    name: str
    version: int
    fn: Callable[[Any], Any]
    is_async: bool

    @property
    def block_type(self) -> str:
        """The external block type, "name@version", that blueprints name."""
        return f"{self.name}@{self.version}"


def block(name: str, *, version: int = 1) -> Callable[[F], F]:
    """Mark `async def f(input)` or a sync `def f(input)` as external block type
    `name@version`. Sync functions run on the worker's thread pool."""
    if not name or "@" in name:
        raise ValueError(f"invalid block name {name!r}")
    if version < 1:
        raise ValueError(f"block version must be >= 1, got {version}")

    def mark(fn: F) -> F:
        definition = BlockDefinition(name, version, fn, inspect.iscoroutinefunction(fn))
        setattr(fn, _DEFINITION_ATTR, definition)
        return fn

    return mark


def definition_of(fn: Callable[..., Any]) -> BlockDefinition:
    """The definition `@block` attached to `fn`; TypeError when there is none."""
    definition = getattr(fn, _DEFINITION_ATTR, None)
    if not isinstance(definition, BlockDefinition):
        raise TypeError(f"{fn!r} is not decorated with @block")
    return definition


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """The attempt a block is running."""

    run_id: str
    execution_id: str
    block_id: str
    block_type: str
    attempt: int
    task_queue: str
    heartbeat_details: Any
    """Details of the last heartbeat of a previous attempt (None when there was none)."""
    heartbeat_timeout_s: float | None


class BlockContext:
    """Handed to a running block through `context()`."""

    def __init__(
        self,
        *,
        info: BlockInfo,
        loop: asyncio.AbstractEventLoop,
        record: Callable[[Any], None],
    ) -> None:
        self.info = info
        self._loop = loop
        self._record = record
        self._cancelled = threading.Event()

    async def heartbeat(self, details: Any = None) -> None:
        """Report progress from an async block; throttled, the latest details win."""
        self._record(details)

    def heartbeat_sync(self, details: Any = None) -> None:
        """Report progress from a sync block (any thread); throttled, latest details win."""
        self._loop.call_soon_threadsafe(self._record, details)

    def is_cancelled(self) -> bool:
        """Whether the server asked this attempt to stop."""
        return self._cancelled.is_set()

    def _set_cancelled(self) -> None:
        self._cancelled.set()


_current: contextvars.ContextVar[BlockContext] = contextvars.ContextVar("tideflow_block")


def context() -> BlockContext:
    """The context of the block running here; RuntimeError outside a block."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("tideflow.worker.context() called outside a block") from None


def _set_context(ctx: BlockContext) -> contextvars.Token[BlockContext]:
    return _current.set(ctx)
