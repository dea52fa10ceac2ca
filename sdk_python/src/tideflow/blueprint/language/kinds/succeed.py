"""`succeed`: end the run successfully at once, whatever else is running.

```yaml
- id: done
  needs: [check]
  when: blocks.check.output.ok
  succeed: {output: {filed: true}}
```

Its output (unset: the blueprint's `output`) is the run's result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language.commands import Command, CompleteBlock
from tideflow.blueprint.language.kinds.base import BlockContext, Kind, Site
from tideflow.blueprint.language.templates import Template


@dataclass(frozen=True, slots=True)
class SucceedPlan:
    output: Template | None
    ends_run: bool = True


def check(site: Site) -> SucceedPlan:
    succeed = site.block.succeed
    if not succeed.HasField("output"):
        return SucceedPlan(None)
    return SucceedPlan(site.template(succeed.output, f"{site.path}.succeed.output"))


def start(plan: SucceedPlan, block: BlockContext) -> Sequence[Command]:
    template = plan.output if plan.output is not None else block.run_output
    output = None if template is None else template.render(block.env)
    return [CompleteBlock(block.block_id, blueprint_pb2.BLOCK_KIND_SUCCEED, output)]


KIND = Kind(
    name="succeed",
    field="succeed",
    kind=blueprint_pb2.BLOCK_KIND_SUCCEED,
    check=check,
    start=start,
)
