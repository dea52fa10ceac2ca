"""`affinity: run`: which worker's sticky queue a run's next block goes to first. History
records the queue of the worker that started a block (RecordBlockStarted) and, since a block
handed out by direct dispatch starts without one, of the worker that completed it."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.unit.interpreter.support import compile_, external
from tideflow.api.v1 import common_pb2
from tideflow_server.history import blocks, progress
from tideflow_server.history.interpreter import CompiledBlueprint
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import records_pb2

NOW = datetime(2025, 1, 1, tzinfo=UTC)
_RUN = {"block": "work@1", "taskQueue": "gpu", "affinity": "AFFINITY_RUN"}


def _chain() -> CompiledBlueprint:
    return compile_(external("a", external=_RUN), external("b", "a", external=_RUN))


def _started_run(compiled: CompiledBlueprint) -> RunStep:
    state = records_pb2.MutableState()
    info = state.execution_info
    info.run_id, info.execution_id = "order-7", "e-1"
    info.flow.name, info.flow.version = compiled.name, compiled.version
    info.state = records_pb2.RUN_STATE_RUNNING
    info.status = common_pb2.RUN_STATUS_RUNNING
    info.next_event_id = 2
    info.task_queue.name = "gpu"
    step = RunStep(state, now=NOW)
    progress.advance(step, compiled, namespace="default", max_pending_blocks=100)
    return step


def _next_step(step: RunStep) -> RunStep:
    state = records_pb2.MutableState.FromString(step.state.SerializeToString())
    return RunStep(state, now=NOW)


def _pending(step: RunStep, block_id: str) -> records_pb2.PendingBlock:
    return next(p for p in step.state.pending_blocks.values() if p.block_id == block_id)


def _sticky_queue_of_b(step: RunStep) -> str:
    [task] = [t for t in step.transfer_tasks if t.block_task.block_id == "b"]
    return task.block_task.dispatch.sticky_task_queue


def test_a_directly_dispatched_block_records_its_workers_sticky_queue_at_completion() -> None:
    compiled = _chain()
    step = _started_run(compiled)
    [(pending, _)] = blocks.start_directly(step, lambda queue: True)  # no poll, no sticky queue
    assert not step.info.sticky_task_queues

    step = _next_step(step)
    pending = _pending(step, "a")
    blocks.complete(
        step, pending, common_pb2.Payloads(), "gpu-box:42", sticky_task_queue="gpu-box:42-7f3a"
    )
    progress.advance(step, compiled, namespace="default", max_pending_blocks=100)

    assert _sticky_queue_of_b(step) == "gpu-box:42-7f3a"


def test_a_completion_without_a_sticky_queue_keeps_the_one_recorded_at_the_start() -> None:
    compiled = _chain()
    step = _started_run(compiled)
    blocks.record_started(
        step, _pending(step, "a"), identity="w-1", request_id="r-1", sticky_task_queue="w-1-s"
    )
    blocks.complete(step, _pending(step, "a"), common_pb2.Payloads(), "w-1")
    progress.advance(step, compiled, namespace="default", max_pending_blocks=100)

    assert _sticky_queue_of_b(step) == "w-1-s"
