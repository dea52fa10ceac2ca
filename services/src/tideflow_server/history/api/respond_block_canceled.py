"""RespondBlockCanceled: a worker stopped a block whose cancellation was requested."""

from __future__ import annotations

from tideflow_server.history import blocks
from tideflow_server.history.api._respond import respond
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import history_service_pb2, records_pb2
from tideflow_server.rpc.errors import FailedPrecondition


async def invoke(
    shard: Shard, request: history_service_pb2.RespondBlockCanceledRequest
) -> history_service_pb2.RespondBlockCanceledResponse:
    given = request.request

    def close(step: RunStep, pending: records_pb2.PendingBlock) -> None:
        if not pending.cancel_requested:
            raise FailedPrecondition(
                "the block's cancellation was not requested; complete or fail it instead",
                reason="CANCEL_NOT_REQUESTED",
            )
        blocks.cancel(step, pending, details=given.details, identity=given.identity)

    await respond(shard, request.namespace_id, given.task_token, close)
    return history_service_pb2.RespondBlockCanceledResponse()
