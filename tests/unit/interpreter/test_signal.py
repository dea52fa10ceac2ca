"""`signal` blocks: check, start and on_event (signals, timeout, escalations), through decide
and deliver."""

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
    AwaitSignal,
    CancelTimer,
    CompleteBlock,
    CompleteRun,
    ConsumeSignal,
    Escalate,
    FailBlock,
    FailRun,
    SkipBlock,
    StartTimer,
    validate_blueprint,
)

SIGNAL = blueprint_pb2.BLOCK_KIND_SIGNAL


def signal(block_id: str, *needs: str, **fields: Any) -> dict[str, Any]:
    return {"id": block_id, "needs": list(needs), "signal": {"signalName": "approve", **fields}}


def problems(*blocks: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for v in validate_blueprint(blueprint(*blocks)):
        found.setdefault(v.field, []).append(v.description)
    return found


def test_a_waiting_block_takes_the_signal_and_its_payload_is_the_output() -> None:
    engine = Engine(compile_(signal("s", timeout="3600s"), external("after", "s")))
    assert engine.step() == [
        AwaitSignal("s", "approve"),
        StartTimer("s", "s:timeout", after=timedelta(hours=1)),
    ]
    assert engine.blocks["s"].status == RUNNING
    assert engine.signal("other", {"ok": True}) == []  # another name: kept, not taken
    applied = engine.signal("approve", {"by": "ann"})
    assert applied[:3] == [
        ConsumeSignal("s", 2),
        CancelTimer("s", "s:timeout"),
        CompleteBlock("s", SIGNAL, output={"by": "ann"}, cause_event_id=2),
    ]
    assert scheduled(applied) == ["after"]
    assert [s.name for s in engine.signals] == ["other"]
    assert engine.timers == {}


def test_a_signal_that_arrived_before_the_block_started_is_taken_oldest_first() -> None:
    engine = Engine(compile_(external("a"), signal("s", "a")))
    engine.step()
    engine.signal("approve", 1)
    engine.signal("approve", 2)
    engine.complete("a")
    assert engine.step()[:2] == [
        ConsumeSignal("s", 1),
        CompleteBlock("s", SIGNAL, output=1, cause_event_id=1),
    ]
    assert [s.input for s in engine.signals] == [2]


def test_two_blocks_starting_together_take_different_signals() -> None:
    engine = Engine(compile_(external("a"), signal("s1", "a"), signal("s2", "a")))
    engine.step()
    engine.signal("approve", "first")
    engine.signal("approve", "second")
    engine.complete("a")
    engine.settle()
    assert engine.blocks["s1"].output == "first"
    assert engine.blocks["s2"].output == "second"
    assert engine.signals == []


def test_accept_leaves_a_signal_it_refuses_for_later() -> None:
    engine = Engine(compile_(signal("s", accept="signal.amount <= 100")))
    engine.signal("approve", {"amount": 500})  # before the block: not taken at start
    assert engine.step() == [AwaitSignal("s", "approve")]
    assert engine.signal("approve", {"amount": 900}) == []
    assert engine.blocks["s"].status == RUNNING
    engine.signal("approve", {"amount": 50})
    assert engine.blocks["s"].output == {"amount": 50}
    assert [s.input for s in engine.signals] == [{"amount": 500}, {"amount": 900}]


def test_an_accept_that_fails_fails_the_block() -> None:
    engine = Engine(compile_(signal("s", accept="signal.amount <= 100")))
    engine.step()
    engine.signal("approve", "not a map")
    assert engine.blocks["s"].status == FAILED
    assert engine.blocks["s"].error is not None
    assert engine.blocks["s"].error.type == "ExpressionError"


def test_a_timeout_routes_to_on_timeout_and_the_failure_is_handled() -> None:
    engine = Engine(
        compile_(
            signal("s", timeout="60s", onTimeout="late"),
            external("approved", "s"),
            external("late", "s"),
        )
    )
    engine.step()
    applied = engine.fire("s:timeout")
    fail = applied[0]
    assert isinstance(fail, FailBlock)
    assert fail.route == "late"
    assert fail.error.type == "TimeoutError"
    assert fail.error.message == "signal approve not received within 60s"
    assert scheduled(applied) == ["late"]
    assert engine.blocks["approved"].status == SKIPPED
    engine.complete("late")
    assert engine.settle() == [CompleteRun(None)]


def test_a_timeout_without_on_timeout_fails_the_run() -> None:
    engine = Engine(compile_(signal("s", timeout="60s"), external("after", "s")))
    engine.step()
    engine.fire("s:timeout")
    assert isinstance(engine.result, FailRun)
    assert engine.result.block_id == "s"
    assert engine.result.error.type == "TimeoutError"


def test_escalations_start_their_targets_while_the_block_keeps_waiting() -> None:
    engine = Engine(
        compile_(
            external("draft"),
            signal(
                "s",
                "draft",
                timeout="300s",
                escalations=[{"after": "60s", "goto": "remind"}, {"after": "120s", "goto": "boss"}],
            ),
            external("remind", "draft"),
            external("boss"),
            external("after", "s"),
        )
    )
    assert scheduled(engine.step()) == ["draft"]  # boss waits for its escalation
    assert "boss" not in engine.blocks
    engine.complete("draft")
    assert engine.step() == [
        AwaitSignal("s", "approve"),
        StartTimer("s", "s:timeout", after=timedelta(seconds=300)),
        StartTimer("s", "s:escalation:0", after=timedelta(seconds=60)),
    ]
    applied = engine.fire("s:escalation:0")
    assert applied[:2] == [
        Escalate("s", "remind"),
        StartTimer("s", "s:escalation:1", after=timedelta(seconds=60)),
    ]
    assert scheduled(applied) == ["remind"]
    assert engine.blocks["s"].status == RUNNING
    engine.complete("remind")
    applied = engine.signal("approve", "yes")
    assert applied[:3] == [
        ConsumeSignal("s", 2),
        CancelTimer("s", "s:timeout"),
        CancelTimer("s", "s:escalation:1"),
    ]
    assert engine.blocks["s"].status == SUCCEEDED
    assert engine.blocks["boss"].status == SKIPPED
    assert scheduled(applied) == ["after"]
    assert engine.timers == {}


def test_the_skip_of_an_escalation_not_due_is_explained() -> None:
    compiled = compile_(
        signal("s", escalations=[{"after": "60s", "goto": "boss"}]), external("boss")
    )
    engine = Engine(compiled)
    engine.step()
    applied = engine.signal("approve")
    assert SkipBlock("boss", "not escalated to: s ended before its escalation") in applied


def test_registration_reports_malformed_signals_with_paths() -> None:
    found = problems(
        {"id": "nameless", "signal": {}},
        signal("bad", accept="signal.x +", timeout="0s", onTimeout="ghost"),
        signal("no_timeout", onTimeout="x"),
        {"id": "x", "needs": ["no_timeout"], "transform": {}},
        signal(
            "esc",
            timeout="100s",
            escalations=[
                {"after": "50s", "goto": "after_esc"},
                {"after": "40s", "goto": "nobody"},
                {"after": "200s", "goto": ""},
                {"after": "-1s", "goto": "esc"},
            ],
        ),
        {"id": "after_esc", "needs": ["esc"], "transform": {}},
        signal("filter_type", accept="signal.amount + 1"),
    )
    assert found["blocks[0].signal.signal_name"] == ["the signal name is required"]
    assert found["blocks[1].signal.accept"][0].startswith("invalid CEL")
    assert found["blocks[1].signal.timeout"] == ["must be more than 0s"]
    assert found["blocks[1].signal.on_timeout"] == ["no block 'ghost'"]
    assert found["blocks[2].signal.on_timeout"] == ["needs a timeout"]
    assert found["blocks[4].signal.escalations[0].goto"] == [
        "'after_esc' must not need 'esc': it runs while 'esc' waits"
    ]
    assert found["blocks[4].signal.escalations[1].after"] == [
        "must be later than the escalation before it"
    ]
    assert found["blocks[4].signal.escalations[1].goto"] == ["no block 'nobody'"]
    assert found["blocks[4].signal.escalations[2].after"] == ["must be earlier than the timeout"]
    assert found["blocks[4].signal.escalations[2].goto"] == ["the block id to start is required"]
    assert found["blocks[4].signal.escalations[3].after"] == ["must not be negative, got -1s"]
    assert found["blocks[4].signal.escalations[3].goto"] == [
        "'esc' must not need 'esc': it runs while 'esc' waits"
    ]
    assert "bool" in found["blocks[6].signal.accept"][0]
    assert len(found) == 13


def test_on_timeout_is_skipped_when_the_signal_arrives() -> None:
    """The on_timeout target is a route: a signal block that took its signal skips it."""
    engine = Engine(
        compile_(
            {
                "id": "review",
                "signal": {"signalName": "review", "timeout": "60s", "onTimeout": "late"},
            },
            external("late", "review"),
            external("after", "review"),
        )
    )
    engine.settle()
    engine.signal("review", {"ok": True})
    assert engine.blocks["late"].status == SKIPPED
    assert engine.blocks["after"].status == RUNNING
