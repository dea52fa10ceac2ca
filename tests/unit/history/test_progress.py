"""progress: what a run step records as it applies the interpreter's commands, checked on the
mutable state and events it leaves (no server, no store)."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.unit.interpreter.support import compile_, external
from tideflow.api.v1 import blueprint_pb2, common_pb2, failure_pb2, history_pb2
from tideflow_server.history import blocks, closing, payloads, progress
from tideflow_server.history.api import describe_run
from tideflow_server.history.interpreter import BlockError, CompiledBlueprint
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import records_pb2

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _new_run(compiled: CompiledBlueprint, *, task_queue: str = "") -> RunStep:
    state = records_pb2.MutableState()
    info = state.execution_info
    info.run_id, info.execution_id = "order-7", "e-1"
    info.flow.name, info.flow.version = compiled.name, compiled.version
    info.state = records_pb2.RUN_STATE_RUNNING
    info.status = common_pb2.RUN_STATUS_RUNNING
    info.next_event_id = 2
    info.task_queue.name = task_queue or compiled.blueprint.task_queue
    return RunStep(state, now=NOW)


def _advance(step: RunStep, compiled: CompiledBlueprint) -> None:
    progress.advance(step, compiled, namespace="default", max_pending_blocks=100)


def _reload(step: RunStep) -> RunStep:
    """The state as another history host reads it back from the store."""
    state = records_pb2.MutableState.FromString(step.state.SerializeToString())
    return RunStep(state, now=NOW)


def _pending(step: RunStep, block_id: str) -> records_pb2.PendingBlock:
    return next(p for p in step.state.pending_blocks.values() if p.block_id == block_id)


def _complete(step: RunStep, block_id: str) -> None:
    pending = _pending(step, block_id)
    blocks.record_started(step, pending, identity="w-1", request_id="r-1")
    blocks.complete(step, pending, common_pb2.Payloads(), "w-1")


def _queues(step: RunStep) -> dict[str, str]:
    return {p.block_id: p.task_queue.name for p in step.state.pending_blocks.values()}


def test_the_starts_task_queue_holds_for_blocks_scheduled_after_a_reload() -> None:
    compiled = compile_(
        external("a"),
        external("b", "a", external={"block": "ocr@1", "taskQueue": "gpu"}),
        external("c", "a"),
    )
    step = _new_run(compiled, task_queue="tenant-7")
    _advance(step, compiled)
    assert _queues(step) == {"a": "tenant-7"}

    step = _reload(step)
    _complete(step, "a")
    _advance(step, compiled)
    assert _queues(step) == {"b": "gpu", "c": "tenant-7"}
    dispatched = {t.block_task.block_id: t.block_task.task_queue.name for t in step.transfer_tasks}
    assert dispatched == {"b": "gpu", "c": "tenant-7"}


def _order_blueprint() -> CompiledBlueprint:
    """Declared `final, p, bad, q, r, s`; reached `r, s` (one decision), then `p` (skipped),
    `bad` (its input fails) and `q` (scheduled), again one decision, then `final`."""
    return compile_(
        {"id": "final", "needs": ["p", "q"], "transform": {"output": "${blocks.q.output}"}},
        external("p", "s", when="blocks.s.output.go"),
        external("bad", "r", input="${blocks.r.output.missing}"),
        external("q", "r"),
        {"id": "r", "transform": {"output": {"n": 1}}},
        {"id": "s", "set": {"vars": {"go": False}}},
    )


def _summaries(step: RunStep) -> list[tuple[str, str, str]]:
    return [
        (
            b.block_id,
            blueprint_pb2.BlockKind.Name(b.kind).removeprefix("BLOCK_KIND_"),
            common_pb2.BlockStatus.Name(b.status).removeprefix("BLOCK_STATUS_"),
        )
        for b in describe_run.block_summaries(step.state)
    ]


def test_blocks_are_described_in_the_order_reached_ties_in_declaration_order() -> None:
    compiled = _order_blueprint()
    step = _new_run(compiled)
    _advance(step, compiled)
    failed = next(e for e in step.events if e.HasField("system_block_failed_event_attributes"))
    assert failed.system_block_failed_event_attributes.kind == blueprint_pb2.BLOCK_KIND_EXTERNAL
    step = _reload(step)
    _complete(step, "q")
    _advance(step, compiled)
    assert _summaries(step) == [
        ("r", "TRANSFORM", "SUCCEEDED"),
        ("s", "SET", "SUCCEEDED"),
        ("p", "EXTERNAL", "SKIPPED"),
        ("bad", "EXTERNAL", "FAILED"),
        ("q", "EXTERNAL", "SUCCEEDED"),
        ("final", "TRANSFORM", "SUCCEEDED"),
    ]
    assert [r.reached for _, r in sorted(step.state.block_results.items())] == [4, 6, 3, 5, 1, 2]


def test_blocks_reached_before_the_order_was_recorded_come_first_by_event() -> None:
    state = records_pb2.MutableState()
    for block_id, scheduled, closed, reached in [
        ("late", 9, 12, 0),
        ("early", 3, 5, 0),
        ("skipped", 0, 0, 0),
        ("new", 14, 0, 4),
    ]:
        state.block_results[block_id].CopyFrom(
            records_pb2.BlockResult(
                scheduled_event_id=scheduled, close_event_id=closed, reached=reached
            )
        )
    order = [b.block_id for b in describe_run.block_summaries(state)]
    assert order == ["early", "late", "skipped", "new"]


def test_engine_errors_are_server_failures_and_read_back_as_they_were() -> None:
    expression = BlockError("ExpressionError", "`input.n`: wants a bool", True, server=True)
    rejected = BlockError("Rejected", "document rejected", True)
    recorded = closing.engine_failure(expression)
    assert recorded.source == "tideflow"
    assert recorded.WhichOneof("failure_info") == "server_failure_info"
    assert recorded.server_failure_info.type == "ExpressionError"
    assert closing.engine_failure(rejected).application_failure_info.type == "Rejected"
    # `${blocks.<id>.error}` reads the same error back from the recorded failure.
    assert progress.block_error(recorded) == expression
    assert progress.block_error(closing.engine_failure(rejected)) == rejected


def _run_failed(step: RunStep) -> failure_pb2.Failure:
    [closed] = [e for e in step.events if e.HasField("run_failed_event_attributes")]
    return closed.run_failed_event_attributes.failure


def test_a_blocks_failure_is_recorded_where_it_happened_over_the_workers_failure() -> None:
    compiled = compile_(external("a"))
    step = _new_run(compiled)
    _advance(step, compiled)
    step = _reload(step)
    pending = _pending(step, "a")
    scheduled_event_id = pending.scheduled_event_id
    blocks.record_started(step, pending, identity="w-1", request_id="r-1")
    sent = failure_pb2.Failure(message="no way", source="go", stack_trace="main.go:7")
    sent.application_failure_info.type = "Refused"
    sent.application_failure_info.non_retryable = True
    sent.cause.message = "underneath"
    assert not blocks.fail(step, pending, sent, identity="w-1")
    _advance(step, compiled)

    [started] = [e for e in step.events if e.HasField("block_started_event_attributes")]
    recorded = step.state.block_results["a"].failure
    assert recorded.message == "block 'a' failed"
    assert recorded.source == "tideflow"
    assert recorded.block_failure_info == failure_pb2.BlockFailureInfo(
        block_id="a",
        block_type="work@1",
        attempt=1,
        scheduled_event_id=scheduled_event_id,
        started_event_id=started.event_id,
        identity="w-1",
        retry_state=common_pb2.RETRY_STATE_NON_RETRYABLE_FAILURE,
    )
    assert recorded.cause == sent
    assert _run_failed(step) == recorded
    # Expressions still read the block's own error.
    assert progress.run_view(step.state, "default").blocks["a"].error == BlockError(
        "Refused", "no way", True
    )


def test_a_failure_recorded_before_blocks_said_where_is_wrapped_when_the_run_fails() -> None:
    compiled = compile_(external("a"))
    step = _new_run(compiled)
    sent = failure_pb2.Failure(message="no way", source="go")
    sent.application_failure_info.type = "Refused"
    result = step.state.block_results["a"]
    result.kind, result.status = blueprint_pb2.BLOCK_KIND_EXTERNAL, common_pb2.BLOCK_STATUS_FAILED
    result.failure.CopyFrom(sent)
    _advance(step, compiled)
    failure = _run_failed(step)
    assert failure.message == "block 'a' failed"
    assert failure.block_failure_info == failure_pb2.BlockFailureInfo(block_id="a")
    assert failure.cause == sent


def test_a_succeed_blocks_output_that_breaks_the_schema_fails_the_run_as_the_engines() -> None:
    compiled = compile_(
        {"id": "stop", "succeed": {"output": "${input}"}}, outputSchema={"type": "string"}
    )
    step = _new_run(compiled)
    step.info.input.number_value = 5
    _advance(step, compiled)
    failure = _run_failed(step)
    assert failure.message == "block 'stop': output: 5 is not of type \"string\""
    assert failure.server_failure_info == failure_pb2.ServerFailureInfo(
        type="OutputSchemaViolation", non_retryable=True
    )
    assert step.state.block_results["stop"].status == common_pb2.BLOCK_STATUS_SUCCEEDED


def _map_blueprint(*more: dict[str, object]) -> CompiledBlueprint:
    return compile_(
        {
            "id": "m",
            "mapBlock": {
                "items": "input.items",
                "maxConcurrency": 2,
                "blocks": [external("w", input="${item}")],
            },
        },
        *more,
    )


def test_a_maps_items_are_recorded_once_and_its_blocks_addressed_by_path() -> None:
    compiled = _map_blueprint()
    step = _new_run(compiled)
    step.info.input.CopyFrom(payloads.to_value({"items": ["x", "y", "z"]}))
    _advance(step, compiled)
    started = [e for e in step.events if e.event_type == history_pb2.EVENT_TYPE_MAP_STARTED]
    assert [e.map_started_event_attributes.block_id for e in started] == ["m"]
    assert sorted(p.block_id for p in step.state.pending_blocks.values()) == ["m[0].w", "m[1].w"]
    assert len(step.state.map_blocks["m"].items.values) == 3
    assert step.state.block_results["m"].scopes.opened == 2

    step = _reload(step)  # the items come back from the state, not from `items` again
    step.info.input.CopyFrom(payloads.to_value({"items": []}))
    _complete(step, "m[1].w")
    _advance(step, compiled)
    assert sorted(p.block_id for p in step.state.pending_blocks.values()) == ["m[0].w", "m[2].w"]
    for block_id in ("m[0].w", "m[2].w"):
        _complete(step, block_id)
        _advance(step, compiled)
    assert step.info.status == common_pb2.RUN_STATUS_COMPLETED
    summaries = {s.block_id: s for s in describe_run.block_summaries(step.state)}
    assert list(summaries) == ["m", "m[0].w", "m[1].w", "m[2].w"]
    scopes = summaries["m"].scopes
    assert (scopes.total, scopes.started, scopes.succeeded, scopes.failed) == (3, 3, 3, 0)
    assert summaries["m"].kind == blueprint_pb2.BLOCK_KIND_MAP


def test_a_run_that_ends_while_a_map_runs_cancels_the_map() -> None:
    compiled = _map_blueprint(
        external("gate"), {"id": "done", "needs": ["gate"], "succeed": {"output": "early"}}
    )
    step = _new_run(compiled)
    step.info.input.CopyFrom(payloads.to_value({"items": [1, 2]}))
    _advance(step, compiled)
    assert step.state.block_results["m"].status == common_pb2.BLOCK_STATUS_RUNNING
    _complete(step, "gate")
    _advance(step, compiled)
    assert step.info.status == common_pb2.RUN_STATUS_COMPLETED
    assert step.state.block_results["m"].status == common_pb2.BLOCK_STATUS_CANCELED


def test_a_namespaces_max_map_items_tightens_the_servers_bound() -> None:
    compiled = _map_blueprint()
    step = _new_run(compiled)
    step.info.input.CopyFrom(payloads.to_value({"items": [1, 2, 3]}))
    progress.advance(step, compiled, namespace="default", max_pending_blocks=100, max_map_items=2)
    assert step.info.status == common_pb2.RUN_STATUS_FAILED
    failure = _run_failed(step).cause
    assert failure.server_failure_info.type == "MapItemsLimitExceeded"
    assert failure.message.startswith("3 items, more than the 2 a map runs in-line")
    assert "limits.max_map_items" in failure.message
    assert not step.state.pending_blocks
