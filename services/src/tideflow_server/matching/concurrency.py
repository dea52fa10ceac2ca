"""Concurrency limits of a task queue: at most `max_concurrency` started, unfinished tasks of
the queue, and at most `block_concurrency[type]` of one block type, cluster-wide.

The rule: a limited queue dispatches from its root partition (0) only, which keeps the slots;
its other partitions dispatch none of its tasks (the partitions' forwarding sends them to the
root). A slot is held by one started attempt:
1. A poll that takes a task of a limited queue or type reserves a slot (counted at once, so
   concurrent polls cannot overshoot) and asks history to start the attempt, saying it is
   limited (RecordBlockStartedRequest.concurrency_limited).
2. History started it: the reservation becomes a held slot, written to the root partition's
   row (TaskQueueInfo.slots, fenced on the range_id; concurrent changes share one write)
   before the worker gets the task, so a new owner after a move or a crash knows it. History
   refused it (stale, busy): the reservation is dropped.
3. When the attempt closes for any reason (completed, failed, timed out, canceled, retried,
   its run closed), history's outbox calls ReleaseConcurrencySlot: the slot is dropped and
   written. A worker that dies holds its slot until the attempt times out in history
   (start-to-close or heartbeat; every external block has start-to-close or schedule-to-close).

Every started task of a limited queue holds a slot, counted against the limits that apply to
it (a type without a limit of its own counts only against `max_concurrency`): so a limit set
later counts what already runs, and history knows from the attempt that its queue is limited
and starts none of the run's next blocks eagerly (eager dispatch would bypass the slots).
Tasks of a type whose limit is reached are skipped, not waited on: other types still dispatch.
Queues without limits reserve nothing, write nothing, and history sends no release.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

from google.protobuf import timestamp_pb2

from tideflow.api.v1 import task_queue_pb2
from tideflow_server.internal.v1 import records_pb2

SlotKey = tuple[str, str, str, int, int]
"""One attempt: namespace id, run id, execution id, scheduled event id, attempt."""

ROOT_PARTITION = 0


def has_limits(config: task_queue_pb2.TaskQueueConfig) -> bool:
    """The queue limits concurrency, for all its tasks or for some block type."""
    return config.max_concurrency > 0 or any(n > 0 for n in config.block_concurrency.values())


def dispatches_here(config: task_queue_pb2.TaskQueueConfig, partition: int) -> bool:
    """Whether a partition may dispatch the queue's tasks (see the rule above)."""
    return partition == ROOT_PARTITION or not has_limits(config)


def task_slot_key(info: records_pb2.BacklogTask) -> SlotKey:
    return (
        info.namespace_id,
        info.run_id,
        info.execution_id,
        info.scheduled_event_id,
        info.attempt,
    )


def slot_key(slot: records_pb2.ConcurrencySlot) -> SlotKey:
    return (
        slot.namespace_id,
        slot.run_id,
        slot.execution_id,
        slot.scheduled_event_id,
        slot.attempt,
    )


class ConcurrencySlots:
    """The slots of one task queue, kept by its root partition: held (started, persisted) and
    reserved (a poll is asking history to start the attempt). Both count against the limits.
    `write` persists the held slots (fenced); `clock` is wall time in seconds."""

    def __init__(
        self,
        held: Iterable[records_pb2.ConcurrencySlot],
        *,
        write: Callable[[list[records_pb2.ConcurrencySlot]], Awaitable[None]],
        clock: Callable[[], float],
    ) -> None:
        self._held: dict[SlotKey, records_pb2.ConcurrencySlot] = {}
        self._reserved: dict[SlotKey, str] = {}  # -> block type
        self._by_type: Counter[str] = Counter()
        for slot in held:
            if slot_key(slot) not in self._held:
                self._held[slot_key(slot)] = slot
                self._by_type[slot.block_type] += 1
        self._write = write
        self._clock = clock
        # Group commit of the held slots: every change bumps `_changes`; a write covers every
        # change made before it began, so callers queued behind one write need no other.
        self._changes = 0
        self._written = 0
        self._writing: asyncio.Future[None] | None = None

    # -- accounting ----------------------------------------------------------------------

    @property
    def in_use(self) -> int:
        return len(self._held) + len(self._reserved)

    def in_use_by_type(self) -> dict[str, int]:
        return {t: n for t, n in sorted(self._by_type.items()) if n > 0 and t}

    def held(self) -> list[records_pb2.ConcurrencySlot]:
        return [self._held[k] for k in sorted(self._held)]

    def full(self, config: task_queue_pb2.TaskQueueConfig) -> bool:
        """No task of the queue can start now: the queue-wide limit is reached."""
        return 0 < config.max_concurrency <= self.in_use

    def eligible(
        self, config: task_queue_pb2.TaskQueueConfig, info: records_pb2.BacklogTask
    ) -> bool:
        """A slot is free for the task (or it needs none)."""
        block_type = info.dispatch.block_type
        if self.full(config):
            return False
        type_limit = config.block_concurrency.get(block_type, 0)
        return type_limit <= 0 or self._by_type[block_type] < type_limit

    def reserve(
        self, config: task_queue_pb2.TaskQueueConfig, info: records_pb2.BacklogTask
    ) -> bool:
        """Count a slot for the task while its start is asked for; False when it needs none
        (the queue has no limits). Call only for an eligible task."""
        block_type = info.dispatch.block_type
        key = task_slot_key(info)
        if not has_limits(config) or key in self._reserved or key in self._held:
            return False
        self._reserved[key] = block_type
        self._by_type[block_type] += 1
        return True

    def unreserve(self, info: records_pb2.BacklogTask) -> bool:
        """The start was not recorded: the reserved slot is free again."""
        block_type = self._reserved.pop(task_slot_key(info), None)
        if block_type is None:
            return False
        self._by_type[block_type] -= 1
        return True

    def confirm(self, info: records_pb2.BacklogTask) -> bool:
        """History recorded the start: the reserved slot is held. False when it was released
        meanwhile (the attempt closed before its start came back): nothing to hold."""
        key = task_slot_key(info)
        block_type = self._reserved.pop(key, None)
        if block_type is None:
            return False
        acquired = timestamp_pb2.Timestamp()
        acquired.FromNanoseconds(int(self._clock() * 1e9))
        self._held[key] = records_pb2.ConcurrencySlot(
            namespace_id=info.namespace_id,
            run_id=info.run_id,
            execution_id=info.execution_id,
            scheduled_event_id=info.scheduled_event_id,
            attempt=info.attempt,
            block_type=block_type,
            acquire_time=acquired,
        )
        self._changes += 1
        return True

    def release(self, slot: records_pb2.ConcurrencySlot) -> bool:
        """The attempt closed: free its slot, held or still reserved. False when it holds
        none (released already: a redelivered release is a no-op)."""
        key = slot_key(slot)
        held = self._held.pop(key, None)
        if held is not None:
            self._by_type[held.block_type] -= 1
            self._changes += 1
            return True
        block_type = self._reserved.pop(key, None)
        if block_type is None:
            return False
        self._by_type[block_type] -= 1
        return True

    # -- persistence ---------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return self._written < self._changes

    async def flush(self) -> None:
        """Until the held slots as they are now are durable. Concurrent callers share writes:
        one that finds a write under way waits for it, then writes once for all that came
        while it ran."""
        wanted = self._changes
        while self._written < wanted:
            if self._writing is None:
                self._writing = asyncio.ensure_future(self._write_held())
            # Shielded: a caller that goes away must not cancel the write midway.
            await asyncio.shield(self._writing)

    async def _write_held(self) -> None:
        changes = self._changes
        try:
            await self._write(self.held())
            self._written = max(self._written, changes)
        finally:
            self._writing = None
