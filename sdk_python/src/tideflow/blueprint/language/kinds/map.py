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
    StartMap,
)
from tideflow.blueprint.language.kinds.base import BlockContext, Kind, Progress, Settled, Site
from tideflow.blueprint.language.model import JSON, BlockError, BlockView, Scopes
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
    return MapPlan(
        items=items,
        max_concurrency=spec.max_concurrency,
        tolerated_failures=spec.tolerated_failures,
        tolerated_percentage=spec.tolerated_failure_percentage,
    )


def start(plan: MapPlan, block: BlockContext) -> Sequence[Command]:
    assert plan.items is not None  # registration requires it
    items = plan.items.evaluate(block.env)
    if not isinstance(items, list):
        raise ExpressionError(
            expression=plan.items.source,
            path=plan.items.path,
            message=f"a map's items must be a list, got {_type_name(items)}",
        )
    bound = block.limits.max_inline_map_items
    if len(items) > bound:
        message = (
            f"{len(items)} items, more than the {bound} a map runs in-line (the server's "
            "blueprint.max_inline_map_items, or the namespace's limits.max_map_items when "
            "lower); running larger fan-outs as child runs is not supported yet"
        )
        error = BlockError(TOO_MANY_ITEMS, message, non_retryable=True, server=True)
        return [FailBlock(block.block_id, error)]
    if not items:
        return [CompleteBlock(block.block_id, blueprint_pb2.BLOCK_KIND_MAP, output=[])]
    return [StartMap(block.block_id, tuple(items))]


def on_event(plan: MapPlan, block: BlockContext, progress: Progress) -> Sequence[Command]:
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
    concurrency = plan.max_concurrency or block.limits.default_map_concurrency
    # Items start in order: as many as are done, plus `concurrency` running at once.
    opened = max(view.scopes.opened, min(total, len(settled) + concurrency))
    scopes = Scopes(opened, scopes.succeeded, scopes.failed)
    return [RecordScopes(block.block_id, scopes)] if scopes != view.scopes else []


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
)
