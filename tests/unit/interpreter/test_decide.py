"""decide: what follows from a run's state, step by step as the engine applies it."""

from __future__ import annotations

import pytest

from tests.unit.interpreter.support import (
    CANCELED,
    FAILED,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    Engine,
    compile_,
    done,
    external,
    failed,
    scheduled,
    view,
)
from tideflow.api.v1 import blueprint_pb2
from tideflow_server.history.interpreter import (
    BlockError,
    BlockView,
    CompleteBlock,
    CompleteRun,
    FailBlock,
    FailRun,
    RunView,
    ScheduleExternal,
    SkipBlock,
    decide,
    initial_vars,
)


def test_sequential_chain_runs_one_block_at_a_time() -> None:
    engine = Engine(compile_(external("a"), external("b", "a"), external("c", "b")))
    assert scheduled(engine.step()) == ["a"]
    assert engine.step() == []  # a is running: nothing to do
    engine.complete("a", {"n": 1})
    assert scheduled(engine.step()) == ["b"]
    engine.complete("b")
    assert scheduled(engine.step()) == ["c"]
    engine.complete("c", "last")
    assert engine.step() == [CompleteRun(None)]


def test_schedule_external_carries_rendered_input_and_policy() -> None:
    compiled = compile_(
        external(
            "ocr",
            input={"file": "${input.file}", "name": "${run.id}-${input.file}"},
            external={"block": "ocr@3", "taskQueue": "gpu", "priority": 2},
        )
    )
    [command] = decide(compiled, view(input={"file": "a.pdf"}))
    assert isinstance(command, ScheduleExternal)
    assert command.block_id == "ocr"
    assert command.block_type == "ocr@3"
    assert command.task_queue == "gpu"
    assert command.input == {"file": "a.pdf", "name": "order-7-a.pdf"}
    assert command.priority == 2
    assert command.timeouts.start_to_close.ToSeconds() == 60
    assert command.retry.backoff_coefficient == 2.0
    # The command's messages are its own.
    command.retry.maximum_attempts = 99
    policy = compiled.blocks["ocr"].policy
    assert policy is not None and policy.retry.maximum_attempts == 10


def test_the_runs_task_queue_replaces_the_blueprints_not_a_blocks_own() -> None:
    compiled = compile_(
        external("plain"), external("named", external={"block": "ocr@1", "taskQueue": "gpu"})
    )

    def queues(run: RunView) -> dict[str, str]:
        commands = decide(compiled, run)
        assert all(isinstance(c, ScheduleExternal) for c in commands)
        return {c.block_id: c.task_queue for c in commands if isinstance(c, ScheduleExternal)}

    assert queues(view(task_queue="tenant-7")) == {"plain": "tenant-7", "named": "gpu"}
    # Without one, each block's policy decides (the blueprint's `cpu` for `plain`).
    assert queues(view()) == {"plain": "cpu", "named": "gpu"}


def test_fan_out_then_join() -> None:
    engine = Engine(
        compile_(
            external("split"),
            external("left", "split"),
            external("right", "split"),
            external("join", "left", "right", input="${[blocks.left.output, blocks.right.output]}"),
            output="${blocks.join.output}",
        )
    )
    assert scheduled(engine.step()) == ["split"]
    engine.complete("split")
    assert scheduled(engine.step()) == ["left", "right"]
    engine.complete("right", "R")
    assert engine.step() == []
    engine.complete("left", "L")
    [join] = engine.step()
    assert isinstance(join, ScheduleExternal) and join.input == ["L", "R"]
    engine.complete("join", "LR")
    assert engine.step() == [CompleteRun("LR")]


def test_order_is_topological_with_ties_by_declaration() -> None:
    compiled = compile_(external("z"), external("y"), external("x", "z"), external("w"))
    assert scheduled(decide(compiled, view())) == ["z", "y", "w"]
    assert scheduled(decide(compiled, view({"z": done(), "y": done(), "w": done()}))) == ["x"]


def test_when_false_skips_and_dependents_still_run() -> None:
    engine = Engine(
        compile_(
            external("a"),
            external("b", "a", when="blocks.a.output.big"),
            external("c", "b", input="${blocks.b.output}"),
        )
    )
    engine.step()
    engine.complete("a", {"big": False})
    assert engine.step() == [SkipBlock("b", "when is false: blocks.a.output.big")]
    [c] = engine.step()
    assert isinstance(c, ScheduleExternal) and c.input is None  # a skipped block has no output
    engine.complete("c")
    assert engine.step() == [CompleteRun(None)]


def test_failed_need_skips_dependents_and_run_fails_after_siblings_finish() -> None:
    engine = Engine(
        compile_(
            external("a"),
            external("b", "a"),
            external("c", "b"),
            external("d", "c"),
            external("slow"),
        )
    )
    assert scheduled(engine.step()) == ["a", "slow"]
    engine.fail("a", BlockError("OcrError", "bad scan"))
    assert engine.step() == [SkipBlock("b", "needs a, which failed")]
    # A block skipped for a failure skips its dependents too, all the way down.
    assert engine.step() == [SkipBlock("c", "needs b, skipped because a failed")]
    assert engine.step() == [SkipBlock("d", "needs c, skipped because a failed")]
    assert engine.step() == []  # slow is still running: the run waits for it
    engine.complete("slow")
    assert engine.step() == [FailRun(BlockError("OcrError", "bad scan"), block_id="a")]


def test_the_first_failure_in_topological_order_fails_the_run() -> None:
    compiled = compile_(external("late", "early"), external("early"), external("other"))
    blocks = {
        "early": done(),
        "late": failed("Late"),
        "other": BlockView(CANCELED),
    }
    # late is declared first, and nothing orders it after other.
    assert decide(compiled, view(blocks)) == [
        FailRun(BlockError("Late", "it broke"), block_id="late")
    ]
    blocks["late"] = done()
    assert decide(compiled, view(blocks)) == [
        FailRun(BlockError("BlockCanceled", "block other was canceled"), block_id="other")
    ]


def test_canceled_need_skips_too() -> None:
    compiled = compile_(external("a"), external("b", "a"))
    assert decide(compiled, view({"a": BlockView(CANCELED)})) == [
        SkipBlock("b", "needs a, which canceled")
    ]


def test_depends_expression_over_block_states() -> None:
    compiled = compile_(
        external("a"),
        external("b"),
        external("cleanup", "a", depends="a.succeeded || b.failed"),
        external("report", depends="blocks.a.status == 'FAILED'"),
    )
    assert scheduled(decide(compiled, view())) == ["a", "b"]
    # cleanup waits for every block its depends reads, though a.succeeded settles it.
    assert decide(compiled, view({"a": done(), "b": BlockView(RUNNING)})) == [
        SkipBlock("report", "depends is false: blocks.a.status == 'FAILED'")
    ]
    policy = compiled.blocks["cleanup"].policy
    assert policy is not None
    assert decide(compiled, view({"a": done(), "b": done()}))[0] == ScheduleExternal(
        "cleanup", "work@1", "cpu", None, policy.retry, policy.timeouts
    )
    # With depends, a failed need does not skip: depends decides.
    commands = decide(compiled, view({"a": failed(), "b": failed()}))
    assert scheduled(commands) == ["cleanup", "report"]
    assert decide(compiled, view({"a": failed(), "b": done()}))[0] == SkipBlock(
        "cleanup", "depends is false: a.succeeded || b.failed"
    )


def test_input_wiring_from_block_outputs() -> None:
    engine = Engine(
        compile_(
            external("classify", input="${input.doc}"),
            external(
                "extract",
                "classify",
                input={
                    "label": "${blocks.classify.output.label}",
                    "pages": "${blocks.classify.output.pages + 1}",
                    "note": "label=${blocks.classify.output.label}",
                },
            ),
        ),
        input={"doc": "s3://bucket/a.pdf"},
    )
    [classify] = engine.step()
    assert isinstance(classify, ScheduleExternal) and classify.input == "s3://bucket/a.pdf"
    engine.complete("classify", {"label": "invoice", "pages": 2.0})
    [extract] = engine.step()
    assert isinstance(extract, ScheduleExternal)
    assert extract.input == {"label": "invoice", "pages": 3, "note": "label=invoice"}


def test_output_mapping_and_output_schema() -> None:
    blocks = [external("a"), external("b", "a")]
    mapping = {"total": "${blocks.a.output.n + blocks.b.output.n}", "run": "${run.id}"}
    finished = {"a": done({"n": 1}), "b": done({"n": 2})}
    compiled = compile_(*blocks, output=mapping)
    assert decide(compiled, view(finished)) == [CompleteRun({"run": "order-7", "total": 3})]

    strict = compile_(
        *blocks,
        output=mapping,
        outputSchema={"type": "object", "properties": {"total": {"type": "string"}}},
    )
    [result] = decide(strict, view(finished))
    assert result == FailRun(
        BlockError(
            "OutputSchemaViolation",
            'output.total: 3 is not of type "string"',
            non_retryable=True,
            server=True,
        )
    )


def test_output_rendering_error_fails_the_run() -> None:
    compiled = compile_(external("a"), output="${blocks.a.output.missing}")
    [result] = decide(compiled, view({"a": done({})}))
    assert isinstance(result, FailRun)
    assert result.error.type == "ExpressionError" and result.error.server
    assert result.error.message == ('output: `blocks.a.output.missing`: no such key: "missing"')


def test_input_rendering_error_fails_the_block() -> None:
    compiled = compile_(external("a"), external("b", "a", input="${blocks.a.output.x}"))
    [command] = decide(compiled, view({"a": done({"y": 1})}))
    assert command == FailBlock(
        "b",
        BlockError(
            "ExpressionError",
            'blocks[1].input: `blocks.a.output.x`: no such key: "x"',
            non_retryable=True,
            server=True,
        ),
    )


@pytest.mark.parametrize("field", ["when", "depends"])
def test_a_condition_that_is_not_a_bool_fails_the_block(field: str) -> None:
    """Registration refuses what can never be a bool; a value that turns out not to be one
    (a field of the input here) fails the block at run time."""
    compiled = compile_(external("a", **{field: "input.n"}))
    [command] = decide(compiled, view(input={"n": 1}))
    assert isinstance(command, FailBlock)
    assert command.error.type == "ExpressionError"
    assert command.error.message == f"blocks[0].{field}: `input.n`: wants a bool, got an int"
    assert command.error.server and command.error.non_retryable


def test_set_transform_and_vars() -> None:
    engine = Engine(
        compile_(
            {"id": "count", "set": {"vars": {"n": "${vars.n + 1}", "seen": "${input.who}"}}},
            {
                "id": "shape",
                "needs": ["count"],
                "transform": {"output": {"n": "${vars.n}", "who": "hi ${vars.seen}"}},
            },
            vars={"n": "${input.start}", "seen": None},
            output="${blocks.shape.output}",
        ),
        input={"start": 41, "who": "ana"},
    )
    assert engine.vars == {"n": 41, "seen": None}
    assert engine.step() == [
        CompleteBlock(
            "count",
            blueprint_pb2.BLOCK_KIND_SET,
            output={"n": 42, "seen": "ana"},
            vars={"n": 42, "seen": "ana"},
        )
    ]
    assert engine.step() == [
        CompleteBlock("shape", blueprint_pb2.BLOCK_KIND_TRANSFORM, {"n": 42, "who": "hi ana"})
    ]
    assert engine.step() == [CompleteRun({"n": 42, "who": "hi ana"})]


def test_succeed_completes_the_run_at_once() -> None:
    compiled = compile_(
        external("slow"),
        external("check"),
        {"id": "early", "needs": ["check"], "succeed": {"output": "${blocks.check.output}"}},
        external("never", "early"),
    )
    blocks: dict[str, BlockView] = {"slow": BlockView(RUNNING), "check": done("ok")}
    assert decide(compiled, view(blocks)) == [
        CompleteBlock("early", blueprint_pb2.BLOCK_KIND_SUCCEED, "ok"),
        CompleteRun("ok"),
    ]
    # Once it has completed, the run's result is settled whatever else the view holds.
    blocks["early"] = done("ok")
    assert decide(compiled, view(blocks)) == [CompleteRun("ok")]


def test_succeed_without_output_uses_the_blueprint_output_and_schema() -> None:
    compiled = compile_(
        external("a"),
        {"id": "stop", "needs": ["a"], "succeed": {}},
        output={"a": "${blocks.a.output}"},
        outputSchema={
            "type": "object",
            "required": ["a"],
            "properties": {"a": {"type": "integer"}},
        },
    )
    assert decide(compiled, view({"a": done(5)}))[1] == CompleteRun({"a": 5})
    [complete, result] = decide(compiled, view({"a": done("five")}))
    assert complete == CompleteBlock("stop", blueprint_pb2.BLOCK_KIND_SUCCEED, {"a": "five"})
    assert isinstance(result, FailRun) and result.block_id == "stop"
    assert result.error.type == "OutputSchemaViolation"


def test_fail_block_fails_and_run_fails_when_nothing_runs() -> None:
    engine = Engine(
        compile_(
            external("a"),
            {
                "id": "bad",
                "needs": ["a"],
                "when": "blocks.a.output == 'bad'",
                "fail": {"errorType": "Rejected", "message": "document rejected"},
            },
            external("other"),
            {"id": "plain", "needs": ["other"], "fail": {}},
        )
    )
    assert scheduled(engine.step()) == ["a", "other"]
    engine.complete("a", "bad")
    error = BlockError("Rejected", "document rejected", non_retryable=True)
    assert engine.step() == [FailBlock("bad", error)]
    assert engine.step() == []
    engine.complete("other")
    assert engine.step() == [
        FailBlock("plain", BlockError("Failed", "plain failed", non_retryable=True))
    ]
    assert engine.step() == [FailRun(error, block_id="bad")]


def test_all_ready_blocks_at_once_never_a_block_twice() -> None:
    compiled = compile_(
        external("a"),
        {"id": "s", "set": {"vars": {"x": 1}}},
        external("b", "a", when="false"),
    )
    first = decide(compiled, view())
    assert [type(c) for c in first] == [ScheduleExternal, CompleteBlock]
    running = {"a": BlockView(RUNNING), "s": done({"x": 1})}
    assert decide(compiled, view(running)) == []
    assert decide(compiled, view({**running, "a": done()})) == [
        SkipBlock("b", "when is false: false")
    ]


def test_same_view_same_commands() -> None:
    compiled = compile_(
        external("a", input={"z": 1, "a": ["${input}"], "m": "${ {'q': 1, 'b': 2} }"}),
        external("b", input="${input}"),
    )
    run = view(input={"k": [1, 2], "j": {"y": 1, "x": 2}})
    assert decide(compiled, run) == decide(compiled, run)
    again = compile_(
        external("a", input={"z": 1, "a": ["${input}"], "m": "${ {'q': 1, 'b': 2} }"}),
        external("b", input="${input}"),
    )
    assert decide(again, run) == decide(compiled, run)
    [a, _] = decide(compiled, run)
    assert isinstance(a, ScheduleExternal) and isinstance(a.input, dict)
    assert list(a.input) == ["a", "m", "z"]


def test_no_blocks_reached_statuses_other_than_terminal_wait() -> None:
    compiled = compile_(external("a"))
    assert decide(compiled, view({"a": BlockView(RUNNING)})) == []
    assert decide(compiled, view({"a": BlockView(SKIPPED)})) == [CompleteRun(None)]
    assert decide(compiled, view({"a": BlockView(SUCCEEDED, output=1)})) == [CompleteRun(None)]
    assert decide(compiled, view({"a": BlockView(FAILED)})) == [
        FailRun(BlockError("BlockFailed", "block a failed"), block_id="a")
    ]


def test_initial_vars_render_defaults_against_input_and_run() -> None:
    compiled = compile_(
        external("a"), vars={"prefix": "${run.flow}/${run.id}/${input.doc}", "n": 3}
    )
    assert initial_vars(compiled, {"doc": "x"}) == {"n": 3, "prefix": "docs//x"}
    assert initial_vars(compiled, {"doc": "x"}, run=view()) == {
        "n": 3,
        "prefix": "docs/order-7/x",
    }


def test_a_failure_that_routed_runs_its_route_skips_its_other_dependents_and_is_handled() -> None:
    compiled = compile_(
        external("x"),
        external("r", "x"),
        external("d", "x"),
        external("e", "d"),
    )
    routed = BlockView(FAILED, error=BlockError("Boom", "x broke"), attempt=1, route="r")
    commands = decide(compiled, view({"x": routed}))
    assert scheduled(commands) == ["r"]
    assert [c for c in commands if isinstance(c, SkipBlock)] == [
        SkipBlock("d", "needs x, which routed to r")
    ]
    # d was skipped by a route, not for a failure: what needs d runs, and the run completes.
    blocks = {"x": routed, "r": done(), "d": BlockView(SKIPPED)}
    assert scheduled(decide(compiled, view(blocks))) == ["e"]
    assert decide(compiled, view({**blocks, "e": done()})) == [CompleteRun(None)]


def test_a_failure_that_did_not_route_still_fails_the_run() -> None:
    compiled = compile_(external("x"), external("d", "x"))
    commands = decide(compiled, view({"x": failed()}))
    assert commands == [SkipBlock("d", "needs x, which failed")]
    [result] = decide(compiled, view({"x": failed(), "d": BlockView(SKIPPED)}))
    assert isinstance(result, FailRun) and result.block_id == "x"
