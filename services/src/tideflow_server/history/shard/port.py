"""The shard as the code that runs on it sees it.

Use cases (`api/<rpc>.py`), task executors (`tasks/`) and `progress.continue_run` type their
`shard` against `Shard`, and a shard's queues type theirs against `QueueOwner`: the members
they use, and nothing of how a shard keeps its cache, fences its writes or runs its queues
(`context.py:ShardContext` is the one implementation). So shard/ runs the executors without
importing them: server.py hands them to the ShardController, which gives them to each shard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeAlias, TypeVar

from tideflow.api.v1 import flow_service_pb2, history_pb2
from tideflow_server.config import HistoryConfig
from tideflow_server.history.blocks import Redispatch
from tideflow_server.history.flows import FlowCache
from tideflow_server.history.shard.direct import DirectDispatch
from tideflow_server.history.shard.execution import Execution
from tideflow_server.history.state import RunStep
from tideflow_server.history.visibility import VisibilityWriter
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.namespaces import NamespaceCache
from tideflow_server.persistence.manager import PersistenceManager, ShardLease
from tideflow_server.persistence.records import CreateMode, FlowCheck
from tideflow_server.rpc.clients import HistoryClient, MatchingClient
from tideflow_server.taskqueue_configs import TaskQueueConfigs

T = TypeVar("T")


class Shard(Protocol):
    """What use cases and executors use of the shard that owns their run."""

    config: HistoryConfig
    flows: FlowCache
    namespaces: NamespaceCache
    matching: MatchingClient
    history: HistoryClient
    """Routed to the shard that owns a run: starting a child run, reporting a child's close
    to its parent, applying a parent close policy."""
    manager: PersistenceManager
    redispatch: Redispatch
    visibility: VisibilityWriter
    direct: DirectDispatch | None
    task_queues: TaskQueueConfigs
    """Where a block task is added: its queue's partition count."""
    deletions: asyncio.Semaphore
    """Closed runs this host deletes at once (retention); shared by its shards."""
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

    async def delete_execution(self, entry: Execution) -> None:
        """Delete a closed execution: its visibility row, history, row and pointer (the
        caller holds `entry.lock`)."""
        ...

    def outbox_done_through(self, task_id: int) -> bool:
        """Every outbox (transfer) task with an id up to `task_id` is delivered."""
        ...

    async def scheduled_event(
        self, entry: Execution, scheduled_event_id: int
    ) -> history_pb2.HistoryEvent:
        """The BLOCK_SCHEDULED event of a pending block."""
        ...


class QueueOwner(Protocol):
    """What a shard's transfer and timer queues use of it: its lease and store, its settings,
    and the bounds of its in-flight commits (which their ack levels must not pass)."""

    lease: ShardLease
    manager: PersistenceManager
    config: HistoryConfig
    lost: bool

    @property
    def shard_id(self) -> int: ...

    def mark_lost(self) -> None: ...

    def min_inflight_task_id(self) -> int | None: ...

    def min_inflight_time_ms(self) -> int | None: ...


TimerExecutor: TypeAlias = Callable[[Shard, records_pb2.TimerTask], Awaitable[None]]
"""What a fired timer does (tasks/timer.py:fire)."""

TransferExecutor: TypeAlias = Callable[
    [Shard, records_pb2.TransferTask, flow_service_pb2.PollBlockTaskResponse | None],
    Awaitable[None],
]
"""What delivering an outbox task does (tasks/transfer.py:execute); the third argument is the
worker's task of a block started for direct dispatch, on its first try only."""
