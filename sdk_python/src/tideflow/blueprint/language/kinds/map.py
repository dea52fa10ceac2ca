"""`map`: run a block list once per item of a list, in-line, a few items at a time.

```yaml
- id: pages
  needs: [split]
  map_block:
    items: blocks.split.output.pages
    max_concurrency: 5
    tolerated_failures: 1
    blocks:
      - id: ocr
        external: {block: ocr@1}
        input: {page: "${item}", number: "${index}"}
```

Starting it evaluates `items` once and records them (a replay does not evaluate them again);
not a list, or more than the server's `blueprint.max_inline_map_items`, fails the block, and
an empty list completes it with []. Each item is a scope (`kinds.base.Progress`): its blocks
are addressed `<map id>[<index>].<id>` and read `item` and `index`. Items start in order, at
most `max_concurrency` at once (0: the server's `blueprint.default_map_concurrency`). Its
output is the list of the items' outputs in item order, null for a failed item that was
tolerated; one failure more than tolerated fails the block, with the first failed item's error
type, and no further item starts (items running then are left to finish). The items'
outputs are rendered once, when the map completes (`Settled.output`), so a decision does not
render every item again; an `output` that fails to render fails the block then.

With `child_runs: true` each item runs as a child run instead (`StartChild` with `entry`:
the child runs this map's block list, of the same flow version; `CompiledBlueprint.entered`),
for fan-outs past the in-line bound, up to `blueprint.max_child_map_items`. The child's input
is the item's scope as the in-line mode has it (`item`, `index`, `input`, `vars`, `run`, the
outer `blocks`), so the blocks read the same; its result is the item's output. Children are
started in item order, at most `max_concurrency` open at once; each close is an item's
outcome (`RecordItem`, kept in the run's state), and tolerated failures and the output in
item order are as in-line. The parent's history holds two events per item (the child's
CHILD_RUN_INITIATED and _CLOSED; its start is not recorded there), not the items' blocks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf.message import Message

from tideflow.api.v1 import blueprint_pb2, common_pb2
from tideflow.blueprint.language.commands import (
    Command,
    CompleteBlock,
    FailBlock,
    RecordItem,
    RecordScopes,
    StartChild,
    StartMap,
)
from tideflow.blueprint.language.kinds.base import BlockContext, Kind, Progress, Settled, Site
from tideflow.blueprint.language.kinds.subflow import ChildClosed, ChildStartFailed, child_error
from tideflow.blueprint.language.model import JSON, BlockError, BlockView, ItemOutcome, Scopes
from tideflow.blueprint.language.templates import (
    Expression,
    ExpressionError,
    Placeholder,
    TemplateSyntaxError,
    split_template,
)

ITEMS_NOT_A_LIST = "MapItemsNotAList"
TOO_MANY_ITEMS = "MapItemsLimitExceeded"


@dataclass(frozen=True, slots=True)
class MapPlan:
    items: Expression | None
    max_concurrency: int
    """0: the server's default."""
    tolerated_failures: int
    tolerated_percentage: int
    child_runs: bool = False
    """Each item runs as a child run (`MapBlock.child_runs`)."""
    names: frozenset[str] = frozenset()
    """With child runs: every name the map's blocks may read (`_names`), so a child's input
    carries only those of the scope's variables and outer blocks."""
    ends_run: bool = False

    def tolerated(self, items: int) -> int:
        return max(self.tolerated_failures, items * self.tolerated_percentage // 100)


def check(site: Site) -> MapPlan:
    spec = site.block.map_block
    path = f"{site.path}.map_block"
    items = None
    if not spec.items:
        site.report(f"{path}.items", "the items to map over are required (CEL giving a list)")
    else:
        items = site.expression(_unwrapped(spec.items), f"{path}.items")
    if spec.tolerated_failure_percentage > 100:
        site.report(
            f"{path}.tolerated_failure_percentage",
            f"a percentage is at most 100, got {spec.tolerated_failure_percentage}",
        )
    site.nest(
        spec.blocks,
        f"{path}.blocks",
        reads=frozenset({"item", "index"}),
        output=spec.output if spec.HasField("output") else None,
        output_path=f"{path}.output",
    )
    if spec.child_runs:
        _refuse_sets(site, spec.blocks, f"{path}.blocks")
    return MapPlan(
        items=items,
        max_concurrency=spec.max_concurrency,
        tolerated_failures=spec.tolerated_failures,
        tolerated_percentage=spec.tolerated_failure_percentage,
        child_runs=spec.child_runs,
        names=_names(spec) if spec.child_runs else frozenset(),
    )


def _refuse_sets(site: Site, blocks: Sequence[blueprint_pb2.Block], path: str) -> None:
    """A `set` block assigns its run's variables: in a child run, the child's, which neither
    the parent nor the other items read, so it is refused there (also in nested maps and
    loops)."""
    for index, block in enumerate(blocks):
        kind = block.WhichOneof("kind")
        if kind == "set":
            site.report(
                f"{path}[{index}].set",
                "a set block inside a map with child_runs would assign the child run's "
                "variables, which this run does not see: compute the value as the item's "
                "output instead",
            )
        nested = _CONTAINERS.get(kind or "")
        if nested is not None:
            _refuse_sets(site, nested(block), f"{path}[{index}].{kind}.blocks")


_CONTAINERS: Mapping[str, Callable[[blueprint_pb2.Block], Sequence[blueprint_pb2.Block]]] = {
    "map_block": lambda block: block.map_block.blocks,
    "loop": lambda block: block.loop.blocks,
}
"""The containers' block lists, by the `Block.kind` field that holds them (as their kinds'
`nested`, which this module cannot import from the registry that imports it)."""


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ALWAYS_PASSED = frozenset({"item", "index", "run"})
"""What every child gets: its item, and the identity `${run.*}` reads (small)."""


def _names(spec: blueprint_pb2.MapBlock) -> frozenset[str]:
    """Every identifier in the text of the map's blocks and output (their expressions and
    templates, and, harmlessly, other text): a superset of the variables and blocks they
    read, for CEL names a variable only by writing it. A map item's input would otherwise
    copy the whole run input and every outer block's output into each child."""
    names: set[str] = set()
    for block in spec.blocks:
        _scan(block, names)
    if spec.HasField("output"):
        _scan(spec.output, names)
    return frozenset(names)


def _scan(value: object, names: set[str]) -> None:
    """Collect the identifiers of every text in `value` (a message, its fields' values, a
    struct's keys)."""
    if isinstance(value, str):
        names.update(_NAME.findall(value))
    elif isinstance(value, Message):
        for _, field_value in value.ListFields():
            _scan(field_value, names)
    elif isinstance(value, Mapping):
        for key, one in value.items():
            _scan(key, names)
            _scan(one, names)
    elif isinstance(value, Sequence):
        for one in value:
            _scan(one, names)


def start(plan: MapPlan, block: BlockContext) -> Sequence[Command]:
    assert plan.items is not None  # registration requires it
    items = plan.items.evaluate(block.env)
    if not isinstance(items, list):
        raise ExpressionError(
            expression=plan.items.source,
            path=plan.items.path,
            message=f"a map's items must be a list, got {_type_name(items)}",
        )
    too_many = _too_many(plan, block, len(items))
    if too_many is not None:
        return [FailBlock(block.block_id, too_many)]
    if not items:
        return [CompleteBlock(block.block_id, blueprint_pb2.BLOCK_KIND_MAP, output=[])]
    if not plan.child_runs:
        return [StartMap(block.block_id, tuple(items))]
    opened = min(len(items), _concurrency(plan, block))
    children = _children(plan, block, items, range(opened))
    return [
        StartMap(block.block_id, tuple(items)),
        RecordScopes(block.block_id, Scopes(opened)),
        *children,
    ]


def _too_many(plan: MapPlan, block: BlockContext, count: int) -> BlockError | None:
    """The bound the items break, naming the setting and how to lift it."""
    if plan.child_runs:
        bound = block.limits.max_child_map_items
        if count <= bound:
            return None
        message = (
            f"{count} items, more than the {bound} a map runs as child runs (the server's "
            "blueprint.max_child_map_items, or the namespace's limits.max_map_items when "
            "lower); raise the setting or split the items"
        )
    else:
        bound = block.limits.max_inline_map_items
        if count <= bound:
            return None
        message = (
            f"{count} items, more than the {bound} a map runs in-line (the server's "
            "blueprint.max_inline_map_items, or the namespace's limits.max_map_items when "
            "lower); set `child_runs: true` on the map to run each item as a child run (up "
            "to blueprint.max_child_map_items), or raise the setting"
        )
    return BlockError(TOO_MANY_ITEMS, message, non_retryable=True, server=True)


def _concurrency(plan: MapPlan, block: BlockContext) -> int:
    return plan.max_concurrency or block.limits.default_map_concurrency


def _children(
    plan: MapPlan, block: BlockContext, items: Sequence[JSON], indexes: range
) -> list[Command]:
    """The child runs of items `indexes`: each gets its item's scope as its input (what of
    it the map's blocks may read, `MapPlan.names`), and runs the map's block list
    (`StartChild.entry`). Its run_id is `<run id>/<map path>[<index>]` (the engine puts the
    run's own id first, for an entered run's `run.id` is its parent's)."""
    scope = _passed(plan, block.env.variables())
    return [
        StartChild(
            block_id=block.block_id,
            flow="",
            run_id=f"{block.block_id}[{index}]",
            input={**scope, "item": items[index], "index": index},
            entry=block.block_id,
        )
        for index in indexes
    ]


def _passed(plan: MapPlan, variables: Mapping[str, object]) -> dict[str, JSON]:
    """The scope's variables a child needs: those its blocks may read, and of the outer
    blocks (`blocks.<id>`) those they may read."""
    wanted = plan.names | _ALWAYS_PASSED
    scope = {name: cast(JSON, value) for name, value in variables.items() if name in wanted}
    outer = variables.get("blocks")
    if isinstance(outer, Mapping):
        scope["blocks"] = {b: cast(JSON, v) for b, v in outer.items() if b in plan.names}
    return scope


def _progress(plan: MapPlan, block: BlockContext, progress: Progress) -> Sequence[Command]:
    view = block.view
    assert view is not None and view.items is not None
    settled = progress.settled
    total = len(view.items)
    failed = sorted(index for index, item in settled.items() if item.error is not None)
    scopes = Scopes(view.scopes.opened, len(settled) - len(failed), len(failed))
    if len(failed) > plan.tolerated(total):
        error = _failure(settled, failed, plan.tolerated(total))
        return _closing(view, scopes, FailBlock(block.block_id, error))
    if len(settled) == total:
        output: list[JSON] = [settled[index].output for index in range(total)]
        done = CompleteBlock(block.block_id, blueprint_pb2.BLOCK_KIND_MAP, output=output)
        return _closing(view, scopes, done)
    concurrency = _concurrency(plan, block)
    # Items start in order: as many as are done, plus `concurrency` running at once.
    opened = max(view.scopes.opened, min(total, len(settled) + concurrency))
    scopes = Scopes(opened, scopes.succeeded, scopes.failed)
    return [RecordScopes(block.block_id, scopes)] if scopes != view.scopes else []


_INDEX = re.compile(r"\[(\d+)\]$")


def _item_closed(
    plan: MapPlan, block: BlockContext, event: ChildClosed | ChildStartFailed
) -> Sequence[Command]:
    """An item's child closed (or did not start): record its outcome, then start the next
    items, or end the map. Counts come from `BlockView.scopes`, so a close reads no other
    item's outcome; only the map's end does."""
    view = block.view
    assert view is not None and view.items is not None
    index = _item_index(event.run_id)
    outcome = _outcome(event)
    total, before = len(view.items), view.scopes
    succeeded = before.succeeded + (outcome.error is None)
    failed = before.failed + (outcome.error is not None)
    record: list[Command] = [RecordItem(block.block_id, index, outcome)]
    if failed > plan.tolerated(total) or succeeded + failed == total:
        scopes = Scopes(before.opened, succeeded, failed)
        outcomes = {**view.outcomes, index: outcome}
        return [*record, RecordScopes(block.block_id, scopes), _end(plan, block, outcomes, total)]
    opened = max(before.opened, min(total, succeeded + failed + _concurrency(plan, block)))
    children = _children(plan, block, view.items, range(before.opened, opened))
    scopes = Scopes(opened, succeeded, failed)
    return [*record, RecordScopes(block.block_id, scopes), *children]


def _item_index(run_id: str) -> int:
    match = _INDEX.search(run_id)
    assert match is not None, run_id  # the map named it `<path>[<index>]` (`_children`)
    return int(match[1])


def _outcome(event: ChildClosed | ChildStartFailed) -> ItemOutcome:
    if isinstance(event, ChildClosed) and event.status == common_pb2.RUN_STATUS_COMPLETED:
        return ItemOutcome(event.output)
    return ItemOutcome(error=child_error(event))


def _end(
    plan: MapPlan, block: BlockContext, outcomes: Mapping[int, ItemOutcome], total: int
) -> CompleteBlock | FailBlock:
    """A child-run map ends: failed past its tolerance, or every item done."""
    failed = sorted(index for index, outcome in outcomes.items() if outcome.error is not None)
    if len(failed) > plan.tolerated(total):
        settled = {index: Settled(error=outcomes[index].error) for index in failed}
        return FailBlock(block.block_id, _failure(settled, failed, plan.tolerated(total)))
    output: list[JSON] = [outcomes[index].output for index in range(total)]
    return CompleteBlock(block.block_id, blueprint_pb2.BLOCK_KIND_MAP, output=output)


_EVENTS: Mapping[type, Callable[[MapPlan, BlockContext, Any], Sequence[Command]]] = {
    Progress: _progress,
    ChildClosed: _item_closed,
    ChildStartFailed: _item_closed,
}


def on_event(plan: MapPlan, block: BlockContext, event: object) -> Sequence[Command]:
    """In-line: its scopes' `Progress` on every decision; with child runs: each child's
    close."""
    return _EVENTS[type(event)](plan, block, event)


def _failure(settled: Mapping[int, Settled], failed: list[int], tolerated: int) -> BlockError:
    first = settled[failed[0]].error
    assert first is not None
    message = (
        f"item {failed[0]} failed: {first.message} ({len(failed)} items failed, "
        f"{tolerated} tolerated)"
    )
    return BlockError(first.type, message, non_retryable=True, server=first.server)


def _closing(view: BlockView, scopes: Scopes, command: CompleteBlock | FailBlock) -> list[Command]:
    """The block's end, with its final counts (for operators) recorded first."""
    if scopes == view.scopes:
        return [command]
    return [RecordScopes(command.block_id, scopes), command]


def bind(
    plan: MapPlan, view: BlockView, index: int, settled: Mapping[int, Settled]
) -> Mapping[str, JSON]:
    assert view.items is not None
    return {"item": view.items[index], "index": index}


def _unwrapped(source: str) -> str:
    """`${input.pages}` reads as `input.pages`: items are one expression, but written as a
    template they mean the same."""
    try:
        parts = split_template(source) if "${" in source else []
    except TemplateSyntaxError:
        return source  # reported as CEL
    if len(parts) == 1 and isinstance(parts[0], Placeholder):
        return parts[0].source
    return source


def _type_name(value: JSON) -> str:
    if value is None:
        return "null"
    return {bool: "a bool", int: "an int", float: "a double", str: "a string"}.get(
        type(value), "a map"
    )


KIND = Kind(
    name="map",
    field="map_block",
    kind=blueprint_pb2.BLOCK_KIND_MAP,
    check=check,
    start=start,
    on_event=on_event,
    nested=lambda block: block.map_block.blocks,
    bind=bind,
    in_line=lambda plan: not plan.child_runs,
)
