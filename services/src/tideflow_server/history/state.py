"""One atomic step of a run: a working copy of its mutable state, the events the step appends
and the outbox tasks it causes. The step is committed whole (state, events and tasks
together) or not at all; nothing here does I/O."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.message import Message

from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2
from tideflow_server.internal.v1 import records_pb2

CLOSED_STATUSES = frozenset(
    {
        common_pb2.RUN_STATUS_COMPLETED,
        common_pb2.RUN_STATUS_FAILED,
        common_pb2.RUN_STATUS_CANCELED,
        common_pb2.RUN_STATUS_TERMINATED,
        common_pb2.RUN_STATUS_TIMED_OUT,
    }
)


class RunStep:
    def __init__(self, state: records_pb2.MutableState, *, now: datetime) -> None:
        self.state = state
        self.now = now
        self.events: list[history_pb2.HistoryEvent] = []
        self.transfer_tasks: list[records_pb2.TransferTask] = []
        self.timer_tasks: list[records_pb2.TimerTask] = []
        # Direct dispatch: the worker's task of each block this step started for it, by
        # scheduled event id (handed to matching with the block's transfer task).
        self.direct_tasks: dict[int, flow_service_pb2.PollBlockTaskResponse] = {}
        # The run's block timer row this step arms (blocks.arm_block_timer), if any: its task
        # id goes into the state's `block_timer` when the commit allocates it.
        self.block_timer: records_pb2.TimerTask | None = None
        # This step closes the run (closing.close_run): its commit arms the run's deletion
        # for when the namespace's retention ends (closing.arm_deletion).
        self.closes = False

    @property
    def info(self) -> records_pb2.RunExecutionInfo:
        return self.state.execution_info

    @property
    def is_open(self) -> bool:
        return self.info.state != records_pb2.RUN_STATE_COMPLETED

    @property
    def changed(self) -> bool:
        return bool(self.events or self.transfer_tasks or self.timer_tasks) or self._dirty

    _dirty = False

    def touch(self) -> None:
        """Mark a change of state that adds no event (e.g. a block started, a heartbeat)."""
        self._dirty = True

    def add_event(
        self, event_type: int, attributes: str
    ) -> tuple[history_pb2.HistoryEvent, Message]:
        """Append an event; returns it and its attributes message to fill in."""
        event = history_pb2.HistoryEvent(
            event_id=self.info.next_event_id,
            event_type=event_type,  # type: ignore[arg-type]
        )
        event.event_time.FromDatetime(self.now)
        attrs: Message = getattr(event, attributes)
        attrs.SetInParent()
        self.info.next_event_id += 1
        self.events.append(event)
        return event, attrs

    def _task_ref(self, task: records_pb2.TransferTask | records_pb2.TimerTask) -> None:
        task.namespace_id = self.info.namespace_id
        task.run_id = self.info.run_id
        task.execution_id = self.info.execution_id

    def add_transfer(self) -> records_pb2.TransferTask:
        """A transfer task for this run; its id is allocated when the step commits."""
        task = records_pb2.TransferTask()
        self._task_ref(task)
        task.visibility_time.FromDatetime(self.now)
        self.transfer_tasks.append(task)
        return task

    def add_timer(self, fire_at: datetime) -> records_pb2.TimerTask:
        task = records_pb2.TimerTask()
        self._task_ref(task)
        task.fire_time.FromDatetime(fire_at)
        self.timer_tasks.append(task)
        return task


def utcnow() -> datetime:
    """The time a new step is taken at (its `now`)."""
    return datetime.now(UTC)
