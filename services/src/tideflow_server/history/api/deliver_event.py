"""DeliverEvent: a published event reaches a run's event block that waits for its type and key
(the frontend found the wait in the event store). At least once: a redelivery changes
nothing."""

from __future__ import annotations

from tideflow_server.history import events
from tideflow_server.history.api._common import too_big
from tideflow_server.history.shard.port import Shard
from tideflow_server.internal.v1 import history_service_pb2
from tideflow_server.persistence import errors as store


async def invoke(
    shard: Shard, request: history_service_pb2.DeliverEventRequest
) -> history_service_pb2.DeliverEventResponse:
    try:
        waiting = await events.deliver(
            shard, request.namespace_id, request.run, request.block_id, request.event
        )
    except store.SizeLimitExceeded as e:
        raise too_big(e, "payload") from e
    return history_service_pb2.DeliverEventResponse(waiting=waiting)
