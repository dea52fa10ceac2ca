"""switch: registration, the case it takes, and the branches it skips."""

from __future__ import annotations

from typing import Any

from tests.unit.interpreter.support import (
    FAILED,
    SKIPPED,
    Engine,
    blueprint,
    compile_,
    done,
    external,
    scheduled,
    view,
)
from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language.validate import validate_blueprint
from tideflow_server.history.interpreter import (
    BlockView,
    CompleteBlock,
    CompleteRun,
    FailBlock,
    SkipBlock,
    decide,
)


def _switch(cases: list[dict[str, str]], default: str = "", *needs: str) -> dict[str, Any]:
    return {"id": "s", "needs": list(needs), "switchBlock": {"cases": cases, "default": default}}


def _branches() -> list[dict[str, Any]]:
    return [
        _switch(
            [
                {"when": "input.kind == 'invoice'", "goto": "invoice"},
                {"when": "input.kind == 'receipt'", "goto": "receipt"},
            ],
            "manual",
        ),
        external("invoice", "s"),
        external("receipt", "s"),
        external("manual", "s"),
        external("after_invoice", "invoice"),
        external("audit", "s"),
    ]


def test_the_first_case_that_holds_is_taken_and_the_other_targets_are_skipped() -> None:
    compiled = compile_(*_branches())
    [chose] = decide(compiled, view(input={"kind": "receipt"}))
    assert chose == CompleteBlock(
        "s", blueprint_pb2.BLOCK_KIND_SWITCH, {"case": 1, "goto": "receipt"}, route="receipt"
    )
    s = BlockView(done().status, output=chose.output, route="receipt")
    commands = decide(compiled, view({"s": s}, input={"kind": "receipt"}))
    assert scheduled(commands) == ["receipt", "audit"]  # audit is no case's target: it runs
    skips = [c for c in commands if isinstance(c, SkipBlock)]
    assert skips == [
        SkipBlock("invoice", "needs s, which chose receipt"),
        SkipBlock("manual", "needs s, which chose receipt"),
    ]


def test_no_case_holds_takes_the_default_and_a_skip_propagates_as_a_when_skip() -> None:
    engine = Engine(compile_(*_branches()), input={"kind": "memo"})
    engine.settle()
    assert engine.blocks["s"].output == {"case": None, "goto": "manual"}
    assert engine.blocks["invoice"].status == SKIPPED
    # A branch not taken counts as satisfied, as a `when` skip does: what needs it runs.
    assert sorted(engine.running()) == ["after_invoice", "audit", "manual"]
    for block_id in engine.running():
        engine.complete(block_id)
    engine.settle()
    assert engine.result == CompleteRun(None)


def test_no_case_and_no_default_skips_every_target() -> None:
    compiled = compile_(
        _switch([{"when": "false", "goto": "a"}]), external("a", "s"), external("b", "s")
    )
    engine = Engine(compiled)
    engine.settle()
    assert engine.blocks["s"].output == {"case": None, "goto": None}
    assert engine.blocks["a"].status == SKIPPED
    assert engine.running() == ["b"]


def test_a_case_that_fails_at_run_time_fails_the_block() -> None:
    compiled = compile_(_switch([{"when": "input.n > 1", "goto": "a"}]), external("a", "s"))
    [failed] = decide(compiled, view(input={"n": "x"}))
    assert isinstance(failed, FailBlock) and failed.block_id == "s"
    assert failed.error.type == "ExpressionError" and failed.error.server
    engine = Engine(compiled, input={"n": "x"})
    engine.settle()
    assert engine.blocks["s"].status == FAILED
    assert engine.blocks["a"].status == SKIPPED


def test_registration_reports_every_problem_with_its_path() -> None:
    bp = blueprint(
        external("x"),
        {
            "id": "s",
            "needs": ["x"],
            "switchBlock": {
                "cases": [
                    {"when": "", "goto": "a"},
                    {"when": "'yes'", "goto": "x"},
                    {"when": "true", "goto": ""},
                    {"when": "true", "goto": "ghost"},
                ],
                "default": "b",
            },
        },
        external("a", "s"),
        external("b"),
        {"id": "empty", "switchBlock": {}},
    )
    found: dict[str, list[str]] = {}
    for violation in validate_blueprint(bp):
        found.setdefault(violation.field, []).append(violation.description)
    cases = "blocks[1].switch_block.cases"
    assert found == {
        f"{cases}[0].when": ["a case needs a when (CEL)"],
        f"{cases}[1].when": ["`'yes'`: must be a bool, but is a string"],
        f"{cases}[1].goto": ["'x' must need 's': a route goes to a direct dependent"],
        f"{cases}[2].goto": ["the block id to go to is required"],
        f"{cases}[3].goto": ["no block 'ghost'"],
        "blocks[1].switch_block.default": ["'b' must need 's': a route goes to a direct dependent"],
        "blocks[4].switch_block.cases": ["a switch needs at least one case"],
    }
