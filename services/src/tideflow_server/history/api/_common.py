from __future__ import annotations

from tideflow.api.v1 import common_pb2
from tideflow_server.history.shard.execution import Execution
from tideflow_server.history.shard.port import Shard
from tideflow_server.internal.v1 import records_pb2, task_token_pb2
from tideflow_server.persistence import errors as store
from tideflow_server.rpc.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound


async def execution_id_of(shard: Shard, namespace_id: str, run: common_pb2.RunRef) -> str:
    """The execution a request names: its own, or the run_id's current one."""
    return run.execution_id or await shard.current_execution_id(namespace_id, run.run_id)


def open_run(entry: Execution, *, salvaged: bool = False) -> records_pb2.MutableState:
    """The state of an open run (`salvaged`: what could be read of it, see
    Shard.update); FAILED_PRECONDITION when the run is closed."""
    state = entry.salvaged.state if salvaged else entry.state
    if state.execution_info.state == records_pb2.RUN_STATE_COMPLETED:
        raise FailedPrecondition(
            f"run {entry.run_id!r} is already closed", reason="RUN_ALREADY_CLOSED"
        )
    return state


def pending_attempt(
    entry: Execution, token: task_token_pb2.BlockTaskToken, *, started: bool = True
) -> records_pb2.PendingBlock:
    """The pending block a worker's token names, if that attempt is still the current one."""
    state = entry.state
    pending = state.pending_blocks.get(token.scheduled_event_id)
    if (
        state.execution_info.state == records_pb2.RUN_STATE_COMPLETED
        or pending is None
        or pending.attempt != token.attempt
    ):
        raise NotFound(
            f"block task {token.block_id!r} attempt {token.attempt} is no longer current",
            reason="BLOCK_TASK_NOT_FOUND",
        )
    if started and not pending.HasField("started_time"):
        raise NotFound(
            f"block task {token.block_id!r} attempt {token.attempt} was not started",
            reason="BLOCK_TASK_NOT_FOUND",
        )
    return pending


def too_big(e: store.SizeLimitExceeded, field: str) -> InvalidArgument:
    """A step that would break a store limit (nothing was written), blamed on the request
    field that made it big, with the limit and the setting that sets it."""
    return InvalidArgument(
        [FieldViolation(field, f"too big for the step it causes: {e}")],
        reason="SIZE_LIMIT_EXCEEDED",
    )
