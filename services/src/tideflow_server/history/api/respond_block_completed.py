"""RespondBlockCompleted: a worker's result closes the block; the blueprint moves on."""

from __future__ import annotations

from tideflow_server.history import blocks
from tideflow_server.history.api._respond import respond
from tideflow_server.history.shard.context import ShardContext
from tideflow_server.internal.v1 import history_service_pb2


async def invoke(
    shard: ShardContext, request: history_service_pb2.RespondBlockCompletedRequest
) -> history_service_pb2.RespondBlockCompletedResponse:
    given = request.request
    await respond(
        shard,
        request.namespace_id,
        given.task_token,
        lambda step, pending: blocks.complete(step, pending, given.result, given.identity),
    )
    return history_service_pb2.RespondBlockCompletedResponse()
