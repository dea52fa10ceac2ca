"""SignalRun: record a named signal in the run's history (deduplicated by request id)."""

from __future__ import annotations

from tideflow.api.v1 import flow_service_pb2, history_pb2
from tideflow_server.history.api._common import execution_id_of, open_run, too_big
from tideflow_server.history.shard.execution import Execution
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import history_service_pb2
from tideflow_server.persistence import errors as store

MAX_REMEMBERED_SIGNALS = 100


def record_signal(step: RunStep, signal: flow_service_pb2.SignalRunRequest) -> None:
    info = step.info
    if signal.request_id and signal.request_id in info.signal_request_ids:
        return  # a retried signal: recorded already
    _, attrs = step.add_event(history_pb2.EVENT_TYPE_RUN_SIGNALED, "run_signaled_event_attributes")
    assert isinstance(attrs, history_pb2.RunSignaledEventAttributes)
    attrs.signal_name = signal.signal_name
    attrs.input.CopyFrom(signal.input)
    attrs.identity = signal.identity
    attrs.request_id = signal.request_id
    if signal.request_id:
        info.signal_request_ids.append(signal.request_id)
        del info.signal_request_ids[:-MAX_REMEMBERED_SIGNALS]


async def invoke(
    shard: Shard, request: history_service_pb2.SignalRunRequest, *, field: str = "input"
) -> history_service_pb2.SignalRunResponse:
    """`field`: where the signal's input is in the caller's request."""
    signal = request.request
    execution_id = await execution_id_of(shard, request.namespace_id, signal.run)

    async def act(entry: Execution, step: RunStep) -> None:
        open_run(entry)
        record_signal(step, signal)

    try:
        await shard.update(request.namespace_id, signal.run.run_id, execution_id, act)
    except store.SizeLimitExceeded as e:
        raise too_big(e, field) from e
    return history_service_pb2.SignalRunResponse()
