"""`loop`: run a block list again and again, while a condition over the last run holds.

```yaml
- id: refine
  loop:
    max_iterations: 5
    condition: iteration.output.score < 0.9
    blocks:
      - id: draft
        external: {block: draft@1}
        input: {previous: "${iteration.previous}", round: "${iteration.index}"}
```

Each iteration is a scope (`kinds.base.Progress`): its blocks are addressed
`<loop id>[<iteration>].<id>` and read `iteration.index` (from 0) and `iteration.previous`
(the previous iteration's output, null in iteration 0). When an iteration ends, `condition`
reads it as `iteration.index` and `iteration.output`: true runs the next one, up to
`max_iterations`. Reaching `max_iterations` completes the block: it is a bound, not an error.
A failed iteration fails the block with its error. The output keeps every iteration's:
`{"iterations": [...], "last": <the last one's output>}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language.commands import (
    Command,
    CompleteBlock,
    FailBlock,
    RecordScopes,
    StartLoop,
)
from tideflow.blueprint.language.kinds.base import BlockContext, Kind, Progress, Settled, Site
from tideflow.blueprint.language.model import JSON, BlockError, BlockView, Scopes
from tideflow.blueprint.language.templates import Expression

ITERATION = frozenset({"iteration"})


@dataclass(frozen=True, slots=True)
class LoopPlan:
    condition: Expression | None
    """None: run every iteration up to `max_iterations`."""
    max_iterations: int
    ends_run: bool = False


def check(site: Site) -> LoopPlan:
    spec = site.block.loop
    path = f"{site.path}.loop"
    bound = site.limits.max_loop_iterations
    if spec.max_iterations < 1:
        site.report(f"{path}.max_iterations", "max_iterations is required, at least 1")
    elif spec.max_iterations > bound and not site.stored:
        site.report(
            f"{path}.max_iterations",
            f"at most {bound} (the server's blueprint.max_loop_iterations), "
            f"got {spec.max_iterations}",
        )
    condition = None
    if spec.condition:
        condition = site.condition(spec.condition, f"{path}.condition", reads=ITERATION)
    site.nest(
        spec.blocks,
        f"{path}.blocks",
        reads=ITERATION,
        output=spec.output if spec.HasField("output") else None,
        output_path=f"{path}.output",
    )
    return LoopPlan(condition, spec.max_iterations)


def start(plan: LoopPlan, block: BlockContext) -> Sequence[Command]:
    return [StartLoop(block.block_id)]


def on_event(plan: LoopPlan, block: BlockContext, progress: Progress) -> Sequence[Command]:
    view = block.view
    assert view is not None
    settled = progress.settled
    opened = view.scopes.opened
    failed = sum(1 for item in settled.values() if item.error is not None)
    scopes = Scopes(max(opened, 1), len(settled) - failed, failed)
    last = settled.get(opened - 1) if opened else None
    if last is None:  # not started, or the iteration runs
        return [RecordScopes(block.block_id, scopes)] if scopes != view.scopes else []
    if last.error is not None:
        message = f"iteration {opened - 1} failed: {last.error.message}"
        error = BlockError(last.error.type, message, non_retryable=True, server=last.error.server)
        return _closing(view, scopes, FailBlock(block.block_id, error))
    if opened < plan.max_iterations and _again(plan, block, opened - 1, last.output):
        return [RecordScopes(block.block_id, Scopes(opened + 1, scopes.succeeded, failed))]
    outputs: list[JSON] = [settled[index].output for index in range(opened)]
    output = {"iterations": outputs, "last": last.output}
    done = CompleteBlock(block.block_id, blueprint_pb2.BLOCK_KIND_LOOP, output=output)
    return _closing(view, scopes, done)


def _again(plan: LoopPlan, block: BlockContext, index: int, output: JSON) -> bool:
    if plan.condition is None:
        return True
    env = block.env.nested({}, {"iteration": {"index": index, "output": output}})
    return plan.condition.evaluate_bool(env)


def _closing(view: BlockView, scopes: Scopes, command: CompleteBlock | FailBlock) -> list[Command]:
    """The block's end, with its final counts (for operators) recorded first."""
    if scopes == view.scopes:
        return [command]
    return [RecordScopes(command.block_id, scopes), command]


def bind(
    plan: LoopPlan, view: BlockView, index: int, settled: Mapping[int, Settled]
) -> Mapping[str, JSON]:
    previous = settled.get(index - 1)
    return {
        "iteration": {"index": index, "previous": None if previous is None else previous.output}
    }


KIND = Kind(
    name="loop",
    field="loop",
    kind=blueprint_pb2.BLOCK_KIND_LOOP,
    check=check,
    start=start,
    on_event=on_event,
    nested=lambda block: block.loop.blocks,
    bind=bind,
)
