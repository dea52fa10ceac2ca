"""Random blueprints of every kind, driven by random interleavings of what reaches a run (a
worker's completion or failure, a timer firing, a signal, a child run closing): every run
ends exactly once, no block is started twice, and replaying the recorded inputs into a fresh
engine decides exactly the same commands (invariant 4)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.interpreter.support import (
    CANCELED,
    FAILED,
    RUNNING,
    TERMINAL,
    Engine,
    blueprint,
)
from tideflow.api.v1 import blueprint_pb2, common_pb2
from tideflow.blueprint.language.events import EventReceived
from tideflow.blueprint.language.kinds.subflow import ChildClosed, ChildStartFailed
from tideflow_server.history.interpreter import (
    JSON,
    AwaitEvent,
    AwaitSignal,
    BlockError,
    CompiledBlueprint,
    CompleteBlock,
    CompleteRun,
    FailBlock,
    FailRun,
    ScheduleExternal,
    SkipBlock,
    StartChild,
    compile_blueprint,
)

KINDS = [
    *["external", "external", "external", "set", "transform", "fail", "succeed", "switch"],
    *["wait", "signal", "signal", "subflow", "map", "loop", "event"],
]
CATCHES = ["none", "none", "continue", "typed", "goto", "compensate"]
CATCHING = {"external", "fail", "signal", "subflow", "event"}
"""The kinds whose block may fail with an application error that a catch matches."""
COMPENSATED = {"external", "set", "transform", "wait", "signal", "subflow"}
SIGNALS = ["approve", "review"]
ACCEPT = "signal.amount <= 5"
"""A signal block's accept filter, when it has one; a payload's amount is 0 to 9."""
CHILD_ENDS = [
    common_pb2.RUN_STATUS_COMPLETED,
    common_pb2.RUN_STATUS_COMPLETED,
    common_pb2.RUN_STATUS_FAILED,
    common_pb2.RUN_STATUS_TIMED_OUT,
]
INPUT: JSON = {"doc": "a.pdf"}


@st.composite
def blueprints(draw: st.DrawFn) -> blueprint_pb2.Blueprint:
    """A DAG `b0..bn` of random kinds, guards and catches; then the blocks only something else
    starts: escalation targets `x<i>_<k>`, compensations `u<i>` and an `on_failure` block."""
    count = draw(st.integers(min_value=1, max_value=8))
    blocks: list[dict[str, Any]] = []
    extra: list[dict[str, Any]] = []
    for i in range(count):
        block_id = f"b{i}"
        earlier = [b["id"] for b in blocks]
        needs = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        block: dict[str, Any] = {"id": block_id, "needs": needs}
        kind = draw(st.sampled_from(KINDS))
        _KIND_FIELDS[kind](block, draw, earlier, extra)
        if kind in CATCHING:
            block["catch"] = _catch(draw(st.sampled_from(CATCHES)))
        if kind in COMPENSATED and draw(st.integers(min_value=0, max_value=3)) == 0:
            block["compensate"] = f"u{i}"
            undo = draw(st.sampled_from(["external", "transform", "wait"]))
            extra.append({"id": f"u{i}", "needs": [block_id], **_dormant(undo, block_id)})
        guard = draw(st.sampled_from(["none", "true", "false", "need"]))
        if guard in ("true", "false"):
            block["when"] = guard
        elif guard == "need" and needs:
            block["when"] = f"blocks.{needs[0]}.succeeded"
        with_depends = draw(st.integers(min_value=0, max_value=3)) == 0
        if earlier and with_depends:
            x, y = draw(st.sampled_from(earlier)), draw(st.sampled_from(earlier))
            block["depends"] = f"{x}.succeeded || {y}.failed || {y}.skipped"
        blocks.append(block)
    for block in blocks:
        _route_to_dependents(block, blocks, draw)
    fields: dict[str, Any] = {}
    on_failure = draw(st.sampled_from(["none", "none", "external", "transform", "succeed"]))
    if on_failure != "none":
        fields["onFailure"] = "report"
        extra.append({"id": "report", **_dormant(on_failure, "")})
    return blueprint(*blocks, *extra, **fields)


Draw = Callable[..., Any]


def _external(block: dict[str, Any], draw: Draw, earlier: list[str], extra: list[Any]) -> None:
    block["external"] = {"block": "work@1"}
    block["input"] = {"from": [f"${{blocks.{n}.output}}" for n in block["needs"]]}


def _set(block: dict[str, Any], draw: Draw, earlier: list[str], extra: list[Any]) -> None:
    i = block["id"][1:]
    block["set"] = {"vars": {f"v{i}": f"${{size(blocks) + {i}}}"}}


def _transform(block: dict[str, Any], draw: Draw, earlier: list[str], extra: list[Any]) -> None:
    block["transform"] = {"output": [f"${{blocks.{n}.status}}" for n in block["needs"]]}


def _fail(block: dict[str, Any], draw: Draw, earlier: list[str], extra: list[Any]) -> None:
    block["fail"] = {"errorType": "Rejected"}


def _succeed(block: dict[str, Any], draw: Draw, earlier: list[str], extra: list[Any]) -> None:
    block["succeed"] = {"output": block["id"]}


def _switch(block: dict[str, Any], draw: Draw, earlier: list[str], extra: list[Any]) -> None:
    block["switchBlock"] = {}  # its cases go to its dependents, known at the end


def _wait(block: dict[str, Any], draw: Draw, earlier: list[str], extra: list[Any]) -> None:
    block["wait"] = {"duration": "5s"}


def _signal(block: dict[str, Any], draw: Draw, earlier: list[str], extra: list[Any]) -> None:
    """A signal block, maybe with accept, a timeout (its on_timeout is set at the end) and
    escalations to blocks of their own, which may need earlier blocks."""
    signal: dict[str, Any] = {"signalName": draw(st.sampled_from(SIGNALS))}
    if draw(st.booleans()):
        signal["accept"] = ACCEPT
    if draw(st.booleans()):
        signal["timeout"] = "60s"
    escalations = []
    for k in range(draw(st.integers(min_value=0, max_value=2))):
        target = f"x{block['id'][1:]}_{k}"
        escalations.append({"after": f"{10 * (k + 1)}s", "goto": target})
        needs = draw(st.lists(st.sampled_from(earlier), max_size=1)) if earlier else []
        extra.append({"id": target, "needs": needs, "external": {"block": "notify@1"}})
    if escalations:
        signal["escalations"] = escalations
    block["signal"] = signal


def _subflow(block: dict[str, Any], draw: Draw, earlier: list[str], extra: list[Any]) -> None:
    block["subflow"] = {"flow": "child@1"}
    block["input"] = {"from": [f"${{blocks.{n}.output}}" for n in block["needs"]]}


def _event(block: dict[str, Any], draw: Draw, earlier: list[str], extra: list[Any]) -> None:
    event: dict[str, Any] = {"eventType": "paid", "correlation": "input.doc"}
    if draw(st.booleans()):
        event["accept"] = "event.payload.amount <= 5"
    block["event"] = event


def _map(block: dict[str, Any], draw: Draw, earlier: list[str], extra: list[Any]) -> None:
    block["mapBlock"] = {
        "items": f"[{', '.join(str(n) for n in range(draw(st.integers(0, 3))))}]",
        "maxConcurrency": draw(st.integers(0, 2)),
        "toleratedFailures": draw(st.integers(0, 1)),
        "blocks": _inner(draw),
    }


def _loop(block: dict[str, Any], draw: Draw, earlier: list[str], extra: list[Any]) -> None:
    block["loop"] = {
        "maxIterations": draw(st.integers(1, 3)),
        "condition": draw(st.sampled_from(["", "iteration.index < 1", "false"])),
        "blocks": _inner(draw),
    }


def _inner(draw: Draw) -> list[dict[str, Any]]:
    """A container's blocks: an external block, perhaps followed by a guarded transform."""
    blocks: list[dict[str, Any]] = [{"id": "x", "external": {"block": "work@1"}}]
    if draw(st.booleans()):
        when = draw(st.sampled_from(["true", "false", "blocks.x.succeeded"]))
        blocks.append(
            {"id": "y", "needs": ["x"], "when": when, "transform": {"output": "${blocks.x}"}}
        )
    return blocks


_KIND_FIELDS: Mapping[str, Callable[[dict[str, Any], Draw, list[str], list[Any]], None]] = {
    "external": _external,
    "set": _set,
    "transform": _transform,
    "fail": _fail,
    "succeed": _succeed,
    "switch": _switch,
    "wait": _wait,
    "signal": _signal,
    "subflow": _subflow,
    "event": _event,
    "map": _map,
    "loop": _loop,
}


def _dormant(kind: str, undoes: str) -> dict[str, Any]:
    """A block only the run's unwinding starts: a compensation of `undoes`, or on_failure."""
    read = f"${{blocks.{undoes}.output}}" if undoes else "${size(blocks)}"
    fields: dict[str, dict[str, Any]] = {
        "external": {"external": {"block": "undo@1"}, "input": {"undo": read}},
        "transform": {"transform": {"output": read}},
        "wait": {"wait": {"duration": "1s"}},
        "succeed": {"succeed": {"output": "recovered"}},
    }
    return fields[kind]


def _catch(choice: str) -> list[dict[str, Any]]:
    clauses: dict[str, list[dict[str, Any]]] = {
        "none": [],
        "continue": [{}],
        "typed": [{"errorTypes": ["Rejected", "TimeoutError"]}],
        # The target is set at the end.
        "goto": [{"errorTypes": ["Boom", "ChildRunFailed"], "goto": ""}],
        "compensate": [{"compensate": True}],
    }
    return clauses[choice]


def _route_to_dependents(block: dict[str, Any], blocks: list[dict[str, Any]], draw: Any) -> None:
    """Point a switch's cases, a signal's on_timeout and a catch's goto at direct dependents;
    without any, a switch becomes a transform, and there is no on_timeout or goto."""
    dependents = [b["id"] for b in blocks if block["id"] in b["needs"]]
    if "switchBlock" in block:
        if not dependents:
            del block["switchBlock"]
            block["transform"] = {}
            return
        block["switchBlock"] = {
            "cases": [{"when": "input.doc == 'b.pdf'", "goto": dependents[0]}],
            "default": draw(st.sampled_from(["", *dependents])),
        }
    signal = block.get("signal", {})
    if "timeout" in signal and dependents and draw(st.booleans()):
        signal["onTimeout"] = draw(st.sampled_from(dependents))
    for clause in block.get("catch", []):
        if "goto" in clause:
            if dependents:
                clause["goto"] = draw(st.sampled_from(dependents))
            else:
                del clause["goto"]


class Input(NamedTuple):
    """One thing that reached the run from outside, as its history records it."""

    what: str
    target: str
    """A block id, a timer id or a signal name."""
    value: JSON = None


def _complete(engine: Engine, entry: Input) -> None:
    engine.complete(entry.target, entry.value)


def _fail_block(engine: Engine, entry: Input) -> None:
    engine.fail(entry.target, BlockError(str(entry.value), f"{entry.target} broke"))


def _fire(engine: Engine, entry: Input) -> None:
    engine.fire(entry.target)


def _send(engine: Engine, entry: Input) -> None:
    engine.signal(entry.target, entry.value)


def _child_closed(engine: Engine, entry: Input) -> None:
    run_id = engine.children[entry.target]
    status = cast("common_pb2.RunStatus.ValueType", entry.value)
    output: JSON = {"child": run_id} if status == common_pb2.RUN_STATUS_COMPLETED else None
    engine.deliver(entry.target, ChildClosed(run_id, status, output, "it ended"))


def _publish(engine: Engine, entry: Input) -> None:
    event = EventReceived(0, f"e-{entry.target}", "paid", "a.pdf", entry.value)
    engine.publish(event)


def _child_start_failed(engine: Engine, entry: Input) -> None:
    run_id = engine.children[entry.target]
    engine.deliver(entry.target, ChildStartFailed(run_id, "the flow is not registered"))


FEED: Mapping[str, Callable[[Engine, Input], None]] = {
    "complete": _complete,
    "fail": _fail_block,
    "fire": _fire,
    "signal": _send,
    "child": _child_closed,
    "child_start_failed": _child_start_failed,
    "publish": _publish,
}


def feed(engine: Engine, entry: Input) -> None:
    """`entry` reaches the run, then the engine decides until it waits again."""
    FEED[entry.what](engine, entry)
    engine.settle()


def _external_running(engine: Engine) -> list[str]:
    compiled = engine.compiled
    return [b for b in engine.running() if compiled.block(b).spec.name == "external"]


def _moves(engine: Engine, data: st.DataObject | None) -> list[Input]:
    """What may reach the run now. Without `data` (the run must finish), values are fixed so
    that each move ends a block or fires a timer: no failures, signals only to the waiting
    blocks and with a payload that `ACCEPT` takes."""

    def pick(values: list[Any]) -> Any:
        return values[0] if data is None else data.draw(st.sampled_from(values))

    moves: list[Input] = []
    for block_id in _external_running(engine):
        if pick([True, False]):
            moves.append(Input("complete", block_id, {"by": block_id}))
        else:
            moves.append(Input("fail", block_id, pick(["Boom", "Rejected"])))
    for block_id in engine.children:
        if pick([True, True, False]):
            moves.append(Input("child", block_id, pick(CHILD_ENDS)))
        else:
            moves.append(Input("child_start_failed", block_id))
    moves += [Input("fire", timer_id) for timer_id in engine.timers]
    names = list(dict.fromkeys(engine.awaiting.values()))
    if data is not None:
        names += SIGNALS  # a signal nobody waits for yet is kept for later
    for name in names:
        moves.append(Input("signal", name, {"amount": pick(list(range(10)))}))
    if engine.awaiting_events:
        # An event id per input: a publish the run already took is not offered again.
        moves.append(Input("publish", str(len(engine.log)), {"amount": pick(list(range(10)))}))
    return moves


def run(engine: Engine, data: st.DataObject) -> list[Input]:
    """Drive the run to its end with random inputs; the inputs, in order."""
    inputs: list[Input] = []
    engine.settle()
    for step in range(12 * len(engine.compiled.blocks) + 12):
        if engine.result is not None:
            return inputs
        _check_waits(engine)
        # Random at first; then only moves that make progress, so every run ends.
        moves = _moves(engine, data if step < 6 * len(engine.compiled.blocks) + 6 else None)
        assert moves, f"stuck: nothing to wait for, nothing decided: {engine.blocks}"
        entry = data.draw(st.sampled_from(moves)) if len(moves) > 1 else moves[0]
        inputs.append(entry)
        feed(engine, entry)
    raise AssertionError(f"the run did not end: {engine.blocks}")


def _check_waits(engine: Engine) -> None:
    """Every open wait (timer, signal, child) belongs to a block still running."""
    waits = [*engine.timers.values(), *engine.awaiting, *engine.awaiting_events, *engine.children]
    for block_id in waits:
        assert engine.blocks[block_id].status == RUNNING, f"{block_id} ended, its wait did not"


def _stored(bp: blueprint_pb2.Blueprint) -> CompiledBlueprint:
    """The blueprint as history loads it: parsed from its stored bytes, compiled again."""
    return compile_blueprint(
        blueprint_pb2.Blueprint.FromString(bp.SerializeToString()), stored=True
    )


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bp=blueprints(), data=st.data())
def test_every_run_ends_exactly_once(bp: blueprint_pb2.Blueprint, data: st.DataObject) -> None:
    compiled = compile_blueprint(bp)
    engine = Engine(compiled, input=INPUT)
    run(engine, data)

    ends = [c for c in engine.log if isinstance(c, CompleteRun | FailRun)]
    assert len(ends) == 1, f"the run did not end exactly once: {ends}"
    assert engine.log[-1] == ends[0], "something was decided after the run ended"
    started = Counter(
        c.block_id
        for c in engine.log
        if isinstance(c, ScheduleExternal | StartChild | AwaitSignal | AwaitEvent)
    )
    ended = Counter(c.block_id for c in engine.log if isinstance(c, CompleteBlock | FailBlock))
    skipped = Counter(c.block_id for c in engine.log if isinstance(c, SkipBlock))
    assert max((started + skipped).values(), default=1) == 1, "a block started twice"
    assert max((ended + skipped).values(), default=1) == 1, "a block ended twice"

    [end] = ends
    succeeded_early = any(
        isinstance(c, CompleteBlock) and c.kind == blueprint_pb2.BLOCK_KIND_SUCCEED
        for c in engine.log
    )
    if isinstance(end, FailRun):
        assert engine.blocks[end.block_id].status in (FAILED, CANCELED)
        # Every compensation that ran is listed, in the order it ran.
        ran = [b for c in engine.log if (b := _block_of(c)) in compiled.compensates]
        assert [c.by for c in end.compensated] == list(dict.fromkeys(ran))
    elif not succeeded_early:
        # A run completes normally only when every block is done and no failure stands.
        # (Inside a map, a failed item may have been tolerated.)
        dormant = {b.id for b in compiled.order if b.dormant}
        assert set(compiled.blocks) - dormant <= set(engine.blocks)
        assert all(
            v.status in TERMINAL - {FAILED, CANCELED} or v.route is not None
            for b, v in engine.blocks.items()
            if b not in dormant and "[" not in b
        )
    assert RUNNING not in {v.status for v in engine.blocks.values()}


def _block_of(command: object) -> str:
    return str(getattr(command, "block_id", ""))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bp=blueprints(), data=st.data())
def test_replaying_the_recorded_inputs_decides_the_same(
    bp: blueprint_pb2.Blueprint, data: st.DataObject
) -> None:
    first = Engine(compile_blueprint(bp), input=INPUT)
    inputs = run(first, data)

    replay = Engine(_stored(bp), input=INPUT)
    replay.settle()
    for entry in inputs:
        assert replay.result is None, f"the replay ended before {entry}"
        feed(replay, entry)
    assert replay.log == first.log
    assert replay.blocks == first.blocks
    assert replay.result == first.result is not None
