"""`fail`: fail, as if an external block had raised an application error.

```yaml
- id: reject
  needs: [check]
  when: "!blocks.check.output.ok"
  fail: {error_type: Invalid, message: "the document failed validation"}
```

Its error is an ApplicationFailureInfo of `error_type` (default `Failed`), never retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language.commands import Command, FailBlock
from tideflow.blueprint.language.kinds.base import BlockContext, Kind, Site
from tideflow.blueprint.language.model import BlockError

DEFAULT_FAIL_TYPE = "Failed"
"""The error type of a `fail` block that names none."""


@dataclass(frozen=True, slots=True)
class FailPlan:
    error: BlockError
    ends_run: bool = False


def check(site: Site) -> FailPlan:
    fail = site.block.fail
    error = BlockError(
        type=fail.error_type or DEFAULT_FAIL_TYPE,
        message=fail.message or f"{site.block.id} failed",
        non_retryable=True,
    )
    return FailPlan(error)


def start(plan: FailPlan, block: BlockContext) -> Sequence[Command]:
    return [FailBlock(block.block_id, plan.error)]


KIND = Kind(name="fail", field="fail", kind=blueprint_pb2.BLOCK_KIND_FAIL, check=check, start=start)
