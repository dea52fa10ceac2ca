"""RespondBlockFailed: the attempt failed; retry per the block's policy, or fail the block."""

from __future__ import annotations

from tideflow_server.history import blocks
from tideflow_server.history.api._respond import respond
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import history_service_pb2, records_pb2


async def invoke(
    shard: Shard, request: history_service_pb2.RespondBlockFailedRequest
) -> history_service_pb2.RespondBlockFailedResponse:
    given = request.request

    def close(step: RunStep, pending: records_pb2.PendingBlock) -> None:
        blocks.fail(
            step,
            pending,
            given.failure,
            identity=given.identity,
            last_heartbeat_details=given.last_heartbeat_details,
        )

    await respond(shard, request.namespace_id, given.task_token, close)
    return history_service_pb2.RespondBlockFailedResponse()
