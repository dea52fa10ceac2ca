"""map: registration checks, and decisions over its items' scopes through the Engine."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.interpreter.support import (
    FAILED,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    Engine,
    blueprint,
    compile_,
    external,
)
from tideflow.api.v1 import blueprint_pb2
from tideflow_server.history.interpreter import (
    CompiledBlueprint,
    CompleteRun,
    FailRun,
    Limits,
    ScheduleExternal,
    StartMap,
    compile_blueprint,
    validate_blueprint,
)


def map_block(block_id: str, *needs: str, **fields: Any) -> dict[str, Any]:
    spec = {"items": "input.items", "blocks": [external("work", input={"item": "${item}"})]}
    return {"id": block_id, "needs": list(needs), "mapBlock": {**spec, **fields}}


def problems(bp: blueprint_pb2.Blueprint, **options: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for v in validate_blueprint(bp, **options):
        found.setdefault(v.field, []).append(v.description)
    return found


def items(engine: Engine, block_id: str = "m") -> list[str]:
    """The running blocks inside the map's items."""
    return sorted(b for b in engine.running() if b.startswith(f"{block_id}["))


# -- registration ------------------------------------------------------------------------


def test_inner_blocks_are_checked_like_top_level_ones_with_their_paths() -> None:
    bp = blueprint(
        external("before"),
        map_block(
            "m",
            "before",
            items="",
            toleratedFailurePercentage=150,
            blocks=[
                external("a", "ghost", input={"x": "${item.x}", "n": "${nope}"}),
                external("a"),
                {"id": "b", "needs": ["c"], "transform": {"output": "${blocks.c.output}"}},
                {"id": "c", "needs": ["b"], "transform": {"output": "${blocks.after.output}"}},
            ],
        ),
        external("after", "m"),
    )
    found = problems(bp)
    at = "blocks[1].map_block"
    assert found[f"{at}.items"] == ["the items to map over are required (CEL giving a list)"]
    assert found[f"{at}.tolerated_failure_percentage"] == ["a percentage is at most 100, got 150"]
    assert found[f"{at}.blocks[0].needs[0]"] == ["no block 'ghost'"]
    assert "unknown variable 'nope'" in found[f"{at}.blocks[0].input.n"][0]
    assert found[f"{at}.blocks[1].id"] == [f"duplicate block id 'a' (first at {at}.blocks[0])"]
    assert found[f"{at}.blocks[3].needs[0]"] == ["dependency cycle: b -> c -> b"]
    assert (
        "blocks.after is outside this container and not an ancestor of it"
        in (found[f"{at}.blocks[3].transform.output"][0])
    )


def test_inner_expressions_read_item_index_their_scope_and_the_maps_ancestors() -> None:
    bp = blueprint(
        external("before"),
        map_block(
            "m",
            "before",
            blocks=[
                external("a", input={"i": "${index}", "x": "${item}", "b": "${blocks.before}"}),
                {"id": "t", "needs": ["a"], "transform": {"output": "${blocks.a.output}"}},
            ],
            output={"i": "${index}", "t": "${blocks.t.output}"},
        ),
    )
    assert validate_blueprint(bp) == []


def test_an_item_without_an_output_needs_one_sink_block() -> None:
    bp = blueprint(map_block("m", blocks=[external("a"), external("b")]))
    assert problems(bp) == {
        "blocks[0].map_block.output": [
            "the blocks at blocks[0].map_block.blocks end in 2 blocks (a, b), so set the "
            "output of one item or iteration"
        ]
    }


def test_containers_nest_only_so_deep() -> None:
    inner: dict[str, Any] = external("leaf")
    for depth in range(3):
        inner = {"id": f"m{depth}", "mapBlock": {"items": "[1]", "blocks": [inner]}}
    bp = blueprint(inner)
    assert validate_blueprint(bp) == []
    found = problems(bp, limits=Limits(max_nesting_depth=2))
    assert found == {
        "blocks[0].map_block.blocks[0].map_block.blocks[0].map_block.blocks": [
            "containers (map, loop) nest at most 2 deep (the server's blueprint.max_nesting_depth)"
        ]
    }


def test_a_containers_blocks_are_bounded_as_the_blueprints() -> None:
    bp = blueprint(map_block("m", blocks=[external(f"b{i}") for i in range(3)], output=1))
    assert problems(bp, max_blocks=2) == {"blocks[0].map_block.blocks": ["at most 2 blocks, got 3"]}


# -- decisions ---------------------------------------------------------------------------


def test_items_run_at_most_max_concurrency_at_once_and_output_keeps_item_order() -> None:
    compiled = compile_(map_block("m", maxConcurrency=2), external("after", "m"))
    engine = Engine(compiled, input={"items": ["a", "b", "c", "d", "e"]})
    engine.settle()
    assert items(engine) == ["m[0].work", "m[1].work"]
    started = [c for c in engine.log if isinstance(c, ScheduleExternal)]
    assert [c.input for c in started] == [{"item": "a"}, {"item": "b"}]
    engine.complete("m[1].work", "B")
    engine.settle()
    assert items(engine) == ["m[0].work", "m[2].work"]  # a slot freed: the next item
    for block_id, output in [("m[2].work", "C"), ("m[0].work", "A")]:
        engine.complete(block_id, output)
    engine.settle()
    assert items(engine) == ["m[3].work", "m[4].work"]
    engine.complete("m[4].work", "E")
    engine.complete("m[3].work", "D")
    engine.settle()
    assert engine.blocks["m"].status == SUCCEEDED
    assert engine.blocks["m"].output == ["A", "B", "C", "D", "E"]
    assert engine.running() == ["after"]


def test_an_empty_list_completes_at_once_and_a_non_list_fails_the_block() -> None:
    compiled = compile_(map_block("m"))
    engine = Engine(compiled, input={"items": []})
    engine.settle()
    assert engine.blocks["m"].output == []
    assert engine.result == CompleteRun(None)
    engine = Engine(compiled, input={"items": {"not": "a list"}})
    engine.settle()
    error = engine.blocks["m"].error
    assert error is not None and error.type == "ExpressionError"
    assert "a map's items must be a list, got a map" in error.message
    assert isinstance(engine.result, FailRun)


def test_more_items_than_the_inline_bound_fail_the_block_naming_the_setting() -> None:
    bp = blueprint(map_block("m"))
    compiled = compile_blueprint(bp, limits=Limits(max_inline_map_items=3))
    engine = Engine(compiled, input={"items": [1, 2, 3, 4]})
    engine.settle()
    error = engine.blocks["m"].error
    assert error is not None and error.type == "MapItemsLimitExceeded"
    assert "4 items, more than the 3" in error.message
    assert "blueprint.max_inline_map_items" in error.message
    assert not [c for c in engine.log if isinstance(c, StartMap | ScheduleExternal)]


def test_tolerated_failures_give_null_outputs_and_one_more_fails_the_map() -> None:
    compiled = compile_(map_block("m", maxConcurrency=1, toleratedFailures=1))
    engine = Engine(compiled, input={"items": [1, 2, 3, 4]})
    engine.settle()
    engine.fail("m[0].work")
    engine.settle()
    engine.complete("m[1].work", "two")
    engine.settle()
    assert engine.blocks["m"].status == RUNNING
    engine.fail("m[2].work")
    engine.settle()
    assert engine.blocks["m"].status == FAILED
    error = engine.blocks["m"].error
    assert error is not None and error.type == "Boom"
    assert error.message == "item 0 failed: m[0].work broke (2 items failed, 1 tolerated)"
    assert "m[3].work" not in engine.blocks  # no further item starts
    assert isinstance(engine.result, FailRun) and engine.result.block_id == "m"

    percentage = compile_(map_block("m", toleratedFailurePercentage=50))
    engine = Engine(percentage, input={"items": [1, 2, 3, 4]})
    engine.settle()
    engine.fail("m[0].work")
    engine.fail("m[2].work")
    engine.complete("m[1].work", "b")
    engine.complete("m[3].work", "d")
    engine.settle()
    assert engine.blocks["m"].output == [None, "b", None, "d"]


def test_an_items_blocks_run_as_a_dag_with_when_and_its_output_template() -> None:
    compiled = compile_(
        map_block(
            "m",
            blocks=[
                {"id": "check", "transform": {"output": "${item % 2 == 0}"}},
                external("even", "check", when="blocks.check.output"),
                {"id": "tag", "needs": ["even"], "transform": {"output": "${index}"}},
            ],
            output={"n": "${item}", "even": "${blocks.even.status}", "tag": "${blocks.tag.output}"},
        )
    )
    engine = Engine(compiled, input={"items": [1, 2]})
    engine.settle()
    assert items(engine) == ["m[1].even"]
    assert engine.blocks["m[0].even"].status == SKIPPED  # item 1 is odd
    assert engine.blocks["m[0].tag"].status == SUCCEEDED  # a `when` skip satisfies needs
    engine.complete("m[1].even", "ok")
    engine.settle()
    assert engine.blocks["m"].output == [
        {"n": 1, "even": "SKIPPED", "tag": 0},
        {"n": 2, "even": "SUCCEEDED", "tag": 1},
    ]


def test_a_map_inside_a_map_addresses_its_blocks_by_nested_paths() -> None:
    compiled = compile_(
        {
            "id": "rows",
            "mapBlock": {
                "items": "input.rows",
                "blocks": [
                    {
                        "id": "cells",
                        "mapBlock": {
                            "items": "item",
                            "blocks": [external("cell", input={"v": "${item}", "i": "${index}"})],
                        },
                    }
                ],
            },
        }
    )
    engine = Engine(compiled, input={"rows": [[1, 2], [3]]})
    engine.settle()
    assert items(engine, "rows") == [
        "rows[0].cells",
        "rows[0].cells[0].cell",
        "rows[0].cells[1].cell",
        "rows[1].cells",
        "rows[1].cells[0].cell",
    ]
    for block_id in items(engine, "rows"):
        if block_id.endswith(".cell"):
            engine.complete(block_id, block_id)
    engine.settle()
    assert engine.blocks["rows"].output == [
        ["rows[0].cells[0].cell", "rows[0].cells[1].cell"],
        ["rows[1].cells[0].cell"],
    ]
    assert compiled.block("rows[1].cells[0].cell").id == "cell"


@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(min_value=0, max_value=12),
    concurrency=st.integers(min_value=0, max_value=4),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_outputs_keep_item_order_whatever_order_items_complete_in(
    count: int, concurrency: int, seed: int
) -> None:
    compiled: CompiledBlueprint = compile_(map_block("m", maxConcurrency=concurrency))
    engine = Engine(compiled, input={"items": list(range(count))})
    chooser = random.Random(seed)
    engine.settle()
    while engine.result is None:
        running = items(engine)
        assert 0 < len(running) <= (concurrency or 100)
        block_id = chooser.choice(running)
        engine.complete(block_id, f"done {block_id}")
        engine.settle()
    assert engine.blocks["m"].output == [f"done m[{i}].work" for i in range(count)]
    assert engine.result == CompleteRun(None)


def test_an_item_output_that_does_not_render_fails_the_map_when_it_completes() -> None:
    compiled = compile_(map_block("m", output="${item.name}"))
    engine = Engine(compiled, input={"items": [{"name": "a"}, 2]})
    engine.settle()
    engine.complete("m[0].work")
    engine.settle()
    assert engine.blocks["m"].status == RUNNING  # outputs are rendered once, at the end
    engine.complete("m[1].work")
    engine.settle()
    error = engine.blocks["m"].error
    assert error is not None and error.type == "ExpressionError"
    assert "blocks[0].map_block.output" in error.message
