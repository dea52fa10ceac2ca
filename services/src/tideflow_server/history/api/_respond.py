"""What the three Respond* RPCs share: find the worker's attempt, close it, move the run on."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tideflow.api.v1 import common_pb2
from tideflow_server.history import progress
from tideflow_server.history.api._common import pending_attempt
from tideflow_server.history.shard.execution import Execution
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.tokens import parse_token

T = TypeVar("T")


async def respond(
    shard: Shard,
    namespace_id: str,
    task_token: bytes,
    close: Callable[[RunStep, records_pb2.PendingBlock], None],
    then: Callable[[RunStep, common_pb2.TaskQueue], T] | None = None,
) -> T | None:
    """Close the attempt the token names and move the run on, in one commit; `then` may add
    to the same step once the run has moved on (it gets the closed block's task queue), and
    its result is returned."""
    token = parse_token(task_token)

    async def act(entry: Execution, step: RunStep) -> T | None:
        pending = step.state.pending_blocks[pending_attempt(entry, token).scheduled_event_id]
        task_queue = common_pb2.TaskQueue()
        task_queue.CopyFrom(pending.task_queue)  # the pending block goes with `close`
        close(step, pending)
        await progress.continue_run(shard, step)
        return then(step, task_queue) if then is not None else None

    return await shard.update(namespace_id, token.run_id, token.execution_id, act)
