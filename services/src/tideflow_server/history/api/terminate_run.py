"""TerminateRun: close the run now, whatever is pending."""

from __future__ import annotations

from tideflow.api.v1 import common_pb2
from tideflow_server.history import closing
from tideflow_server.history.api._common import execution_id_of, open_run
from tideflow_server.history.shard.execution import Execution
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import history_service_pb2


async def terminate(
    shard: Shard,
    namespace_id: str,
    run_id: str,
    execution_id: str,
    *,
    reason: str,
    identity: str,
    details: common_pb2.Payloads | None = None,
) -> None:
    async def act(entry: Execution, step: RunStep) -> None:
        open_run(entry, salvaged=True)
        closing.close_run(
            step,
            common_pb2.RUN_STATUS_TERMINATED,
            reason=reason,
            identity=identity,
            details=details,
        )

    # An operator can always end a run: even one whose stored state no longer parses is
    # closed, from what could be read of it (its execution info, pending blocks, timers).
    await shard.update(namespace_id, run_id, execution_id, act, salvaged=True)


async def invoke(
    shard: Shard, request: history_service_pb2.TerminateRunRequest
) -> history_service_pb2.TerminateRunResponse:
    given = request.request
    execution_id = await execution_id_of(shard, request.namespace_id, given.run)
    await terminate(
        shard,
        request.namespace_id,
        given.run.run_id,
        execution_id,
        reason=given.reason,
        identity=given.identity,
        details=given.details,
    )
    return history_service_pb2.TerminateRunResponse()
