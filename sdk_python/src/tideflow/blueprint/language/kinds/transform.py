"""`transform`: compute an output from the data wiring, with no side effect.

```yaml
- id: summary
  needs: [ocr]
  transform: {output: {pages: "${size(blocks.ocr.output.pages)}", doc: "${input.doc}"}}
```
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language.commands import Command, CompleteBlock
from tideflow.blueprint.language.kinds.base import BlockContext, Kind, Site
from tideflow.blueprint.language.templates import Template


@dataclass(frozen=True, slots=True)
class TransformPlan:
    output: Template | None
    ends_run: bool = False


def check(site: Site) -> TransformPlan:
    transform = site.block.transform
    if not transform.HasField("output"):
        return TransformPlan(None)
    return TransformPlan(site.template(transform.output, f"{site.path}.transform.output"))


def start(plan: TransformPlan, block: BlockContext) -> Sequence[Command]:
    output = None if plan.output is None else plan.output.render(block.env)
    return [CompleteBlock(block.block_id, blueprint_pb2.BLOCK_KIND_TRANSFORM, output)]


KIND = Kind(
    name="transform",
    field="transform",
    kind=blueprint_pb2.BLOCK_KIND_TRANSFORM,
    check=check,
    start=start,
)
