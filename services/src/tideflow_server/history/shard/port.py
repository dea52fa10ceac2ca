"""The shard as the code that runs on it sees it.

Use cases (`api/<rpc>.py`) and what fired timers do type their `shard` against `Shard`: the
members they use, and nothing of how a shard keeps its cache, fences its writes or runs its
queues (`context.py:ShardContext` is the one implementation).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeVar

from tideflow.api.v1 import history_pb2
from tideflow_server.config import HistoryConfig
from tideflow_server.history.blocks import Redispatch
from tideflow_server.history.flows import FlowCache
from tideflow_server.history.shard.direct import DirectDispatch
from tideflow_server.history.shard.execution import Execution
from tideflow_server.history.state import RunStep
from tideflow_server.history.visibility import VisibilityWriter
from tideflow_server.namespaces import NamespaceCache
from tideflow_server.persistence.manager import PersistenceManager
from tideflow_server.persistence.records import CreateMode, FlowCheck
from tideflow_server.rpc.clients import MatchingClient

T = TypeVar("T")


class Shard(Protocol):
    """What use cases and executors use of the shard that owns their run."""

    config: HistoryConfig
    flows: FlowCache
    namespaces: NamespaceCache
    matching: MatchingClient
    manager: PersistenceManager
    redispatch: Redispatch
    visibility: VisibilityWriter
    direct: DirectDispatch | None
    lost: bool

    @property
    def shard_id(self) -> int: ...

    async def current_execution_id(self, namespace_id: str, run_id: str) -> str:
        """The run_id's current execution; NOT_FOUND when there is none."""
        ...

    def execution_entry(self, namespace_id: str, run_id: str, execution_id: str) -> Execution:
        """The cache entry of an execution, loaded or not (a new one for `create`)."""
        ...

    def locked(
        self, namespace_id: str, run_id: str, execution_id: str
    ) -> AbstractAsyncContextManager[Execution]:
        """The execution, loaded and exclusively ours for the block (a look, no commit)."""
        ...

    async def update(
        self,
        namespace_id: str,
        run_id: str,
        execution_id: str,
        action: Callable[[Execution, RunStep], Awaitable[T]],
        *,
        salvaged: bool = False,
    ) -> T:
        """Run `action` on a fresh step of the execution and commit what it did (again, on a
        fresh step, when the execution changed meanwhile). `salvaged`: even on what could be
        read of a state that does not parse."""
        ...

    async def create(
        self,
        entry: Execution,
        step: RunStep,
        *,
        mode: CreateMode,
        previous_execution_id: str | None,
        flow_check: FlowCheck | None = None,
    ) -> None:
        """Commit a new execution (the caller holds `entry.lock`)."""
        ...

    async def scheduled_event(
        self, entry: Execution, scheduled_event_id: int
    ) -> history_pb2.HistoryEvent:
        """The BLOCK_SCHEDULED event of a pending block."""
        ...
