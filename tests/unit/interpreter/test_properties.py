"""Random DAGs and random outcomes: every run ends exactly once, no block is started twice."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.interpreter.support import (
    CANCELED,
    FAILED,
    RUNNING,
    TERMINAL,
    Engine,
    compile_,
)
from tideflow.api.v1 import blueprint_pb2
from tideflow_server.history.interpreter import (
    CompiledBlueprint,
    CompleteBlock,
    CompleteRun,
    FailRun,
    ScheduleExternal,
)

KINDS = [
    *("external", "external", "external", "set", "transform", "fail", "succeed"),
    *("switch", "map", "loop"),
]
CATCHES = ["none", "none", "continue", "typed", "goto", "compensate"]


@st.composite
def dags(draw: st.DrawFn) -> CompiledBlueprint:
    count = draw(st.integers(min_value=1, max_value=8))
    blocks: list[dict[str, Any]] = []
    for i in range(count):
        block_id = f"b{i}"
        earlier = [b["id"] for b in blocks]
        needs = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        block: dict[str, Any] = {"id": block_id, "needs": needs}
        kind = draw(st.sampled_from(KINDS))
        if kind == "external":
            block["external"] = {"block": "work@1"}
            block["input"] = {"from": [f"${{blocks.{n}.output}}" for n in needs]}
        elif kind == "set":
            block["set"] = {"vars": {f"v{i}": f"${{size(blocks) + {i}}}"}}
        elif kind == "transform":
            block["transform"] = {"output": [f"${{blocks.{n}.status}}" for n in needs]}
        elif kind == "fail":
            block["fail"] = {"errorType": "Rejected"}
        elif kind == "map":
            block["mapBlock"] = {
                "items": f"[{', '.join(str(n) for n in range(draw(st.integers(0, 3))))}]",
                "maxConcurrency": draw(st.integers(0, 2)),
                "toleratedFailures": draw(st.integers(0, 1)),
                "blocks": _inner(draw),
            }
        elif kind == "loop":
            block["loop"] = {
                "maxIterations": draw(st.integers(1, 3)),
                "condition": draw(st.sampled_from(["", "iteration.index < 1", "false"])),
                "blocks": _inner(draw),
            }
        elif kind == "succeed":
            block["succeed"] = {"output": block_id}
        else:
            block["switchBlock"] = {}  # its cases go to its dependents, known at the end
        if kind in ("external", "fail"):
            block["catch"] = _catch(draw(st.sampled_from(CATCHES)))
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
    return compile_(*blocks)


def _catch(choice: str) -> list[dict[str, Any]]:
    clauses: dict[str, list[dict[str, Any]]] = {
        "none": [],
        "continue": [{}],
        "typed": [{"errorTypes": ["Rejected"]}],
        "goto": [{"errorTypes": ["Boom"], "goto": ""}],  # the target is set at the end
        "compensate": [{"compensate": True}],
    }
    return clauses[choice]


def _route_to_dependents(block: dict[str, Any], blocks: list[dict[str, Any]], draw: Any) -> None:
    """Point a switch's cases and a catch's goto at direct dependents; without any, a switch
    becomes a transform and the goto a continue."""
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
    for clause in block.get("catch", []):
        if "goto" in clause:
            if dependents:
                clause["goto"] = draw(st.sampled_from(dependents))
            else:
                del clause["goto"]


def _inner(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A container's blocks: an external block, perhaps followed by a guarded transform."""
    blocks: list[dict[str, Any]] = [{"id": "x", "external": {"block": "work@1"}}]
    if draw(st.booleans()):
        when = draw(st.sampled_from(["true", "false", "blocks.x.succeeded"]))
        blocks.append(
            {"id": "y", "needs": ["x"], "when": when, "transform": {"output": "${blocks.x}"}}
        )
    return blocks


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(compiled=dags(), data=st.data())
def test_every_run_ends_exactly_once(compiled: CompiledBlueprint, data: st.DataObject) -> None:
    engine = Engine(compiled, input={"doc": "a.pdf"})
    ends: list[CompleteRun | FailRun] = []
    for _ in range(200):
        commands = engine.decide()
        ends.extend(c for c in commands if isinstance(c, CompleteRun | FailRun))
        # A run-ending command comes last, and only once.
        assert all(not isinstance(c, CompleteRun | FailRun) for c in commands[:-1])
        for command in commands:
            engine.apply(command)
        engine.log.extend(commands)
        if engine.result is not None:
            break
        if commands:
            continue
        # Containers run their blocks; the workers end only those.
        running = [b for b in engine.running() if compiled.block(b).inner is None]
        assert running, f"stuck: nothing running, nothing decided: {engine.blocks}"
        block_id = data.draw(st.sampled_from(running))
        if data.draw(st.booleans()):
            engine.complete(block_id, {"by": block_id})
        else:
            engine.fail(block_id)
    assert len(ends) == 1, f"the run did not end exactly once: {ends}"

    started = [c.block_id for c in engine.log if isinstance(c, ScheduleExternal | CompleteBlock)]
    assert len(started) == len(set(started))
    [end] = ends
    succeeded_early = any(
        isinstance(c, CompleteBlock) and c.kind == blueprint_pb2.BLOCK_KIND_SUCCEED
        for c in engine.log
    )
    if isinstance(end, FailRun):
        assert engine.blocks[end.block_id].status in (FAILED, CANCELED)
    elif not succeeded_early:
        # A run completes normally only when every block is done and no failure stands.
        # (Inside a map, a failed item may have been tolerated.)
        top = {b: v for b, v in engine.blocks.items() if "[" not in b}
        assert set(top) == set(compiled.blocks)
        assert all(
            v.status in TERMINAL - {FAILED, CANCELED} or v.route is not None for v in top.values()
        )
    assert RUNNING not in {v.status for v in engine.blocks.values()}
