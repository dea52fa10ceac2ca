"""Store interfaces: what every persistence backend implements.

Shaped so that each backend can keep the invariants in DESIGN.md:

- Everything of one shard (its shard row, executions, current-run pointers, outbox) is keyed
  by `shard_id` first, so Cassandra can hold it in one partition and fence a decision with a
  single-partition conditional batch, and SQL backends can fence it in one transaction.
- A decision (`UpdateExecution`) carries its history batches and outbox tasks, so a backend
  that cannot commit them atomically (Cassandra) appends the events first and relies on the
  rule that history is only visible below the committed `next_event_id`.
- Reads of history are bounded by the caller with that committed `next_event_id`.

Every method raises only the errors in `errors.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tideflow_server.persistence.records import (
    ApiKeyRow,
    BacklogTaskRow,
    ClusterMetadataRow,
    CreateExecution,
    CurrentRunRow,
    EventRow,
    EventWaitRow,
    ExecutionKey,
    ExecutionRow,
    FlowRow,
    HistoryBatch,
    MemberRow,
    NamespaceRow,
    Page,
    ShardRow,
    TaskQueueKey,
    TaskQueueRow,
    TimerTaskRow,
    TransferTaskRow,
    UpdateExecution,
    VisibilityFilter,
    VisibilityRow,
)


class ShardStore(Protocol):
    async def create_shard(self, row: ShardRow) -> None:
        """Insert a new shard row. AlreadyExists if another host created it first."""

    async def get_shard(self, shard_id: int) -> ShardRow:
        """NotFound if the shard was never created."""

    async def update_shard(self, row: ShardRow, *, previous_range_id: int) -> None:
        """Write the row if the stored range_id still equals `previous_range_id`, else raise
        ShardOwnershipLost. Acquisition is this call with `row.range_id = previous + 1`."""

    async def fence(self, shard_id: int, range_id: int) -> None:
        """A write that changes nothing, conditional on the shard's range_id still being
        `range_id` (else ShardOwnershipLost). Once it returns, every earlier write to the shard
        whose outcome was unknown is visible to reads, or never will be: on Cassandra a
        lightweight transaction left accepted but uncommitted is completed or superseded by
        this one's Paxos round; on PostgreSQL it waits for the transactions still fenced on
        the shard row."""


class ExecutionStore(Protocol):
    async def create_execution(self, request: CreateExecution) -> None:
        """Insert an execution, its current-run pointer, first events and outbox tasks.

        ShardOwnershipLost if the shard's range_id is not `request.range_id`;
        CurrentRunConditionFailed if the pointer does not allow `request.mode`;
        FlowChanged if `request.flow_check` names a version older than the latest
        registered one; AlreadyExists if the execution id is taken.
        """

    async def update_execution(self, request: UpdateExecution) -> None:
        """Commit one decision. ShardOwnershipLost on a stale range_id; ConditionFailed if
        the stored db_version is not `request.expected_db_version` (or the execution is gone).
        On those errors nothing of the request is visible. On Unavailable the outcome is
        unknown: the write may become visible later, until a `ShardStore.fence` of the shard
        returns."""

    async def get_execution(self, key: ExecutionKey) -> ExecutionRow:
        """NotFound if absent."""

    async def get_current_run(self, shard_id: int, namespace_id: str, run_id: str) -> CurrentRunRow:
        """The run_id's pointer. NotFound if the run_id never ran (or was deleted)."""

    async def delete_execution(self, key: ExecutionKey) -> None:
        """Remove the execution, and its pointer if the pointer names it. Idempotent."""

    async def get_transfer_tasks(
        self, shard_id: int, *, min_task_id: int, max_task_id: int, limit: int
    ) -> list[TransferTaskRow]:
        """Transfer tasks with min_task_id < task_id <= max_task_id, in task_id order."""

    async def complete_transfer_task(self, shard_id: int, task_id: int) -> None:
        """Delete one transfer task. Idempotent."""

    async def range_complete_transfer_tasks(self, shard_id: int, *, max_task_id: int) -> None:
        """Delete every transfer task with task_id <= max_task_id."""

    async def get_timer_tasks(
        self,
        shard_id: int,
        *,
        after: tuple[int, int],
        fire_before_ms: int,
        limit: int,
    ) -> list[TimerTaskRow]:
        """Timer tasks after the (fire_time_ms, task_id) cursor `after` and firing before
        `fire_before_ms`, in (fire_time_ms, task_id) order."""

    async def complete_timer_task(self, shard_id: int, *, fire_time_ms: int, task_id: int) -> None:
        """Delete one timer task. Idempotent."""

    async def range_complete_timer_tasks(self, shard_id: int, *, fire_before_ms: int) -> None:
        """Delete every timer task firing before `fire_before_ms`."""


class HistoryStore(Protocol):
    async def append_history(self, key: ExecutionKey, batches: list[HistoryBatch]) -> None:
        """Write batches outside a decision (backends whose decisions cannot include events
        call this first). Unfenced: what is written stays invisible until an execution's
        committed next_event_id covers it."""

    async def read_history(
        self,
        key: ExecutionKey,
        *,
        min_event_id: int,
        next_event_id: int,
        page_size: int,
        page_token: bytes | None = None,
    ) -> Page[HistoryBatch]:
        """Committed batches with min_event_id <= first_event_id < next_event_id, in event
        order, at most `page_size` a page (a page may be shorter when leftovers were skipped).

        `min_event_id` is 1 or a batch boundary (an earlier read's or the state's
        next_event_id). Leftovers of failed writes are never returned: of the batches that
        start at one event id only the one with the highest txn_id counts, and batches that
        start inside a committed batch are skipped."""

    async def trim_history(self, key: ExecutionKey, *, from_event_id: int) -> None:
        """Delete batches starting at or after `from_event_id` (garbage of a failed write)."""

    async def delete_history(self, key: ExecutionKey) -> None:
        """Delete all of an execution's history. Idempotent."""


class TaskStore(Protocol):
    async def create_task_queue(self, row: TaskQueueRow) -> None:
        """AlreadyExists if present."""

    async def get_task_queue(self, key: TaskQueueKey) -> TaskQueueRow:
        """NotFound if absent."""

    async def update_task_queue(self, row: TaskQueueRow, *, previous_range_id: int) -> None:
        """ConditionFailed unless the stored range_id equals `previous_range_id`. A matching
        host leases a partition by bumping range_id through this call."""

    async def delete_task_queue(self, key: TaskQueueKey, *, range_id: int) -> None:
        """ConditionFailed unless the stored range_id equals `range_id`."""

    async def create_backlog_tasks(
        self, key: TaskQueueKey, *, range_id: int, tasks: list[BacklogTaskRow]
    ) -> None:
        """Insert tasks if the queue's range_id still equals `range_id` (ConditionFailed
        otherwise: another matching host leased the partition)."""

    async def get_backlog_tasks(
        self, key: TaskQueueKey, *, after_task_id: int, max_task_id: int, limit: int
    ) -> list[BacklogTaskRow]:
        """Tasks with after_task_id < task_id <= max_task_id, in task_id order."""

    async def complete_backlog_tasks(self, key: TaskQueueKey, *, max_task_id: int) -> int:
        """Delete tasks with task_id <= max_task_id (the ack level). Returns how many."""

    async def count_backlog_tasks(self, key: TaskQueueKey) -> int:
        """How many tasks the partition holds."""


class MetadataStore(Protocol):
    async def create_namespace(self, row: NamespaceRow) -> None:
        """AlreadyExists if the id or the name is taken."""

    async def get_namespace_by_id(self, namespace_id: str) -> NamespaceRow:
        """NotFound if absent."""

    async def get_namespace_by_name(self, name: str) -> NamespaceRow:
        """NotFound if absent."""

    async def update_namespace(self, row: NamespaceRow) -> None:
        """Replace the data of the namespace with `row.id`. NotFound if absent."""

    async def list_namespaces(
        self, *, page_size: int, page_token: bytes | None = None
    ) -> Page[NamespaceRow]:
        """In name order."""

    async def create_flow(self, row: FlowRow) -> None:
        """AlreadyExists if name@version is registered: flows are immutable."""

    async def get_flow(self, namespace_id: str, name: str, version: int) -> FlowRow:
        """NotFound if absent."""

    async def get_latest_flow(self, namespace_id: str, name: str) -> FlowRow:
        """The highest version. NotFound if the name has none."""

    async def list_flows(
        self,
        namespace_id: str,
        *,
        name: str | None = None,
        page_size: int,
        page_token: bytes | None = None,
    ) -> Page[FlowRow]:
        """In (name, version) order."""

    async def create_api_key(self, row: ApiKeyRow) -> None:
        """AlreadyExists if the key id is taken."""

    async def get_api_key(self, key_id: str) -> ApiKeyRow:
        """NotFound if absent."""

    async def update_api_key(self, row: ApiKeyRow) -> None:
        """Replace the data of the key with `row.key_id`. NotFound if absent."""

    async def list_api_keys(self, namespace: str, *, limit: int) -> list[ApiKeyRow]:
        """The namespace's keys ("*": the cluster keys), at most `limit`, in key id order."""


class VisibilityStore(Protocol):
    async def upsert_run(self, row: VisibilityRow) -> None:
        """Insert or replace. Visibility tasks may arrive twice or out of order, so a row that
        is closed is never replaced by one that is open."""

    async def upsert_runs(self, rows: Sequence[VisibilityRow]) -> None:
        """`upsert_run` for each row, in one write. Rows may name the same run twice."""

    async def get_run(self, namespace_id: str, execution_id: str) -> VisibilityRow:
        """NotFound if absent."""

    async def list_runs(
        self,
        namespace_id: str,
        filter: VisibilityFilter,
        *,
        page_size: int,
        page_token: bytes | None = None,
    ) -> Page[VisibilityRow]:
        """Newest first: by start time, then execution id, both descending."""

    async def count_runs(self, namespace_id: str, filter: VisibilityFilter) -> int:
        """How many rows match."""

    async def delete_run(self, namespace_id: str, execution_id: str) -> None:
        """Idempotent."""


class EventStore(Protocol):
    """Published events of each namespace, and the event blocks waiting for them."""

    async def publish(self, row: EventRow) -> EventRow:
        """Keep the event unless the namespace keeps one of its id already; return the kept
        one (a retried publish gets the first)."""

    async def find_events(
        self,
        namespace_id: str,
        event_type: str,
        correlation_key: str,
        *,
        now_ms: int,
        limit: int,
    ) -> list[EventRow]:
        """Events of the type and key whose retention has not ended at `now_ms`, oldest
        first (by publish time, then event id), at most `limit`."""

    async def delete_expired_events(self, *, now_ms: int, limit: int) -> int:
        """Delete at most `limit` events whose retention ended; return how many went. A
        backend that expires rows itself (Cassandra's TTL) returns 0."""

    async def add_event_wait(self, row: EventWaitRow) -> None:
        """Idempotent."""

    async def remove_event_wait(self, row: EventWaitRow) -> None:
        """Nothing when it is gone."""

    async def event_waits(
        self, namespace_id: str, event_type: str, correlation_key: str, *, limit: int
    ) -> list[EventWaitRow]:
        """The waits for the type and key, at most `limit`, in no particular order."""


class ClusterStore(Protocol):
    async def init_cluster_metadata(self, row: ClusterMetadataRow) -> ClusterMetadataRow:
        """Insert if no metadata exists yet; return what is stored. The shard count is fixed
        by the first caller and never changes."""

    async def get_cluster_metadata(self) -> ClusterMetadataRow:
        """NotFound before the first init."""

    async def upsert_member(self, row: MemberRow) -> None:
        """Announce or refresh a host's membership."""

    async def list_members(self, *, now_ms: int, role: str | None = None) -> list[MemberRow]:
        """Members whose membership has not expired at `now_ms`, by host id."""

    async def prune_members(self, *, now_ms: int) -> int:
        """Delete expired members. Returns how many."""


class Persistence(Protocol):
    """One backend: every store, opened and closed together."""

    @property
    def backend(self) -> str: ...

    @property
    def shards(self) -> ShardStore: ...

    @property
    def executions(self) -> ExecutionStore: ...

    @property
    def history(self) -> HistoryStore: ...

    @property
    def tasks(self) -> TaskStore: ...

    @property
    def metadata(self) -> MetadataStore: ...

    @property
    def visibility(self) -> VisibilityStore: ...

    @property
    def cluster(self) -> ClusterStore: ...

    @property
    def events(self) -> EventStore: ...

    async def close(self) -> None: ...
