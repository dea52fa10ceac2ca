"""`external`: a block that runs on a worker, in any language, through a task queue.

```yaml
- id: ocr
  external: {block: ocr@1, task_queue: gpu-ocr, retry: {maximum_attempts: 5}}
  input: {doc: "${input.doc}"}
```

Starting it schedules its first attempt; its attempts, retries and timeouts are the engine's
(nothing reaches the block through `on_event`), and its completion or last failure closes it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tideflow.api.v1 import blueprint_pb2, common_pb2
from tideflow.blueprint.language import policy as _policy
from tideflow.blueprint.language.commands import Command, ScheduleExternal
from tideflow.blueprint.language.kinds.base import BlockContext, Kind, Site
from tideflow.blueprint.language.templates import Template

BLOCK_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*@[1-9][0-9]*")


@dataclass(frozen=True, slots=True)
class ExternalPolicy:
    """What an external block is dispatched with, defaults applied."""

    block_type: str
    task_queue: str
    """The block's own task queue, else the blueprint's."""
    retry: common_pb2.RetryPolicy
    timeouts: common_pb2.BlockTimeouts
    priority: int = 0
    affinity: blueprint_pb2.Affinity.ValueType = blueprint_pb2.AFFINITY_UNSPECIFIED
    own_task_queue: bool = False
    """The block names its own task queue, which a start's task queue does not override."""


@dataclass(frozen=True, slots=True)
class ExternalPlan:
    policy: ExternalPolicy
    input: Template | None
    ends_run: bool = False


def check(site: Site) -> ExternalPlan:
    external = site.block.external
    blueprint = site.blueprint
    path = f"{site.path}.external"
    if not external.block:
        site.report(f"{path}.block", "the external block type is required, as name@version")
    elif not BLOCK_TYPE.fullmatch(external.block):
        site.report(f"{path}.block", f"{external.block!r} is not name@version (e.g. ocr@1)")
    task_queue = external.task_queue or blueprint.task_queue
    if not task_queue:
        site.report(
            f"{path}.task_queue", "a task queue is required, here or as the blueprint's task_queue"
        )
    own_retry = external.retry if external.HasField("retry") else None
    default_retry = blueprint.retry if blueprint.HasField("retry") else None
    retry = _policy.effective_retry(own_retry, default_retry)
    bounded = not site.stored
    if own_retry is not None and _policy.check_retry(
        own_retry, f"{path}.retry", site.report, bounded=bounded
    ):
        _policy.check_interval_order(own_retry, retry, f"{path}.retry", site.report)
    own_timeouts = external.timeouts if external.HasField("timeouts") else None
    timeouts = _policy.effective_timeouts(own_timeouts, blueprint.timeouts)
    if own_timeouts is not None:
        _policy.check_timeouts(own_timeouts, f"{path}.timeouts", site.report, bounded=bounded)
    if not _policy.bounds_the_block(timeouts):
        site.report(
            f"{path}.timeouts",
            "set start_to_close or schedule_to_close, here or in the blueprint's timeouts",
        )
    if external.affinity not in blueprint_pb2.Affinity.values():
        site.report(f"{path}.affinity", f"unknown affinity {external.affinity}")
    block = site.block
    template = site.template(block.input, f"{site.path}.input") if block.HasField("input") else None
    policy = ExternalPolicy(
        block_type=external.block,
        task_queue=task_queue,
        retry=retry,
        timeouts=timeouts,
        priority=external.priority,
        affinity=external.affinity,
        own_task_queue=bool(external.task_queue),
    )
    return ExternalPlan(policy, template)


def start(plan: ExternalPlan, block: BlockContext) -> Sequence[Command]:
    rendered = None if plan.input is None else plan.input.render(block.env)
    # Copies: the engine may keep or change the messages of a command it applies.
    retry, timeouts = common_pb2.RetryPolicy(), common_pb2.BlockTimeouts()
    retry.CopyFrom(plan.policy.retry)
    timeouts.CopyFrom(plan.policy.timeouts)
    # A start may override the blueprint's queue, not a queue the block names itself.
    own = plan.policy.own_task_queue or not block.task_queue
    return [
        ScheduleExternal(
            block_id=block.block_id,
            block_type=plan.policy.block_type,
            task_queue=plan.policy.task_queue if own else block.task_queue,
            input=rendered,
            retry=retry,
            timeouts=timeouts,
            priority=plan.policy.priority,
            affinity=plan.policy.affinity,
        )
    ]


KIND = Kind(
    name="external",
    field="external",
    kind=blueprint_pb2.BLOCK_KIND_EXTERNAL,
    check=check,
    start=start,
    takes_input=True,
)
