"""Rows the stores read and write.

Stores are deliberately dumb: they move bytes and the few columns they index or fence on.
Serialized payloads (`data`) are protobuf messages from proto/, encoded and decoded by the
manager, never by a store. Times are integer milliseconds since the Unix epoch.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class RunState(enum.IntEnum):
    """Lifecycle of an execution as the current-run pointer needs it (not the public status)."""

    CREATED = 1
    RUNNING = 2
    CLOSED = 3


class CreateMode(enum.Enum):
    """How a new execution relates to the run_id's current-run pointer."""

    BRAND_NEW = "brand_new"
    """No pointer may exist for the run_id."""
    REUSE_CLOSED = "reuse_closed"
    """The pointer must name `previous_execution_id`, and that execution must be closed."""


@dataclass(frozen=True, slots=True)
class ShardRow:
    shard_id: int
    range_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ExecutionKey:
    shard_id: int
    namespace_id: str
    run_id: str
    execution_id: str


@dataclass(frozen=True, slots=True)
class ExecutionRow:
    namespace_id: str
    run_id: str
    execution_id: str
    next_event_id: int
    """First event id not yet committed: history is visible up to here and no further."""
    db_version: int
    state: RunState
    data: bytes


@dataclass(frozen=True, slots=True)
class CurrentRunRow:
    """The run_id's pointer to its latest execution; at most one per (namespace, run_id)."""

    namespace_id: str
    run_id: str
    execution_id: str
    state: RunState
    status: int
    """Public `RunStatus` value, so reuse policies decide without loading mutable state."""
    start_request_id: str


@dataclass(frozen=True, slots=True)
class HistoryBatch:
    """Events committed together. `txn_id` comes from the shard's fenced id range, so for one
    first_event_id the batch with the highest txn_id is the one that was committed last."""

    first_event_id: int
    event_count: int
    txn_id: int
    data: bytes

    @property
    def next_event_id(self) -> int:
        return self.first_event_id + self.event_count


@dataclass(frozen=True, slots=True)
class TransferTaskRow:
    task_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TimerTaskRow:
    fire_time_ms: int
    task_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class FlowCheck:
    """A create that started the latest version of a flow as a cache knew it: it commits only
    while no newer version of flow `name` is registered (`FlowChanged` otherwise)."""

    name: str
    version: int


@dataclass(frozen=True, slots=True)
class CreateExecution:
    shard_id: int
    range_id: int
    mode: CreateMode
    execution: ExecutionRow
    current: CurrentRunRow
    previous_execution_id: str | None = None
    events: Sequence[HistoryBatch] = ()
    transfer_tasks: Sequence[TransferTaskRow] = ()
    timer_tasks: Sequence[TimerTaskRow] = ()
    flow_check: FlowCheck | None = None


@dataclass(frozen=True, slots=True)
class UpdateExecution:
    """One decision: new state, its events and outbox tasks, committed together or not at all.

    `execution.db_version` must be `expected_db_version + 1`. `current` rewrites the run_id's
    pointer (state/status on close) and only applies while it still names this execution.
    """

    shard_id: int
    range_id: int
    execution: ExecutionRow
    expected_db_version: int
    current: CurrentRunRow | None = None
    events: Sequence[HistoryBatch] = ()
    transfer_tasks: Sequence[TransferTaskRow] = ()
    timer_tasks: Sequence[TimerTaskRow] = ()


def write_bytes(request: CreateExecution | UpdateExecution) -> int:
    """Bytes of state, events and outbox tasks a write carries (what bounds a group commit)."""
    return (
        len(request.execution.data)
        + sum(len(b.data) for b in request.events)
        + sum(len(t.data) for t in request.transfer_tasks)
        + sum(len(t.data) for t in request.timer_tasks)
    )


@dataclass(frozen=True, slots=True)
class TaskQueueKey:
    namespace_id: str
    name: str
    kind: int
    partition: int


@dataclass(frozen=True, slots=True)
class TaskQueueRow:
    key: TaskQueueKey
    range_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class BacklogTaskRow:
    task_id: int
    expiry_ms: int | None
    data: bytes


@dataclass(frozen=True, slots=True)
class NamespaceRow:
    id: str
    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    key_id: str
    namespace: str
    """A namespace name, or "*" for a cluster key."""
    data: bytes
    """An ApiKeyRecord."""


@dataclass(frozen=True, slots=True)
class FlowRow:
    namespace_id: str
    name: str
    version: int
    create_time_ms: int
    data: bytes


@dataclass(frozen=True, slots=True)
class VisibilityRow:
    namespace_id: str
    run_id: str
    execution_id: str
    flow_name: str
    flow_version: int
    task_queue: str
    status: int
    start_time_ms: int
    close_time_ms: int | None = None
    history_length: int = 0
    memo: bytes = b""


@dataclass(frozen=True, slots=True)
class VisibilityFilter:
    statuses: frozenset[int] = field(default_factory=frozenset)
    """Empty matches every status."""
    flow_name: str | None = None
    run_id: str | None = None
    start_time_min_ms: int | None = None
    start_time_max_ms: int | None = None
    """Exclusive upper bound."""


@dataclass(frozen=True, slots=True)
class ClusterMetadataRow:
    cluster_name: str
    history_shard_count: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class MemberRow:
    host_id: str
    role: str
    rpc_address: str
    session_start_ms: int
    last_heartbeat_ms: int
    expires_ms: int


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: bytes | None
    """None when there is nothing after this page."""


@dataclass(frozen=True, slots=True)
class EventRow:
    """A published event, kept in its namespace until `expire_ms` (its retention)."""

    namespace_id: str
    event_id: str
    event_type: str
    correlation_key: str
    publish_time_ms: int
    expire_ms: int
    data: bytes
    """The event's payload (a serialized `Payloads`)."""


@dataclass(frozen=True, slots=True)
class EventWaitRow:
    """An event block of a run that waits for events of a type and correlation key."""

    namespace_id: str
    event_type: str
    correlation_key: str
    run_id: str
    execution_id: str
    block_id: str
