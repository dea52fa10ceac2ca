"""`switch`: route the run to one of the block's direct dependents, in the engine.

```yaml
- id: route
  needs: [classify]
  switch_block:
    cases:
      - {when: "blocks.classify.output.label == 'invoice'", goto: invoice}
      - {when: "blocks.classify.output.label == 'receipt'", goto: receipt}
    default: manual
- {id: invoice, needs: [route], external: {block: invoice@1}}
- {id: receipt, needs: [route], external: {block: receipt@1}}
- {id: manual, needs: [route], external: {block: review@1}}
```

The cases are tried in order and the first whose `when` holds is taken; when none does, the
`default` (empty: none of the targets). The targets not taken are SKIPPED ("needs route, which
chose invoice"), and their skips propagate as `when` skips do. Dependents that are no case's
target run as for any block. Its output is `{"case": <index of the case taken, or null>,
"goto": <the block taken, or null>}`. A `when` that fails at run time fails the block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language.commands import Command, CompleteBlock
from tideflow.blueprint.language.kinds.base import BlockContext, Kind, Site
from tideflow.blueprint.language.templates import Expression


@dataclass(frozen=True, slots=True)
class SwitchPlan:
    cases: tuple[tuple[Expression, str], ...]
    """(when, goto) in order."""
    default: str
    ends_run: bool = False


def check(site: Site) -> SwitchPlan:
    switch = site.block.switch_block
    path = f"{site.path}.switch_block"
    if not switch.cases:
        site.report(f"{path}.cases", "a switch needs at least one case")
    cases: list[tuple[Expression, str]] = []
    for j, case in enumerate(switch.cases):
        at = f"{path}.cases[{j}]"
        when = None
        if not case.when:
            site.report(f"{at}.when", "a case needs a when (CEL)")
        else:
            when = site.condition(case.when, f"{at}.when")
        site.goto(case.goto, f"{at}.goto")
        if when is not None:
            cases.append((when, case.goto))
    if switch.default:
        site.goto(switch.default, f"{path}.default")
    return SwitchPlan(tuple(cases), switch.default)


def start(plan: SwitchPlan, block: BlockContext) -> Sequence[Command]:
    for index, (when, goto) in enumerate(plan.cases):
        if when.evaluate_bool(block.env):
            return [_chose(block.block_id, index, goto)]
    return [_chose(block.block_id, None, plan.default)]


def _chose(block_id: str, case: int | None, goto: str) -> CompleteBlock:
    return CompleteBlock(
        block_id=block_id,
        kind=blueprint_pb2.BLOCK_KIND_SWITCH,
        output={"case": case, "goto": goto or None},
        route=goto,
    )


KIND = Kind(
    name="switch",
    field="switch_block",
    kind=blueprint_pb2.BLOCK_KIND_SWITCH,
    check=check,
    start=start,
    routes_as="chose",
)
