"""catch: registration, how clauses match, and what each outcome does to the run."""

from __future__ import annotations

from typing import Any

from tests.unit.interpreter.support import (
    FAILED,
    SKIPPED,
    SUCCEEDED,
    Engine,
    blueprint,
    compile_,
    external,
    scheduled,
    view,
)
from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language.validate import validate_blueprint
from tideflow_server.history.interpreter import (
    BlockError,
    BlockView,
    CatchFailure,
    CompleteRun,
    FailRun,
    SkipBlock,
    decide,
)

GOTO = blueprint_pb2.CATCH_ACTION_GOTO
CONTINUE = blueprint_pb2.CATCH_ACTION_CONTINUE
NONE = blueprint_pb2.CATCH_ACTION_NONE


def _charge(*catch: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        external("charge", catch=list(catch)),
        external("ask_again", "charge"),
        external("ship", "charge"),
    ]


def _failed(engine: Engine, error: BlockError) -> list[Any]:
    engine.settle()
    engine.fail("charge", error)
    return engine.step()


def test_a_matching_goto_routes_the_failure_and_the_run_completes() -> None:
    engine = Engine(compile_(*_charge({"errorTypes": ["Declined"], "goto": "ask_again"})))
    assert _failed(engine, BlockError("Declined", "card declined")) == [
        CatchFailure("charge", 0, GOTO, "ask_again")
    ]
    assert scheduled(engine.step()) == ["ask_again"]
    assert engine.blocks["charge"].status == FAILED and engine.blocks["charge"].caught == 0
    assert engine.blocks["ship"].status == SKIPPED
    engine.complete("ask_again")
    engine.settle()
    assert engine.result == CompleteRun(None)


def test_continue_makes_the_error_the_output_and_the_downstream_blocks_run() -> None:
    engine = Engine(compile_(*_charge({"errorTypes": ["Other"]}, {"when": "error.type == 'X'"})))
    assert _failed(engine, BlockError("X", "boom")) == [
        CatchFailure("charge", 1, CONTINUE, output={"type": "X", "message": "boom"})
    ]
    assert sorted(scheduled(engine.step())) == ["ask_again", "ship"]
    charge = engine.blocks["charge"]
    assert charge.status == SUCCEEDED and charge.output == {"type": "X", "message": "boom"}


def test_a_handler_does_not_run_when_the_block_succeeds() -> None:
    engine = Engine(compile_(*_charge({"goto": "ask_again"})))
    engine.settle()
    engine.complete("charge")
    assert scheduled(engine.step()) == ["ship"]
    assert engine.blocks["ask_again"].status == SKIPPED


def test_no_match_is_recorded_once_and_the_failure_stands() -> None:
    compiled = compile_(
        *_charge({"errorTypes": ["Declined"], "goto": "ask_again"}, {"when": "error.message > 3"})
    )
    engine = Engine(compiled)
    # The type does not match; the second clause's `when` fails at run time: no match either.
    assert _failed(engine, BlockError("Timeout", "slow")) == [CatchFailure("charge", -1, NONE)]
    engine.settle()
    assert isinstance(engine.result, FailRun) and engine.result.block_id == "charge"
    assert engine.log[-3:-1] == [
        SkipBlock("ask_again", "needs charge, which failed"),
        SkipBlock("ship", "needs charge, which failed"),
    ]
    # Judged once: a view that carries the outcome is not judged again.
    judged = BlockView(FAILED, error=BlockError("Timeout", "slow"), caught=-1)
    assert not any(isinstance(c, CatchFailure) for c in decide(compiled, view({"charge": judged})))


def test_an_engine_error_matches_only_a_clause_without_error_types() -> None:
    engine_error = BlockError("ExpressionError", "bad", non_retryable=True, server=True)
    typed = Engine(compile_(*_charge({"errorTypes": ["ExpressionError"], "goto": "ask_again"})))
    assert _failed(typed, engine_error) == [CatchFailure("charge", -1, NONE)]
    untyped = Engine(compile_(*_charge({"goto": "ask_again"})))
    assert _failed(untyped, engine_error) == [CatchFailure("charge", 0, GOTO, "ask_again")]


def test_a_fail_block_is_caught_too() -> None:
    compiled = compile_(
        {"id": "f", "fail": {"errorType": "Rejected"}, "catch": [{"errorTypes": ["Rejected"]}]},
        {"id": "after", "needs": ["f"], "transform": {"output": "${blocks.f.output.type}"}},
        output="${blocks.after.output}",
    )
    engine = Engine(compiled)
    engine.settle()
    assert engine.result == CompleteRun("Rejected")


def test_registration_reports_every_problem_with_its_path() -> None:
    bp = blueprint(
        external(
            "a",
            catch=[
                {"errorTypes": ["", "Ok"], "goto": "b", "compensate": True},
                {"when": "error.code == 1 && vars.nope", "goto": "c"},
                {"when": "'yes'", "goto": "ghost"},
            ],
        ),
        external("b", "a"),
        external("c"),
    )
    found: dict[str, list[str]] = {}
    for violation in validate_blueprint(bp):
        found.setdefault(violation.field, []).append(violation.description)
    assert found == {
        "blocks[0].catch[0].error_types[0]": ["empty error type"],
        "blocks[0].catch[0]": ["a clause either goes to a block or compensates, not both"],
        "blocks[0].catch[1].when": [
            "`error.code == 1 && vars.nope`: vars.nope is never set (declare it in vars or "
            "assign it in a set block)"
        ],
        "blocks[0].catch[1].goto": ["'c' must need 'a': a route goes to a direct dependent"],
        "blocks[0].catch[2].when": ["`'yes'`: must be a bool, but is a string"],
        "blocks[0].catch[2].goto": ["no block 'ghost'"],
    }
