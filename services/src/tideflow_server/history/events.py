"""Published events reaching a run's event blocks: shared by DeliverEvent (a publish finds the
block's wait) and the outbox task that registers a wait (the block finds kept events).

An event reaches a run at most once: its id is remembered (`received_event_ids`) when
EVENT_RECEIVED is recorded, and a redelivery (a retried publish, a redelivered outbox task)
changes nothing.
"""

from __future__ import annotations

from tideflow.api.v1 import common_pb2, history_pb2
from tideflow_server.history import payloads, progress
from tideflow_server.history.interpreter import EventReceived
from tideflow_server.history.shard.execution import Execution
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import history_service_pb2, records_pb2
from tideflow_server.persistence.records import EventRow
from tideflow_server.rpc.errors import NotFound

MAX_REMEMBERED_EVENTS = 200
"""Event ids a run remembers for dedup (oldest dropped): far more than the redeliveries of
one event can interleave with others."""


def published(row: EventRow) -> history_service_pb2.PublishedEvent:
    """The event as the store keeps it, as history receives it."""
    event = history_service_pb2.PublishedEvent(
        event_id=row.event_id, event_type=row.event_type, correlation_key=row.correlation_key
    )
    event.payload.ParseFromString(row.data)
    event.publish_time.FromMilliseconds(row.publish_time_ms)
    return event


def waits_for(
    state: records_pb2.MutableState, block_id: str, event: history_service_pb2.PublishedEvent
) -> bool:
    """The block is RUNNING and waits for the event's type and key."""
    result = state.block_results.get(block_id)
    return (
        state.execution_info.state != records_pb2.RUN_STATE_COMPLETED
        and result is not None
        and result.status == common_pb2.BLOCK_STATUS_RUNNING
        and result.HasField("awaiting_event")
        and result.awaiting_event.event_type == event.event_type
        and result.awaiting_event.correlation_key == event.correlation_key
    )


def _record(step: RunStep, block_id: str, event: history_service_pb2.PublishedEvent) -> int:
    recorded, attrs = step.add_event(
        history_pb2.EVENT_TYPE_EVENT_RECEIVED, "event_received_event_attributes"
    )
    assert isinstance(attrs, history_pb2.EventReceivedEventAttributes)
    attrs.block_id = block_id
    attrs.event_id = event.event_id
    attrs.event_type = event.event_type
    attrs.correlation_key = event.correlation_key
    attrs.payload.CopyFrom(event.payload)
    attrs.publish_time.CopyFrom(event.publish_time)
    received = step.info.received_event_ids
    received.append(event.event_id)
    del received[:-MAX_REMEMBERED_EVENTS]
    return recorded.event_id


async def deliver(
    shard: Shard,
    namespace_id: str,
    run: common_pb2.RunRef,
    block_id: str,
    event: history_service_pb2.PublishedEvent,
) -> bool:
    """Offer `event` to the run's event block `block_id`; True while the block still waits
    for the event's type and key afterwards (it refused the event, or received it before)."""
    execution_id = run.execution_id
    try:
        if not execution_id:
            execution_id = await shard.current_execution_id(namespace_id, run.run_id)
        # A look first: a wait that is over, or an event received already, commits nothing.
        async with shard.locked(namespace_id, run.run_id, execution_id) as entry:
            if not waits_for(entry.state, block_id, event):
                return False
            if event.event_id in entry.state.execution_info.received_event_ids:
                return True
    except NotFound:
        return False  # the run is gone

    async def act(entry: Execution, step: RunStep) -> bool:
        if not waits_for(step.state, block_id, event):
            return False
        if event.event_id in step.info.received_event_ids:
            return True
        event_id = _record(step, block_id, event)
        received = EventReceived(
            event_id,
            event.event_id,
            event.event_type,
            event.correlation_key,
            payloads.from_payloads(event.payload, "payload"),
            event.publish_time.ToJsonString(),
        )
        await progress.deliver_event(shard, step, block_id, received)
        return waits_for(step.state, block_id, event)

    try:
        return await shard.update(namespace_id, run.run_id, execution_id, act)
    except NotFound:
        return False
