"""SignalWithStartRun: signal the run_id's open execution, or start one with the signal."""

from __future__ import annotations

from tideflow.api.v1 import flow_service_pb2
from tideflow_server.history.api import signal_run, start_run
from tideflow_server.history.shard.port import Shard
from tideflow_server.internal.v1 import history_service_pb2
from tideflow_server.rpc.errors import FailedPrecondition, NotFound


async def invoke(
    shard: Shard, request: history_service_pb2.SignalWithStartRunRequest
) -> history_service_pb2.SignalWithStartRunResponse:
    given = request.request
    signal = flow_service_pb2.SignalRunRequest(
        namespace=given.namespace,
        signal_name=given.signal_name,
        input=given.signal_input,
        identity=given.identity,
        request_id=given.request_id,
    )
    signal.run.run_id = given.run_id
    response = history_service_pb2.SignalWithStartRunResponse()
    for _ in range(3):
        try:
            execution_id = await shard.current_execution_id(request.namespace_id, given.run_id)
            signal.run.execution_id = execution_id
            await signal_run.invoke(
                shard,
                history_service_pb2.SignalRunRequest(
                    namespace_id=request.namespace_id, request=signal
                ),
                field="signal_input",
            )
            response.response.execution_id = execution_id
            response.response.started = False
            return response
        except (NotFound, FailedPrecondition):
            pass  # no run, or it closed: start one carrying the signal
        start = flow_service_pb2.StartRunRequest(
            namespace=given.namespace,
            run_id=given.run_id,
            flow=given.flow,
            task_queue=given.task_queue,
            input=given.input,
            identity=given.identity,
            request_id=given.request_id,
            run_id_reuse_policy=given.run_id_reuse_policy,
            memo=given.memo,
        )
        if given.HasField("run_timeout"):
            start.run_timeout.CopyFrom(given.run_timeout)
        started = await start_run.invoke(
            shard,
            history_service_pb2.StartRunRequest(namespace_id=request.namespace_id, request=start),
            signal=signal,
        )
        response.response.execution_id = started.response.execution_id
        response.response.started = started.response.started
        return response
    raise FailedPrecondition(f"run_id {given.run_id!r} is changing too fast; try again")
