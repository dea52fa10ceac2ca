"""`wait` blocks: check, start and on_event, through decide and deliver."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.unit.interpreter.support import (
    RUNNING,
    SUCCEEDED,
    Engine,
    blueprint,
    compile_,
    external,
    scheduled,
)
from tideflow.api.v1 import blueprint_pb2
from tideflow_server.history.interpreter import (
    CompleteBlock,
    CompleteRun,
    FailBlock,
    StartTimer,
    TimerFired,
    validate_blueprint,
)


def wait(block_id: str, *needs: str, **target: Any) -> dict[str, Any]:
    return {"id": block_id, "needs": list(needs), "wait": target}


def problems(*blocks: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for v in validate_blueprint(blueprint(*blocks)):
        found.setdefault(v.field, []).append(v.description)
    return found


def test_a_duration_arms_a_timer_and_the_block_completes_when_it_fires() -> None:
    engine = Engine(compile_(external("a"), wait("w", "a", duration="90s"), external("b", "w")))
    engine.step()
    engine.complete("a")
    assert engine.step() == [StartTimer("w", "w:wait", after=timedelta(seconds=90))]
    assert engine.blocks["w"].status == RUNNING
    assert engine.step() == []  # waiting: nothing more to do
    applied = engine.fire("w:wait")
    assert applied[0] == CompleteBlock("w", blueprint_pb2.BLOCK_KIND_WAIT, cause_event_id=1)
    assert scheduled(applied) == ["b"]
    assert engine.blocks["w"].status == SUCCEEDED


def test_until_waits_for_a_fixed_time() -> None:
    engine = Engine(compile_(wait("w", until="2030-01-02T03:04:05Z")))
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert engine.step() == [StartTimer("w", "w:wait", at=at)]
    engine.fire("w:wait")
    assert engine.result == CompleteRun(None)


def test_until_expr_takes_the_time_from_the_data() -> None:
    compiled = compile_(wait("w", untilExpr="timestamp(input.due)"))
    engine = Engine(compiled, input={"due": "2031-05-06T07:08:09+02:00"})
    [command] = engine.step()
    assert isinstance(command, StartTimer)
    assert command.at == datetime(2031, 5, 6, 5, 8, 9, tzinfo=UTC)


def test_until_expr_that_is_no_time_fails_the_block() -> None:
    engine = Engine(compile_(wait("w", untilExpr="input.due")), input={"due": 7})
    [command] = engine.step()
    assert isinstance(command, FailBlock)
    assert command.error.type == "ExpressionError"
    assert "wants a timestamp" in command.error.message


def test_another_timer_id_is_ignored() -> None:
    engine = Engine(compile_(wait("w", duration="1s")))
    engine.step()
    assert engine.deliver("w", TimerFired("other")) == []
    assert engine.blocks["w"].status == RUNNING


def test_registration_reports_malformed_waits_with_paths() -> None:
    found = problems(
        wait("none"),
        wait("negative", duration="-1s"),
        wait("long", duration=f"{400 * 10 * 86400}s"),
        wait("bad_cel", untilExpr="input.due +"),
        wait("unknown", untilExpr="blocks.nobody.output"),
        wait("early", until="0001-01-01T00:00:00Z"),
    )
    assert found["blocks[0].wait"] == ["set duration, until or until_expr"]
    assert found["blocks[1].wait.duration"] == ["must not be negative, got -1s"]
    assert "over the limit" in found["blocks[2].wait.duration"][0]
    assert found["blocks[3].wait.until_expr"][0].startswith("invalid CEL")
    assert "names no block" in found["blocks[4].wait.until_expr"][0]
    assert found["blocks[5].wait.until"] == ["is not a time between 1970 and 9999"]
    assert len(found) == 6
