"""`set`: assign run variables (`${vars.x}`), in the engine.

```yaml
- id: count
  needs: [ocr]
  set: {vars: {pages: "${size(blocks.ocr.output.pages)}"}}
```

Every value sees the variables as they were before the block; its output is the map of what
it assigned.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language.commands import Command, CompleteBlock
from tideflow.blueprint.language.kinds.base import BlockContext, Kind, Site
from tideflow.blueprint.language.model import JSON
from tideflow.blueprint.language.templates import Template, field_path

VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class SetPlan:
    vars: tuple[tuple[str, Template], ...]
    ends_run: bool = False


def check(site: Site) -> SetPlan:
    assignments = site.block.set.vars
    path = f"{site.path}.set.vars"
    if not assignments:
        site.report(path, "a set block assigns at least one variable")
    compiled: list[tuple[str, Template]] = []
    for name in sorted(assignments):
        at = field_path(path, name)
        if not VAR_NAME.fullmatch(name):
            site.report(at, f"{name!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        compiled.append((name, site.template(assignments[name], at)))
    return SetPlan(tuple(compiled))


def start(plan: SetPlan, block: BlockContext) -> Sequence[Command]:
    values: dict[str, JSON] = {name: t.render(block.env) for name, t in plan.vars}
    return [
        CompleteBlock(
            block_id=block.block_id,
            kind=blueprint_pb2.BLOCK_KIND_SET,
            output=dict(values),
            vars=values,
        )
    ]


KIND = Kind(name="set", field="set", kind=blueprint_pb2.BLOCK_KIND_SET, check=check, start=start)
