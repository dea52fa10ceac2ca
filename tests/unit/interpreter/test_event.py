"""`event` blocks: check, start and on_event (events, timeout), through decide and deliver."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.unit.interpreter.support import (
    FAILED,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    Engine,
    blueprint,
    compile_,
    external,
    scheduled,
)
from tideflow.api.v1 import blueprint_pb2
from tideflow_server.history.interpreter import (
    AwaitEvent,
    CancelTimer,
    CompleteBlock,
    CompleteRun,
    EventReceived,
    FailBlock,
    FailRun,
    StartTimer,
    validate_blueprint,
)

EVENT = blueprint_pb2.BLOCK_KIND_EVENT
WHEN = "2026-01-02T03:04:05Z"


def event(block_id: str, *needs: str, **fields: Any) -> dict[str, Any]:
    spec = {"eventType": "paid", "correlation": "input.order", **fields}
    return {"id": block_id, "needs": list(needs), "event": spec}


def published(key: str = "o-1", payload: Any = None, *, id_: str = "e-1") -> EventReceived:
    return EventReceived(0, id_, "paid", key, payload, WHEN)


def output(key: str = "o-1", payload: Any = None, *, id_: str = "e-1") -> dict[str, Any]:
    return {
        "event_id": id_,
        "event_type": "paid",
        "correlation_key": key,
        "payload": payload,
        "publish_time": WHEN,
    }


def problems(*blocks: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for v in validate_blueprint(blueprint(*blocks)):
        found.setdefault(v.field, []).append(v.description)
    return found


def test_the_block_waits_for_its_key_and_the_event_is_its_output() -> None:
    engine = Engine(
        compile_(event("e", timeout="3600s"), external("after", "e")), input={"order": "o-1"}
    )
    assert engine.step() == [
        AwaitEvent("e", "paid", "o-1"),
        StartTimer("e", "e:timeout", after=timedelta(hours=1)),
    ]
    assert engine.blocks["e"].status == RUNNING
    assert engine.publish(published("o-2")) == []  # another key: not offered
    applied = engine.publish(published("o-1", {"amount": 5}))
    assert applied[:2] == [
        CancelTimer("e", "e:timeout"),
        CompleteBlock("e", EVENT, output=output("o-1", {"amount": 5}), cause_event_id=1),
    ]
    assert scheduled(applied) == ["after"]
    assert engine.timers == {}


def test_an_integer_key_is_its_decimal_text_and_no_correlation_is_the_empty_key() -> None:
    engine = Engine(compile_(event("e"), event("any", correlation="")), input={"order": 42})
    assert engine.step() == [AwaitEvent("e", "paid", "42"), AwaitEvent("any", "paid", "")]


def test_a_key_that_is_not_text_fails_the_block() -> None:
    engine = Engine(compile_(event("e")), input={"order": {"id": 1}})
    engine.step()
    error = engine.blocks["e"].error
    assert engine.blocks["e"].status == FAILED and error is not None
    assert error.type == "ExpressionError"
    assert "wants a correlation key" in error.message


def test_accept_leaves_an_event_it_refuses() -> None:
    engine = Engine(
        compile_(event("e", accept="event.payload.amount >= 10")), input={"order": "o-1"}
    )
    engine.step()
    assert engine.publish(published(payload={"amount": 5})) == []
    assert engine.blocks["e"].status == RUNNING
    engine.publish(published(payload={"amount": 50}, id_="e-2"))
    assert engine.blocks["e"].status == SUCCEEDED
    assert engine.blocks["e"].output == output(payload={"amount": 50}, id_="e-2")


def test_an_event_of_another_type_is_ignored() -> None:
    engine = Engine(compile_(event("e")), input={"order": "o-1"})
    engine.step()
    other = EventReceived(7, "x", "shipped", "o-1", None, WHEN)
    assert engine.deliver("e", other) == []
    assert engine.blocks["e"].status == RUNNING


def test_a_timeout_routes_to_on_timeout_and_the_failure_is_handled() -> None:
    engine = Engine(
        compile_(
            event("e", timeout="60s", onTimeout="late"),
            external("paid", "e"),
            external("late", "e"),
        ),
        input={"order": "o-1"},
    )
    engine.step()
    applied = engine.fire("e:timeout")
    fail = applied[0]
    assert isinstance(fail, FailBlock)
    assert fail.route == "late"
    assert fail.error.type == "TimeoutError"
    assert fail.error.message == "event paid not received within 60s"
    assert scheduled(applied) == ["late"]
    assert engine.blocks["paid"].status == SKIPPED
    assert engine.publish(published()) == []  # it no longer waits
    engine.complete("late")
    assert engine.settle() == [CompleteRun(None)]


def test_a_timeout_without_on_timeout_fails_the_run() -> None:
    engine = Engine(compile_(event("e", timeout="60s")), input={"order": "o-1"})
    engine.step()
    engine.fire("e:timeout")
    assert isinstance(engine.result, FailRun)
    assert engine.result.error.type == "TimeoutError"


def test_registration_reports_malformed_event_blocks_with_paths() -> None:
    found = problems(
        {"id": "typeless", "event": {}},
        event("bad", correlation="input.x +", accept="event.x +", timeout="0s", onTimeout="ghost"),
        event("no_timeout", onTimeout="x"),
        {"id": "x", "needs": ["no_timeout"], "transform": {}},
        event("long", eventType="t" * 256, accept="event.payload + 1"),
    )
    assert found["blocks[0].event.event_type"] == ["the event type is required"]
    assert found["blocks[1].event.correlation"][0].startswith("invalid CEL")
    assert found["blocks[1].event.accept"][0].startswith("invalid CEL")
    assert found["blocks[1].event.timeout"] == ["must be more than 0s"]
    assert found["blocks[1].event.on_timeout"] == ["no block 'ghost'"]
    assert found["blocks[2].event.on_timeout"] == ["needs a timeout"]
    assert found["blocks[4].event.event_type"] == ["is longer than 255 characters"]
    assert "bool" in found["blocks[4].event.accept"][0]
    assert len(found) == 8
