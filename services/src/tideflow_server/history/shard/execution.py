"""A cached execution: one run execution's loaded state, its lock, and what this host
remembers of its latest events. A shard keeps these (context.py); use cases and executors
get them from the shard's `locked` and `update` (port.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tideflow.api.v1 import history_pb2
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.persistence.manager import LoadedExecution
from tideflow_server.rpc.errors import FailedPrecondition


@dataclass(eq=False)
class Execution:
    """A cached execution. `loaded` is None until read, and again after a failed commit."""

    namespace_id: str
    run_id: str
    execution_id: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    loaded: LoadedExecution | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    scheduled_events: dict[int, history_pb2.HistoryEvent] = field(default_factory=dict)
    last_batch: list[history_pb2.HistoryEvent] = field(default_factory=list)
    """The events of the last batch this host committed (empty after a reload), so a reader
    waiting for the next events, or the close event, gets them without a history read."""

    @property
    def state(self) -> records_pb2.MutableState:
        """The run's state; FAILED_PRECONDITION when the stored state does not parse, for
        nothing can be decided on part of a state (only TerminateRun goes on, see
        `salvaged_state`)."""
        loaded = self.salvaged
        if loaded.unreadable:
            raise FailedPrecondition(
                f"run {self.run_id!r} execution {self.execution_id}: its stored state cannot be "
                f"read ({loaded.unreadable}); TerminateRun can still close it",
                reason="RUN_STATE_UNREADABLE",
            )
        return loaded.state

    @property
    def salvaged(self) -> LoadedExecution:
        """What was loaded, readable or not (`LoadedExecution.unreadable`)."""
        assert self.loaded is not None, "execution used outside ShardContext.locked"
        return self.loaded

    def notify(self) -> None:
        """Wake readers waiting for new events, and arm a fresh event for the next ones."""
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()
