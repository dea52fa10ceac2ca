"""The `subflow` kind: its registration checks, what starting it commands, and what a child's
close (or a start that failed) does to the block."""

from __future__ import annotations

from google.protobuf import duration_pb2

from tideflow.api.v1 import blueprint_pb2, common_pb2
from tideflow.blueprint.language.commands import StartChild
from tideflow.blueprint.language.kinds.subflow import ChildClosed, ChildStartFailed
from tideflow_server.history.interpreter import (
    BlockView,
    CompiledBlueprint,
    CompleteBlock,
    FailBlock,
    RunView,
    deliver,
    validate_blueprint,
)

from .support import RUNNING, Engine, blueprint, compile_, external, view


def _problems(bp: blueprint_pb2.Blueprint) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for v in validate_blueprint(bp):
        found.setdefault(v.field, []).append(v.description)
    return found


def test_registration_reports_every_problem_with_its_path() -> None:
    found = _problems(
        blueprint(
            {"id": "a", "subflow": {}},
            {"id": "b", "subflow": {"flow": "report@v2", "runTimeout": "-5s"}},
            {"id": "c", "subflow": {"flow": "report", "runId": "${blocks.nobody.output}"}},
            {"id": "d", "subflow": {"flow": "report@1"}, "input": "${blocks.ghost.output}"},
            {"id": "e", "subflow": {"flow": "report@1", "runTimeout": f"{3651 * 86_400}s"}},
        )
    )
    assert found == {
        "blocks[0].subflow.flow": ["the child flow is required, as name or name@version"],
        "blocks[1].subflow.flow": [
            "'report@v2' is not a flow name or name@version (e.g. report@2)"
        ],
        "blocks[1].subflow.run_timeout": ["must not be negative, got -5s"],
        "blocks[2].subflow.run_id": ["`blocks.nobody.output`: blocks.nobody names no block"],
        "blocks[3].input": ["`blocks.ghost.output`: blocks.ghost names no block"],
        "blocks[4].subflow.run_timeout": ["is 315446400s, over the limit of 315360000s"],
    }


def test_an_unknown_parent_close_policy_is_reported() -> None:
    bp = blueprint({"id": "a", "subflow": {"flow": "report"}})
    bp.blocks[0].subflow.parent_close_policy = 9  # type: ignore[assignment]
    assert _problems(bp) == {
        "blocks[0].subflow.parent_close_policy": ["unknown parent close policy 9"]
    }


def test_start_renders_run_id_input_and_options() -> None:
    compiled = compile_(
        external("ocr"),
        {
            "id": "report",
            "needs": ["ocr"],
            "subflow": {
                "flow": "report@2",
                "runId": "${run.id}-report",
                "taskQueue": "reports",
                "runTimeout": "90s",
                "parentClosePolicy": "PARENT_CLOSE_POLICY_ABANDON",
            },
            "input": {"pages": "${blocks.ocr.output.pages}"},
        },
    )
    engine = Engine(compiled)
    engine.step()
    engine.complete("ocr", {"pages": 3})
    assert engine.decide() == [
        StartChild(
            block_id="report",
            flow="report@2",
            run_id="order-7-report",
            input={"pages": 3},
            task_queue="reports",
            run_timeout=duration_pb2.Duration(seconds=90),
            parent_close_policy=blueprint_pb2.PARENT_CLOSE_POLICY_ABANDON,
        )
    ]


def test_defaults_derive_the_run_id_and_terminate_the_child() -> None:
    compiled = compile_({"id": "child", "subflow": {"flow": "report"}})
    assert Engine(compiled).decide() == [
        StartChild(
            block_id="child",
            flow="report",
            run_id="order-7/child",
            parent_close_policy=blueprint_pb2.PARENT_CLOSE_POLICY_TERMINATE,
        )
    ]


def test_a_run_id_that_is_no_string_fails_the_block() -> None:
    compiled = compile_({"id": "child", "subflow": {"flow": "report", "runId": "${input.n}"}})
    (command,) = Engine(compiled, input={"n": 7}).decide()
    assert isinstance(command, FailBlock)
    assert command.error.type == "ChildRunIdInvalid"
    assert "got 7" in command.error.message


def _running_child() -> tuple[CompiledBlueprint, RunView]:
    compiled = compile_(
        {"id": "child", "subflow": {"flow": "report"}},
        {"id": "after", "needs": ["child"], "transform": {"output": "${blocks.child.output}"}},
    )
    return compiled, view({"child": BlockView(RUNNING)})


def test_a_completed_child_completes_the_block_with_its_result() -> None:
    compiled, run = _running_child()
    event = ChildClosed("order-7/child", common_pb2.RUN_STATUS_COMPLETED, {"total": 12})
    assert deliver(compiled, run, "child", event) == [
        CompleteBlock("child", blueprint_pb2.BLOCK_KIND_SUBFLOW, {"total": 12})
    ]


def test_a_child_that_did_not_complete_fails_the_block_with_a_catchable_type() -> None:
    compiled, run = _running_child()
    cases = {
        common_pb2.RUN_STATUS_FAILED: ("ChildRunFailed", "failed: boom"),
        common_pb2.RUN_STATUS_TIMED_OUT: ("ChildRunTimedOut", "timed out: boom"),
        common_pb2.RUN_STATUS_CANCELED: ("ChildRunCanceled", "canceled: boom"),
        common_pb2.RUN_STATUS_TERMINATED: ("ChildRunTerminated", "terminated: boom"),
    }
    for status, (error_type, ending) in cases.items():
        event = ChildClosed("order-7/child", status, message="boom")
        (command,) = deliver(compiled, run, "child", event)
        assert isinstance(command, FailBlock)
        assert command.error.type == error_type
        assert command.error.message == f"child run 'order-7/child' {ending}"
        assert command.error.non_retryable and not command.error.server  # catch matches it


def test_a_child_that_could_not_start_fails_the_block() -> None:
    compiled, run = _running_child()
    event = ChildStartFailed("order-7/child", "flow 'report' not found")
    (command,) = deliver(compiled, run, "child", event)
    assert isinstance(command, FailBlock)
    assert command.error.type == "ChildRunStartFailed"
    assert command.error.message == (
        "child run 'order-7/child' was not started: flow 'report' not found"
    )
