"""compensate (saga) and the flow's on_failure block: who runs when a run is about to fail,
in what order, and what registration refuses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from tests.unit.interpreter.support import (
    FAILED,
    SUCCEEDED,
    Engine,
    blueprint,
    compile_,
    external,
    scheduled,
)
from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language.validate import validate_blueprint
from tideflow_server.history.interpreter import (
    BlockError,
    Compensation,
    CompleteRun,
    FailRun,
)


def _saga() -> list[dict[str, Any]]:
    """a -> b -> c; a and b each name the block that undoes them."""
    return [
        external("a", compensate="undo_a"),
        external("b", "a", compensate="undo_b"),
        external("c", "b"),
        external("undo_a", "a", input="${blocks.a.output}"),
        external("undo_b"),
    ]


def _run_to_c_failing(engine: Engine) -> None:
    for block_id in ("a", "b"):
        assert scheduled(engine.step()) == [block_id]
        engine.complete(block_id, f"{block_id} done")
    assert scheduled(engine.step()) == ["c"]
    engine.fail("c")


def test_a_failing_run_compensates_in_reverse_completion_order_then_fails() -> None:
    engine = Engine(compile_(*_saga()))
    _run_to_c_failing(engine)
    [undo_b] = engine.step()
    assert scheduled([undo_b]) == ["undo_b"]
    assert engine.step() == []  # one at a time: waits for undo_b
    engine.complete("undo_b")
    [undo_a] = engine.step()
    assert scheduled([undo_a]) == ["undo_a"] and undo_a.input == "a done"  # type: ignore[union-attr]
    engine.fail("undo_a")  # a compensation that fails is recorded; the rest still run
    [result] = engine.step()
    assert isinstance(result, FailRun) and result.block_id == "c"
    assert result.compensated == (
        Compensation("b", "undo_b", SUCCEEDED),
        Compensation("a", "undo_a", FAILED),
    )


def test_the_completion_order_decides_not_the_declaration_order() -> None:
    engine = Engine(
        compile_(
            external("a", compensate="undo_a"),
            external("b", compensate="undo_b"),
            external("c", "a", "b"),
            external("undo_a"),
            external("undo_b"),
        )
    )
    assert scheduled(engine.step()) == ["a", "b"]
    engine.complete("b")
    engine.complete("a")
    engine.step()
    engine.fail("c")
    assert scheduled(engine.step()) == ["undo_a"]


def test_a_run_that_completes_compensates_nothing() -> None:
    engine = Engine(compile_(*_saga()))
    for block_id in ("a", "b", "c"):
        engine.step()
        engine.complete(block_id)
    assert engine.step() == [CompleteRun(None)]


def test_on_failure_runs_first_and_may_read_the_failed_block() -> None:
    compiled = compile_(
        *_saga(),
        {"id": "report", "transform": {"output": "${blocks.c.error.message}"}},
        onFailure="report",
    )
    engine = Engine(compiled)
    _run_to_c_failing(engine)
    engine.step()
    assert engine.blocks["report"].output == "c broke"
    assert scheduled(engine.step()) == ["undo_b"]


def test_a_succeed_on_failure_block_completes_the_run_without_compensating() -> None:
    engine = Engine(
        compile_(
            *_saga(),
            {"id": "fallback", "succeed": {"output": "degraded"}},
            onFailure="fallback",
        )
    )
    _run_to_c_failing(engine)
    engine.settle()
    assert engine.result == CompleteRun("degraded")
    assert "undo_b" not in engine.blocks


def test_a_catch_that_compensates_stops_new_blocks_and_unwinds() -> None:
    engine = Engine(
        compile_(
            external("a", compensate="undo_a"),
            external("x", catch=[{"compensate": True}]),
            external("slow"),
            external("after_slow", "slow"),
            external("undo_a"),
        )
    )
    assert scheduled(engine.step()) == ["a", "x", "slow"]
    engine.complete("a")
    engine.fail("x", BlockError("Fraud", "stop"))
    engine.step()  # the catch is judged
    assert engine.blocks["x"].caught == 0
    engine.complete("slow")
    assert scheduled(engine.step()) == ["undo_a"]  # after_slow never starts
    engine.complete("undo_a")
    [result] = engine.step()
    assert isinstance(result, FailRun) and result.block_id == "x"
    assert "after_slow" not in engine.blocks


def test_registration_reports_every_problem_with_its_path() -> None:
    bp = blueprint(
        external("a", compensate="ghost"),
        external("b", compensate="b"),
        external("c", compensate="undo"),
        external("d", compensate="undo"),
        external("undo", when="true", compensate="spare"),
        external("spare"),
        external("needs_undo", "undo"),
        {
            "id": "s",
            "switchBlock": {"cases": [{"when": "true", "goto": "report"}]},
        },
        external("report", "s"),
        onFailure="report",
    )
    found: dict[str, list[str]] = {}
    for violation in validate_blueprint(bp):
        found.setdefault(violation.field, []).append(violation.description)
    assert found == {
        "blocks[0].compensate": ["no block 'ghost'"],
        "blocks[1].compensate": ["a block cannot compensate itself"],
        "blocks[3].compensate": ["'undo' is already the compensation of c"],
        "blocks[4].compensate": ["'undo' is the compensation of c: it compensates nothing"],
        "blocks[4].when": [
            "'undo' is the compensation of c: the run's unwinding starts it, with no when"
        ],
        "blocks[6].needs[0]": [
            "'undo' is the compensation of c, which runs only when the run fails: no block may "
            "wait for it"
        ],
        "blocks[7].switch_block.cases[0].goto": [
            "'report' is the on_failure block: a route cannot go to it"
        ],
    }
    assert validate_blueprint(blueprint(external("a"), onFailure="nobody"))[0].field == (
        "on_failure"
    )


def test_the_docs_examples_of_switch_catch_and_compensate_register() -> None:
    text = (Path(__file__).parents[3] / "docs" / "blueprints.md").read_text()
    examples = [
        yaml.safe_load(example)
        for example in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
        if re.search(r"switch_block:|catch:|on_failure:", example)
    ]
    assert len(examples) == 3
    for example in examples:
        fields = example if isinstance(example, dict) else {"blocks": example}
        bp = json_format.ParseDict(
            {"name": "docs", "version": 1, "task_queue": "cpu", **fields},
            blueprint_pb2.Blueprint(),
        )
        bp.timeouts.start_to_close.FromSeconds(60)
        found = validate_blueprint(bp)
        # The fragments name blocks defined around them in a real blueprint.
        assert all("no block" in v.description for v in found), found
