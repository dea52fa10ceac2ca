"""map with `child_runs`: each item runs as a child run of the map's block list (entered at
the map), through the Engine; the child's side through `CompiledBlueprint.entered`."""

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
from tideflow.api.v1 import common_pb2
from tideflow.blueprint.language.kinds.subflow import ChildClosed, ChildStartFailed
from tideflow_server.history.interpreter import (
    CompiledBlueprint,
    CompleteRun,
    FailRun,
    Limits,
    RecordItem,
    ScheduleExternal,
    StartChild,
    StartMap,
    compile_blueprint,
    validate_blueprint,
)

COMPLETED = common_pb2.RUN_STATUS_COMPLETED


def child_map(block_id: str, *needs: str, **fields: Any) -> dict[str, Any]:
    spec = {
        "items": "input.items",
        "childRuns": True,
        "blocks": [external("work", input={"item": "${item}", "at": "${index}"})],
    }
    return {"id": block_id, "needs": list(needs), "mapBlock": {**spec, **fields}}


def children(engine: Engine) -> list[str]:
    """The items started as child runs and not closed yet, in order."""
    return [run_id for run_id in engine.items if run_id not in closed(engine)]


def closed(engine: Engine) -> set[str]:
    return {f"m[{c.index}]" for c in engine.log if isinstance(c, RecordItem)}


def close(engine: Engine, index: int, output: Any = None, *, status: int = COMPLETED) -> None:
    """The child of item `index` closes, as history delivers it (its run_id has the parent's
    run id first)."""
    engine.deliver("m", ChildClosed(f"order-7/m[{index}]", status, output, "it broke"))  # type: ignore[arg-type]


def test_items_start_as_child_runs_at_most_max_concurrency_and_output_keeps_item_order() -> None:
    compiled = compile_(child_map("m", maxConcurrency=2), external("after", "m"))
    engine = Engine(compiled, input={"items": ["a", "b", "c", "d", "e"]})
    engine.settle()
    assert children(engine) == ["m[0]", "m[1]"]
    assert engine.blocks["m"].status == RUNNING
    # Nothing of the items' blocks runs in this run: each child runs them.
    assert not [c for c in engine.log if isinstance(c, ScheduleExternal)]
    assert not [b for b in engine.blocks if b.startswith("m[")]
    first = engine.items["m[0]"]
    assert first.entry == "m" and first.flow == ""
    assert isinstance(first.input, dict)
    assert first.input["item"] == "a" and first.input["index"] == 0
    # Only what the map's blocks may read: not the run's input, nor outer blocks' outputs.
    assert set(first.input) == {"item", "index", "run", "blocks"}
    assert first.input["blocks"] == {}
    close(engine, 1, "B")
    assert children(engine) == ["m[0]", "m[2]"]  # a slot freed: the next item
    close(engine, 2, "C")
    close(engine, 0, "A")
    assert children(engine) == ["m[3]", "m[4]"]
    close(engine, 4, "E")
    assert engine.blocks["m"].scopes.succeeded == 4
    close(engine, 3, "D")
    assert engine.blocks["m"].status == SUCCEEDED
    assert engine.blocks["m"].output == ["A", "B", "C", "D", "E"]
    assert engine.running() == ["after"]


def test_tolerated_failures_give_null_outputs_and_one_more_fails_the_map() -> None:
    compiled = compile_(child_map("m", maxConcurrency=1, toleratedFailures=1))
    engine = Engine(compiled, input={"items": [1, 2, 3, 4]})
    engine.settle()
    close(engine, 0, status=common_pb2.RUN_STATUS_FAILED)
    close(engine, 1, "two")
    assert engine.blocks["m"].status == RUNNING
    engine.deliver("m", ChildStartFailed("order-7/m[2]", "flow gone"))
    assert engine.blocks["m"].status == FAILED
    error = engine.blocks["m"].error
    assert error is not None and error.type == "ChildRunFailed"
    assert error.message == (
        "item 0 failed: child run 'order-7/m[0]' failed: it broke (2 items failed, 1 tolerated)"
    )
    assert "m[3]" not in engine.items  # no further item starts
    assert isinstance(engine.result, FailRun) and engine.result.block_id == "m"

    percentage = compile_(child_map("m", toleratedFailurePercentage=50))
    engine = Engine(percentage, input={"items": [1, 2, 3, 4]})
    engine.settle()
    close(engine, 0, status=common_pb2.RUN_STATUS_TERMINATED)
    close(engine, 1, "b")
    close(engine, 2, status=common_pb2.RUN_STATUS_TIMED_OUT)
    close(engine, 3, "d")
    assert engine.blocks["m"].output == [None, "b", None, "d"]


def test_the_bounds_name_their_setting_and_how_to_lift_them() -> None:
    limits = Limits(max_inline_map_items=3, max_child_map_items=5)
    inline = compile_blueprint(blueprint(child_map("m", childRuns=False)), limits=limits)
    engine = Engine(inline, input={"items": [1, 2, 3, 4]})
    engine.settle()
    error = engine.blocks["m"].error
    assert error is not None and error.type == "MapItemsLimitExceeded"
    assert "4 items, more than the 3 a map runs in-line" in error.message
    assert "set `child_runs: true` on the map" in error.message

    child = compile_blueprint(blueprint(child_map("m")), limits=limits)
    engine = Engine(child, input={"items": [1, 2, 3, 4]})
    engine.settle()
    assert engine.blocks["m"].status == RUNNING  # past the in-line bound: fine as children
    engine = Engine(child, input={"items": list(range(6))})
    engine.settle()
    error = engine.blocks["m"].error
    assert error is not None and error.type == "MapItemsLimitExceeded"
    assert "6 items, more than the 5 a map runs as child runs" in error.message
    assert "blueprint.max_child_map_items" in error.message
    assert not [c for c in engine.log if isinstance(c, StartMap | StartChild)]


def run_item(compiled: CompiledBlueprint, start: StartChild, worker_output: Any) -> CompleteRun:
    """What the child of `start` does: the map's block list, entered at the map, over the
    scope it was given as input."""
    child = Engine(compiled.entered(start.entry), input=start.input)
    child.settle()
    assert child.running() == ["work"]
    child.complete("work", worker_output)
    child.settle()
    assert isinstance(child.result, CompleteRun)
    return child.result


def test_a_child_reads_its_items_scope_as_the_in_line_mode_does_and_returns_its_output() -> None:
    inner = [
        external(
            "work", input={"item": "${item}", "at": "${index}", "base": "${blocks.pre.output}"}
        ),
        {"id": "shape", "needs": ["work"], "transform": {"output": {"n": "${blocks.work.output}"}}},
    ]
    fields = {"blocks": inner, "output": {"item": "${item}", "got": "${blocks.shape.output.n}"}}
    for child_runs in (True, False):
        compiled = compile_(external("pre"), child_map("m", "pre", childRuns=child_runs, **fields))
        engine = Engine(compiled, input={"items": ["x", "y"]})
        engine.settle()
        engine.complete("pre", "P")
        engine.settle()
        for index, item in enumerate(["x", "y"]):
            if child_runs:
                start = engine.items[f"m[{index}]"]
                child = Engine(compiled.entered("m"), input=start.input)
                scheduled = [c for c in child.settle() if isinstance(c, ScheduleExternal)]
                close(engine, index, run_item(compiled, start, index * 10).output)
            else:
                scheduled = [c for c in engine.log if isinstance(c, ScheduleExternal)]
                scheduled = [c for c in scheduled if c.block_id == f"m[{index}].work"]
                engine.complete(f"m[{index}].work", index * 10)
                engine.settle()
            assert scheduled[0].input == {"item": item, "at": index, "base": "P"}
        if child_runs:
            passed = engine.items["m[0]"].input
            assert isinstance(passed, dict) and set(passed["blocks"]) == {"pre"}  # type: ignore[arg-type]
        assert engine.blocks["m"].output == [{"item": "x", "got": 0}, {"item": "y", "got": 10}]


def test_a_map_with_child_runs_inside_an_entered_run_enters_further() -> None:
    nested = child_map("inner", blocks=[external("leaf", input={"v": "${item}"})], items="item")
    compiled = compile_(child_map("m", blocks=[nested]))
    engine = Engine(compiled, input={"items": [[1, 2]]})
    engine.settle()
    outer = compiled.entered("m")
    assert outer.entry == "m"
    child = Engine(outer, input=engine.items["m[0]"].input)
    child.settle()
    grandchild = child.items["inner[0]"]
    assert grandchild.entry == "inner" and grandchild.input["item"] == 1  # type: ignore[index,call-overload]
    leaf = Engine(outer.entered("inner"), input=grandchild.input)
    assert leaf.compiled.entry == "m/inner"
    leaf.settle()
    assert leaf.running() == ["leaf"]


def test_a_child_gets_the_run_input_and_vars_only_when_the_maps_blocks_name_them() -> None:
    reads_input = [external("work", input={"item": "${item}", "factor": "${input.factor}"})]
    compiled = compile_(child_map("m", blocks=reads_input), vars={"unused": "${input.factor}"})
    engine = Engine(compiled, input={"items": [1], "factor": 3})
    engine.settle()
    passed = engine.items["m[0]"].input
    assert isinstance(passed, dict)
    assert passed["input"] == {"items": [1], "factor": 3}
    assert "vars" not in passed
    child = Engine(compiled.entered("m"), input=passed)
    scheduled = [c for c in child.settle() if isinstance(c, ScheduleExternal)]
    assert scheduled[0].input == {"item": 1, "factor": 3}


def test_registration_refuses_set_blocks_in_a_map_with_child_runs_with_their_paths() -> None:
    assign = {"id": "note", "set": {"vars": {"seen": "${item}"}}}
    loop = {"id": "again", "loop": {"max_iterations": 2, "blocks": [assign]}}
    bp = blueprint(child_map("m", blocks=[assign, loop], output="${item}"))
    found = {v.field: v.description for v in validate_blueprint(bp)}
    assert set(found) == {
        "blocks[0].map_block.blocks[0].set",
        "blocks[0].map_block.blocks[1].loop.blocks[0].set",
    }
    assert "would assign the child run's variables" in found["blocks[0].map_block.blocks[0].set"]
    assert not validate_blueprint(blueprint(child_map("m", blocks=[assign], childRuns=False)))
