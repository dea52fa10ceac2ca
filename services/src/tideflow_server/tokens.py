"""Block task tokens, the opaque bytes a worker echoes back naming one attempt of a block, and
the block task a worker receives with one."""

from __future__ import annotations

from tideflow.api.v1 import common_pb2, flow_service_pb2
from tideflow_server.internal.v1 import history_service_pb2, task_token_pb2
from tideflow_server.rpc.errors import FieldViolation, InvalidArgument


def parse_token(data: bytes, field: str = "task_token") -> task_token_pb2.BlockTaskToken:
    """The attempt a worker's token names; INVALID_ARGUMENT naming `field` (where the token
    is in the request) for anything this server did not issue."""
    try:
        token = task_token_pb2.BlockTaskToken.FromString(data)
    except Exception:
        token = None
    if token is None or not (token.run_id and token.execution_id and token.scheduled_event_id):
        raise InvalidArgument(
            [
                FieldViolation(
                    field,
                    "is not a task token this server issued; echo the task_token of the "
                    "polled task unchanged",
                )
            ]
        )
    return token


def block_task_response(
    *,
    namespace_id: str,
    run: common_pb2.RunRef,
    scheduled_event_id: int,
    started: history_service_pb2.RecordBlockStartedResponse,
    attempt: int = 0,
    block_id: str = "",
) -> flow_service_pb2.PollBlockTaskResponse:
    """The worker's view of a started attempt, with the token that names it. Built by matching
    for a polled task and by history for an eagerly dispatched one; `attempt` and `block_id`
    stand in when the started record lacks them."""
    event = started.scheduled_event
    scheduled = event.block_scheduled_event_attributes
    attempt = started.attempt or attempt
    block_id = scheduled.block_id or block_id
    token = task_token_pb2.BlockTaskToken(
        namespace_id=namespace_id,
        run_id=run.run_id,
        execution_id=run.execution_id,
        scheduled_event_id=scheduled_event_id,
        attempt=attempt,
        block_id=block_id,
    )
    response = flow_service_pb2.PollBlockTaskResponse(
        task_token=token.SerializeToString(),
        run=run,
        block_id=block_id,
        block_type=scheduled.block_type,
        attempt=attempt,
    )
    # Copy only what is set, so an absent field stays absent for the worker.
    if started.HasField("flow"):
        response.flow.CopyFrom(started.flow)
    if scheduled.HasField("input"):
        response.input.CopyFrom(scheduled.input)
    if event.HasField("event_time"):
        response.scheduled_time.CopyFrom(event.event_time)
    if started.HasField("current_attempt_scheduled_time"):
        response.current_attempt_scheduled_time.CopyFrom(started.current_attempt_scheduled_time)
    if started.HasField("started_time"):
        response.started_time.CopyFrom(started.started_time)
    if scheduled.HasField("timeouts"):
        response.timeouts.CopyFrom(scheduled.timeouts)
    if started.HasField("heartbeat_details"):
        response.heartbeat_details.CopyFrom(started.heartbeat_details)
    if scheduled.HasField("retry_policy"):
        response.retry_policy.CopyFrom(scheduled.retry_policy)
    return response
