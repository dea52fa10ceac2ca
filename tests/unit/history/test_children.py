"""Child runs in a run step: what starting a subflow block records, its bound, what a parent's
close does to its open children, a child's close reported to its parent, and the dedupe of
that report (no server, no store)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.unit.interpreter.support import compile_
from tideflow.api.v1 import blueprint_pb2, common_pb2, history_pb2
from tideflow_server.history import closing, progress
from tideflow_server.history.api.record_child_run_closed import is_its_child, record_closed
from tideflow_server.history.interpreter import CompiledBlueprint
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import history_service_pb2, records_pb2

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _subflow(block_id: str, **subflow: Any) -> dict[str, Any]:
    return {"id": block_id, "subflow": {"flow": "report", **subflow}, "input": {"n": 1}}


def _started(compiled: CompiledBlueprint, *, max_pending_children: int = 10) -> RunStep:
    state = records_pb2.MutableState()
    info = state.execution_info
    info.run_id, info.execution_id = "order-7", "e-1"
    info.state = records_pb2.RUN_STATE_RUNNING
    info.status = common_pb2.RUN_STATUS_RUNNING
    info.next_event_id = 2
    step = RunStep(state, now=NOW)
    progress.advance(
        step,
        compiled,
        namespace="default",
        max_pending_blocks=100,
        max_pending_children=max_pending_children,
    )
    return step


def test_a_subflow_block_initiates_its_child_and_waits() -> None:
    step = _started(compile_(_subflow("kid", runId="${run.id}-kid", taskQueue="reports")))
    (event,) = step.events
    assert event.event_type == history_pb2.EVENT_TYPE_CHILD_RUN_INITIATED
    attrs = event.child_run_initiated_event_attributes
    assert (attrs.block_id, attrs.flow, attrs.run_id) == ("kid", "report", "order-7-kid")
    assert attrs.task_queue.name == "reports"
    assert attrs.request_id == f"e-1/{event.event_id}"
    pending = step.state.pending_children[event.event_id]
    assert (pending.block_id, pending.run_id, pending.execution_id) == ("kid", "order-7-kid", "")
    assert pending.parent_close_policy == blueprint_pb2.PARENT_CLOSE_POLICY_TERMINATE
    result = step.state.block_results["kid"]
    assert result.status == common_pb2.BLOCK_STATUS_RUNNING
    assert result.kind == blueprint_pb2.BLOCK_KIND_SUBFLOW
    assert result.child_run.run_id == "order-7-kid"
    (task,) = step.transfer_tasks
    assert task.start_child_run.initiated_event_id == event.event_id
    assert step.is_open


def test_a_child_past_max_pending_children_fails_its_block() -> None:
    step = _started(compile_(_subflow("a"), _subflow("b")), max_pending_children=1)
    assert len(step.state.pending_children) == 1
    failed = step.state.block_results["b"]
    assert failed.status == common_pb2.BLOCK_STATUS_FAILED
    cause = failed.failure.cause
    assert cause.application_failure_info.type == "PendingChildrenLimitExceeded"
    assert "history.max_pending_children" in cause.message


def test_the_parents_close_applies_each_started_childs_policy() -> None:
    step = _started(
        compile_(
            _subflow("term"),
            _subflow("cancel", parentClosePolicy="PARENT_CLOSE_POLICY_REQUEST_CANCEL"),
            _subflow("keep", parentClosePolicy="PARENT_CLOSE_POLICY_ABANDON"),
            _subflow("unstarted"),
        )
    )
    for pending in step.state.pending_children.values():
        if pending.block_id != "unstarted":  # its start task applies the policy itself
            pending.execution_id = f"x-{pending.block_id}"
    step.transfer_tasks.clear()
    closing.close_run(step, common_pb2.RUN_STATUS_TERMINATED, reason="stop")
    closed = [t.parent_closed for t in step.transfer_tasks if t.HasField("parent_closed")]
    assert sorted((c.child_run_id, c.child_execution_id, c.policy) for c in closed) == [
        ("order-7/cancel", "x-cancel", blueprint_pb2.PARENT_CLOSE_POLICY_REQUEST_CANCEL),
        ("order-7/term", "x-term", blueprint_pb2.PARENT_CLOSE_POLICY_TERMINATE),
    ]
    assert not step.state.pending_children
    assert {r.status for r in step.state.block_results.values()} == {
        common_pb2.BLOCK_STATUS_CANCELED
    }
    assert not any(t.HasField("child_closed") for t in step.transfer_tasks)  # no parent


def test_a_childs_close_is_reported_to_its_parent() -> None:
    state = records_pb2.MutableState()
    state.execution_info.parent.run_id = "order-7"
    state.execution_info.state = records_pb2.RUN_STATE_RUNNING
    child = RunStep(state, now=NOW)
    closing.close_run(child, common_pb2.RUN_STATUS_COMPLETED)
    assert [t.WhichOneof("task") for t in child.transfer_tasks] == [
        "close_execution",
        "child_closed",
    ]


def test_a_close_is_recorded_once_and_only_for_its_child() -> None:
    step = _started(compile_(_subflow("kid")))
    (initiated,) = step.events
    pending = step.state.pending_children[initiated.event_id]
    pending.execution_id = "x-1"
    other_execution = common_pb2.RunRef(run_id="order-7/kid", execution_id="x-0")
    assert is_its_child(pending, other_execution) is None
    assert is_its_child(pending, common_pb2.RunRef(run_id="other", execution_id="x-1")) is None
    request = history_service_pb2.RecordChildRunClosedRequest(
        initiated_event_id=initiated.event_id, status=common_pb2.RUN_STATUS_COMPLETED
    )
    request.child.run_id, request.child.execution_id = "order-7/kid", "x-1"
    request.result.payloads.add(metadata={"encoding": b"json/plain"}, data=b'{"n": 2}')
    assert is_its_child(pending, request.child) is pending
    closed = record_closed(step, pending, request)
    assert (closed.status, closed.output) == (common_pb2.RUN_STATUS_COMPLETED, {"n": 2})
    assert step.events[-1].event_type == history_pb2.EVENT_TYPE_CHILD_RUN_CLOSED
    # A second report finds no pending child: nothing more is recorded.
    assert is_its_child(step.state.pending_children.get(initiated.event_id), request.child) is None
