"""Concurrency slots on history's side: an attempt matching started holding a slot
(RecordBlockStartedRequest.concurrency_limited) sends one release through the outbox when it
closes, whatever closes it; an attempt holding none sends nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from tests.unit.interpreter.support import compile_, external
from tideflow.api.v1 import common_pb2, failure_pb2
from tideflow_server.history import blocks, closing, progress
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import records_pb2

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _started(*, limited: bool) -> tuple[RunStep, records_pb2.PendingBlock]:
    """A run whose one block (ocr@1 on queue gpu) is started, in a fresh step."""
    compiled = compile_(external("a", external={"block": "ocr@1", "taskQueue": "gpu"}))
    state = records_pb2.MutableState()
    info = state.execution_info
    info.run_id, info.execution_id = "order-7", "e-1"
    info.flow.name, info.flow.version = compiled.name, compiled.version
    info.state = records_pb2.RUN_STATE_RUNNING
    info.status = common_pb2.RUN_STATUS_RUNNING
    info.next_event_id = 2
    step = RunStep(state, now=NOW)
    progress.advance(step, compiled, namespace="default", max_pending_blocks=100)
    pending = next(iter(step.state.pending_blocks.values()))
    blocks.record_started(
        step, pending, identity="w-1", request_id="poll-1", concurrency_limited=limited
    )
    step = RunStep(records_pb2.MutableState.FromString(step.state.SerializeToString()), now=NOW)
    return step, step.state.pending_blocks[pending.scheduled_event_id]


def _releases(step: RunStep) -> list[records_pb2.TransferTask.ReleaseConcurrencySlot]:
    return [
        t.release_concurrency_slot
        for t in step.transfer_tasks
        if t.WhichOneof("task") == "release_concurrency_slot"
    ]


def _failure(retryable: bool) -> failure_pb2.Failure:
    failure = failure_pb2.Failure(message="boom")
    failure.application_failure_info.non_retryable = not retryable
    return failure


_CLOSES: dict[str, Callable[[RunStep, records_pb2.PendingBlock], object]] = {
    "completed": lambda s, p: blocks.complete(s, p, common_pb2.Payloads(), "w-1"),
    "failed": lambda s, p: blocks.fail(s, p, _failure(retryable=False)),
    "retried": lambda s, p: blocks.fail(s, p, _failure(retryable=True)),
    "timed out": lambda s, p: blocks.fail(
        s, p, blocks.timeout_failure(p, common_pb2.TIMEOUT_TYPE_HEARTBEAT)
    ),
    "canceled": blocks.cancel,
    "run terminated": lambda s, p: closing.close_run(
        s, common_pb2.RUN_STATUS_TERMINATED, reason="operator"
    ),
}


@pytest.mark.parametrize("close", list(_CLOSES))
def test_a_limited_attempt_releases_its_slot_once_however_it_closes(close: str) -> None:
    step, pending = _started(limited=True)
    scheduled_event_id, attempt = pending.scheduled_event_id, pending.attempt
    _CLOSES[close](step, pending)
    [release] = _releases(step)
    assert release.task_queue.name == "gpu"
    assert (release.scheduled_event_id, release.attempt) == (scheduled_event_id, attempt)
    assert release.block_type == "ocr@1"
    # Whatever follows in the same step (a retry's next attempt not started yet, a run closed
    # after its block failed) sends no second release.
    closing.close_run(step, common_pb2.RUN_STATUS_FAILED)
    assert len(_releases(step)) == 1


@pytest.mark.parametrize("close", list(_CLOSES))
def test_an_attempt_without_a_slot_sends_no_release(close: str) -> None:
    step, pending = _started(limited=False)
    _CLOSES[close](step, pending)
    assert _releases(step) == []


def test_the_retried_attempt_holds_a_slot_only_if_its_own_start_took_one() -> None:
    step, pending = _started(limited=True)
    assert blocks.fail(step, pending, _failure(retryable=True))
    assert not pending.concurrency_limited
    assert pending.attempt == 2
    blocks.record_started(step, pending, identity="w-2", request_id="poll-2")
    blocks.complete(step, pending, common_pb2.Payloads(), "w-2")
    assert [r.attempt for r in _releases(step)] == [1]
