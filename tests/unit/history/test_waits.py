"""Waits in history: the timer and signal appliers, the timer executor and SignalRun's
delivery, on a run's mutable state with a stand-in shard (no server, no store)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest

from tests.unit.interpreter.support import compile_
from tideflow.api.v1 import common_pb2, flow_service_pb2, history_pb2
from tideflow_server.config import HistoryConfig
from tideflow_server.history import closing, progress
from tideflow_server.history.api import signal_run
from tideflow_server.history.interpreter import CompiledBlueprint
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.history.tasks import timer as timer_tasks
from tideflow_server.internal.v1 import history_service_pb2, records_pb2
from tideflow_server.rpc.errors import ResourceExhausted

NOW = datetime(2025, 1, 1, tzinfo=UTC)
RUNNING = common_pb2.BLOCK_STATUS_RUNNING


@dataclass
class _Shard:
    """The members of a shard that waits use: one run, committed by replacing its state."""

    compiled: CompiledBlueprint
    state: records_pb2.MutableState
    config: HistoryConfig = field(default_factory=HistoryConfig)
    events: list[history_pb2.HistoryEvent] = field(default_factory=list)
    timer_rows: list[records_pb2.TimerTask] = field(default_factory=list)
    now: datetime = NOW

    def __post_init__(self) -> None:
        compiled = self.compiled
        namespace = SimpleNamespace(
            info=SimpleNamespace(name="default"),
            config=SimpleNamespace(limits=SimpleNamespace(max_pending_blocks=0, max_map_items=0)),
        )

        async def get(*_: Any) -> tuple[None, CompiledBlueprint]:
            return None, compiled

        async def by_id(*_: Any) -> Any:
            return namespace

        self.flows = SimpleNamespace(get=get)
        self.namespaces = SimpleNamespace(by_id=by_id)

    async def current_execution_id(self, namespace_id: str, run_id: str) -> str:
        return "e-1"

    @contextlib.asynccontextmanager
    async def locked(self, *_: str) -> AsyncIterator[Any]:
        yield SimpleNamespace(state=self.state, run_id="order-7")

    async def update(
        self, ns: str, run: str, execution: str, action: Callable[[Any, RunStep], Awaitable[Any]]
    ) -> Any:
        state = records_pb2.MutableState()
        state.CopyFrom(self.state)
        step = RunStep(state, now=self.now)
        result = await action(SimpleNamespace(state=self.state, run_id=run), step)
        self.state = step.state  # committed
        self.events += step.events
        self.timer_rows += step.timer_tasks
        return result


def _run(*blocks: dict[str, Any]) -> _Shard:
    compiled = compile_(*blocks)
    state = records_pb2.MutableState()
    info = state.execution_info
    info.namespace_id, info.run_id, info.execution_id = "ns", "order-7", "e-1"
    info.flow.name, info.flow.version = compiled.name, compiled.version
    info.state = records_pb2.RUN_STATE_RUNNING
    info.status = common_pb2.RUN_STATUS_RUNNING
    info.next_event_id = 2
    shard = _Shard(compiled, state)
    step = RunStep(state, now=NOW)
    progress.advance(step, compiled, namespace="default", max_pending_blocks=100)
    shard.events += step.events
    shard.timer_rows += step.timer_tasks
    return shard


async def _fire(shard: _Shard, row: records_pb2.TimerTask) -> None:
    await timer_tasks.fire(cast(Shard, shard), row)


async def _signal(shard: _Shard, name: str, data: str = "") -> None:
    request = flow_service_pb2.SignalRunRequest(signal_name=name)
    if data:
        request.input.payloads.add(metadata={"encoding": b"json/plain"}, data=data.encode())
    request.run.run_id = "order-7"
    await signal_run.invoke(
        cast(Shard, shard), history_service_pb2.SignalRunRequest(namespace_id="ns", request=request)
    )


def _types(shard: _Shard) -> list[int]:
    return [e.event_type for e in shard.events]


async def test_a_wait_records_its_timer_and_completes_when_the_row_fires() -> None:
    shard = _run({"id": "w", "wait": {"duration": "5s"}})
    [started] = shard.events
    attrs = started.timer_started_event_attributes
    assert (attrs.timer_id, attrs.block_id) == ("w:wait", "w")
    assert attrs.fire_time.ToDatetime(tzinfo=UTC) == NOW + timedelta(seconds=5)
    assert shard.state.timers["w:wait"].started_event_id == started.event_id
    assert shard.state.block_results["w"].status == RUNNING
    [row] = shard.timer_rows
    assert row.user_timer.timer_id == "w:wait"
    assert row.fire_time == attrs.fire_time

    await _fire(shard, row)
    assert _types(shard)[1:] == [
        history_pb2.EVENT_TYPE_TIMER_FIRED,
        history_pb2.EVENT_TYPE_SYSTEM_BLOCK_COMPLETED,
        history_pb2.EVENT_TYPE_RUN_COMPLETED,
    ]
    completed = shard.events[2].system_block_completed_event_attributes
    assert completed.cause_event_id == shard.events[1].event_id
    assert not shard.state.timers

    await _fire(shard, row)  # delivered twice: the timer is gone, nothing happens
    assert len(shard.events) == 4


async def test_a_timer_row_of_a_closed_run_does_nothing() -> None:
    shard = _run({"id": "w", "wait": {"duration": "5s"}})
    step = RunStep(shard.state, now=NOW)
    closing.close_run(step, common_pb2.RUN_STATUS_TERMINATED)
    assert shard.state.block_results["w"].status == common_pb2.BLOCK_STATUS_CANCELED
    assert not shard.state.timers
    before = len(shard.events)
    await _fire(shard, shard.timer_rows[0])
    assert len(shard.events) == before


async def test_signal_run_offers_a_signal_to_the_waiting_blocks_in_the_order_reached() -> None:
    shard = _run(
        {"id": "first", "signal": {"signalName": "go", "accept": "signal == 'b'"}},
        {"id": "second", "signal": {"signalName": "go"}},
    )
    assert shard.state.block_results["first"].awaiting_signal == "go"
    await _signal(shard, "go", '"a"')  # first refuses it: second takes it
    results = shard.state.block_results
    assert results["first"].status == RUNNING
    assert results["second"].status == common_pb2.BLOCK_STATUS_SUCCEEDED
    assert not results["second"].awaiting_signal
    assert not shard.state.buffered_signals
    await _signal(shard, "go", '"b"')
    assert shard.state.block_results["first"].status == common_pb2.BLOCK_STATUS_SUCCEEDED
    assert _types(shard)[-1] == history_pb2.EVENT_TYPE_RUN_COMPLETED


async def test_signal_run_past_the_buffer_bound_is_refused_and_records_nothing() -> None:
    shard = _run({"id": "s", "signal": {"signalName": "go"}})
    shard.config = HistoryConfig(max_buffered_signals=1)
    await _signal(shard, "other")
    before = shard.state.SerializeToString()
    with pytest.raises(ResourceExhausted, match=r"history\.max_buffered_signals"):
        await _signal(shard, "other")
    assert shard.state.SerializeToString() == before
    await _signal(shard, "go")  # taken at once: never kept
    assert shard.state.block_results["s"].status == common_pb2.BLOCK_STATUS_SUCCEEDED


async def test_a_signal_timeout_cancels_the_next_escalation() -> None:
    shard = _run(
        {
            "id": "s",
            "signal": {
                "signalName": "go",
                "timeout": "10s",
                "escalations": [{"after": "5s", "goto": "boss"}],
            },
        },
        {"id": "boss", "transform": {"output": 1}},
    )
    assert set(shard.state.timers) == {"s:timeout", "s:escalation:0"}
    timeout_row = next(r for r in shard.timer_rows if r.user_timer.timer_id == "s:timeout")
    await _fire(shard, timeout_row)
    assert not shard.state.timers
    assert history_pb2.EVENT_TYPE_TIMER_CANCELED in _types(shard)
    assert shard.state.block_results["boss"].status == common_pb2.BLOCK_STATUS_SKIPPED
    assert shard.state.execution_info.status == common_pb2.RUN_STATUS_FAILED
