"""loop: registration checks, and decisions over its iterations' scopes through the Engine."""

from __future__ import annotations

from typing import Any

from tests.unit.interpreter.support import (
    FAILED,
    RUNNING,
    SUCCEEDED,
    Engine,
    blueprint,
    compile_,
    external,
)
from tideflow.api.v1 import blueprint_pb2
from tideflow_server.history.interpreter import (
    CompleteRun,
    FailRun,
    Limits,
    Scopes,
    validate_blueprint,
)


def loop_block(block_id: str, *needs: str, **fields: Any) -> dict[str, Any]:
    spec = {
        "maxIterations": 5,
        "condition": "iteration.output.score < 3",
        "blocks": [external("draft", input={"round": "${iteration.index}"})],
    }
    return {"id": block_id, "needs": list(needs), "loop": {**spec, **fields}}


def problems(bp: blueprint_pb2.Blueprint, **options: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for v in validate_blueprint(bp, **options):
        found.setdefault(v.field, []).append(v.description)
    return found


def test_registration_reports_every_problem_with_its_path() -> None:
    bp = blueprint(
        loop_block(
            "l",
            maxIterations=0,
            condition="iteration.output.score",
            blocks=[external("a", input={"x": "${item}"}), external("a")],
        ),
        loop_block("big", maxIterations=2_000, condition="size(x) > 1"),
    )
    found = problems(bp)
    assert found["blocks[0].loop.max_iterations"] == ["max_iterations is required, at least 1"]
    assert "unknown variable 'item'" in found["blocks[0].loop.blocks[0].input.x"][0]
    assert found["blocks[0].loop.blocks[1].id"] == [
        "duplicate block id 'a' (first at blocks[0].loop.blocks[0])"
    ]
    assert found["blocks[1].loop.max_iterations"] == [
        "at most 1000 (the server's blueprint.max_loop_iterations), got 2000"
    ]
    assert "unknown variable 'x'" in found["blocks[1].loop.condition"][0]
    assert (
        problems(bp, limits=Limits(max_loop_iterations=3000)).get("blocks[1].loop.max_iterations")
        is None
    )


def test_inside_a_container_the_variables_it_binds_are_no_block_ids() -> None:
    inner = loop_block("l", blocks=[external("iteration"), external("item", "iteration")])
    bp = blueprint({"id": "m", "mapBlock": {"items": "[1]", "blocks": [inner]}})
    found = problems(bp)
    at = "blocks[0].map_block.blocks[0].loop.blocks"
    assert found[f"{at}[0].id"] == ["'iteration' is reserved here: its container binds it"]
    assert found[f"{at}[1].id"] == ["'item' is reserved here: its container binds it"]


def test_iterations_run_while_the_condition_holds_and_keep_every_output() -> None:
    engine = Engine(compile_(loop_block("l"), external("after", "l")))
    engine.settle()
    for round_ in range(3):
        assert engine.running() == ["l", f"l[{round_}].draft"]
        scheduled = engine.log[-1]
        assert getattr(scheduled, "input", None) == {"round": round_}
        engine.complete(f"l[{round_}].draft", {"score": round_ + 1})
        engine.settle()
    view = engine.blocks["l"]
    assert view.status == SUCCEEDED
    assert view.output == {
        "iterations": [{"score": 1}, {"score": 2}, {"score": 3}],
        "last": {"score": 3},
    }
    assert engine.running() == ["after"]


def test_max_iterations_completes_the_loop_and_previous_reads_the_last_output() -> None:
    compiled = compile_(
        loop_block(
            "l",
            maxIterations=3,
            condition="true",
            blocks=[
                {
                    "id": "step",
                    "transform": {"output": "${iteration.index == 0 ? 1 : iteration.previous * 2}"},
                }
            ],
        )
    )
    engine = Engine(compiled)
    engine.settle()
    assert engine.blocks["l"].output == {"iterations": [1, 2, 4], "last": 4}
    assert engine.blocks["l"].scopes == Scopes(opened=3, succeeded=3, failed=0)
    assert engine.result == CompleteRun(None)


def test_a_failed_iteration_fails_the_loop() -> None:
    engine = Engine(compile_(loop_block("l")))
    engine.settle()
    engine.complete("l[0].draft", {"score": 0})
    engine.settle()
    engine.fail("l[1].draft")
    engine.settle()
    assert engine.blocks["l"].status == FAILED
    error = engine.blocks["l"].error
    assert error is not None and error.type == "Boom"
    assert error.message == "iteration 1 failed: l[1].draft broke"
    assert isinstance(engine.result, FailRun)


def test_a_map_inside_a_loop_runs_its_items_in_every_iteration() -> None:
    compiled = compile_(
        loop_block(
            "l",
            maxIterations=4,
            condition="size(iteration.output) < 3",
            blocks=[
                {
                    "id": "m",
                    "mapBlock": {
                        "items": "iteration.index == 0 ? [0] : iteration.previous + [1]",
                        "blocks": [external("w", input={"i": "${item}"})],
                    },
                }
            ],
        )
    )
    engine = Engine(compiled)
    engine.settle()
    for expected in (["l[0].m[0].w"], ["l[1].m[0].w", "l[1].m[1].w"]):
        running = sorted(b for b in engine.running() if b.endswith(".w"))
        assert running == expected
        for block_id in running:
            engine.complete(block_id, len(block_id))
        engine.settle()
        assert engine.blocks["l"].status == RUNNING
    running = sorted(b for b in engine.running() if b.endswith(".w"))
    assert running == ["l[2].m[0].w", "l[2].m[1].w", "l[2].m[2].w"]
    for block_id in running:
        engine.complete(block_id, 0)
    engine.settle()
    output = engine.blocks["l"].output
    assert output == {"iterations": [[11], [11, 11], [0, 0, 0]], "last": [0, 0, 0]}
    assert compiled.block("l[2].m[1].w").id == "w"
