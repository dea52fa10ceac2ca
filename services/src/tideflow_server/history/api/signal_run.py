"""SignalRun: record a named signal in the run's history (deduplicated by request id), keep it
for the run's signal blocks, and offer it to those waiting for its name."""

from __future__ import annotations

from tideflow.api.v1 import flow_service_pb2, history_pb2
from tideflow_server.history import payloads, progress
from tideflow_server.history.api._common import execution_id_of, open_run, too_big
from tideflow_server.history.interpreter import SignalReceived
from tideflow_server.history.shard.execution import Execution
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import history_service_pb2, records_pb2
from tideflow_server.persistence import errors as store
from tideflow_server.rpc.errors import ResourceExhausted

MAX_REMEMBERED_SIGNALS = 100
BUFFERED_SIGNALS_LIMIT = "BUFFERED_SIGNALS_LIMIT"


def record_signal(
    step: RunStep, signal: flow_service_pb2.SignalRunRequest
) -> records_pb2.BufferedSignal | None:
    """RUN_SIGNALED, and the signal kept until a signal block takes it (`buffered_signals`,
    oldest first); None for a retried signal, recorded already."""
    info = step.info
    if signal.request_id and signal.request_id in info.signal_request_ids:
        return None
    event, attrs = step.add_event(
        history_pb2.EVENT_TYPE_RUN_SIGNALED, "run_signaled_event_attributes"
    )
    assert isinstance(attrs, history_pb2.RunSignaledEventAttributes)
    attrs.signal_name = signal.signal_name
    attrs.input.CopyFrom(signal.input)
    attrs.identity = signal.identity
    attrs.request_id = signal.request_id
    if signal.request_id:
        info.signal_request_ids.append(signal.request_id)
        del info.signal_request_ids[:-MAX_REMEMBERED_SIGNALS]
    return step.state.buffered_signals.add(
        signal_name=signal.signal_name, event_id=event.event_id, input=signal.input
    )


def waiting_for(state: records_pb2.MutableState, name: str) -> list[str]:
    """The blocks waiting for signals named `name`, in the order the run reached them."""
    waiting = [
        (result.reached, block_id)
        for block_id, result in state.block_results.items()
        if result.awaiting_signal == name
    ]
    return [block_id for _, block_id in sorted(waiting)]


async def offer(shard: Shard, step: RunStep, signal: records_pb2.BufferedSignal) -> None:
    """Offer a kept signal to the blocks waiting for its name until one takes it."""
    event = SignalReceived(
        signal.event_id,
        signal.signal_name,
        payloads.from_payloads(signal.input, "input"),
    )
    for block_id in waiting_for(step.state, signal.signal_name):
        if await progress.deliver_event(shard, step, block_id, event):
            return


def check_buffered(step: RunStep, limit: int) -> None:
    """Refuse the step when the run would keep more signals than `limit` (nothing of it is
    committed)."""
    if len(step.state.buffered_signals) > limit:
        raise ResourceExhausted(
            f"the run keeps {limit} signals that no signal block has taken, the most it may "
            "(setting history.max_buffered_signals)",
            reason=BUFFERED_SIGNALS_LIMIT,
            metadata={"limit": str(limit), "setting": "history.max_buffered_signals"},
        )


async def invoke(
    shard: Shard, request: history_service_pb2.SignalRunRequest, *, field: str = "input"
) -> history_service_pb2.SignalRunResponse:
    """`field`: where the signal's input is in the caller's request."""
    signal = request.request
    execution_id = await execution_id_of(shard, request.namespace_id, signal.run)

    async def act(entry: Execution, step: RunStep) -> None:
        open_run(entry)
        kept = record_signal(step, signal)
        if kept is not None:
            await offer(shard, step, kept)
            check_buffered(step, shard.config.max_buffered_signals)

    try:
        await shard.update(request.namespace_id, signal.run.run_id, execution_id, act)
    except store.SizeLimitExceeded as e:
        raise too_big(e, field) from e
    return history_service_pb2.SignalRunResponse()
