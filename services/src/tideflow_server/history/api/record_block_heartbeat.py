"""RecordBlockHeartbeat: a running block says it is alive (with progress details) and learns
whether its run wants it to stop."""

from __future__ import annotations

from tideflow_server.history import blocks
from tideflow_server.history.api._common import pending_attempt
from tideflow_server.history.shard.execution import Execution
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import history_service_pb2
from tideflow_server.tokens import parse_token


async def invoke(
    shard: Shard, request: history_service_pb2.RecordBlockHeartbeatRequest
) -> history_service_pb2.RecordBlockHeartbeatResponse:
    given = request.request
    token = parse_token(given.task_token)

    async def act(entry: Execution, step: RunStep) -> bool:
        pending = pending_attempt(entry, token)
        pending = step.state.pending_blocks[pending.scheduled_event_id]
        blocks.record_heartbeat(step, pending, given.details, given.identity)
        return pending.cancel_requested

    cancel = await shard.update(request.namespace_id, token.run_id, token.execution_id, act)
    response = history_service_pb2.RecordBlockHeartbeatResponse()
    response.response.cancel_requested = cancel
    return response
