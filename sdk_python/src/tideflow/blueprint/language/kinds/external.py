"""`external`: a block that runs on a worker, in any language, through a task queue.

```yaml
- id: ocr
  external: {block: ocr@1, task_queue: gpu-ocr, retry: {maximum_attempts: 5}}
  input: {doc: "${input.doc}"}
- id: embed
  needs: [ocr]
  external:
    block: embed@1
    task_queue: gpu
    priority: 2                          # 1 goes first, 5 last; 3 by default
    affinity_key: "${input.model}"       # same model, same warm worker while it polls
    fairness_key: "${input.customer}"    # each customer its share of a busy queue
```

Starting it schedules its first attempt; its attempts, retries and timeouts are the engine's
(nothing reaches the block through `on_event`), and its completion or last failure closes it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf import duration_pb2, struct_pb2

from tideflow.api.v1 import blueprint_pb2, common_pb2
from tideflow.blueprint.language import policy as _policy
from tideflow.blueprint.language.commands import Command, ScheduleExternal
from tideflow.blueprint.language.kinds.base import BlockContext, Kind, Site
from tideflow.blueprint.language.templates import ExpressionError, Template, text_form

BLOCK_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*@[1-9][0-9]*")
MAX_PRIORITY = 5
"""Priority levels are 1 (first) to 5 (last); 0 is read as 3."""
MAX_ROUTING_KEY = 255
"""Longest rendered affinity or fairness key."""
MAX_STICKY_S = 60


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
    sticky_schedule_to_start: duration_pb2.Duration | None = None


@dataclass(frozen=True, slots=True)
class ExternalPlan:
    policy: ExternalPolicy
    input: Template | None
    ends_run: bool = False
    affinity_key: Template | None = None
    fairness_key: Template | None = None


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
    if not 0 <= external.priority <= MAX_PRIORITY:
        site.report(
            f"{path}.priority",
            f"is {external.priority}, must be 1 (first) to {MAX_PRIORITY} (last), or 0 for 3",
        )
    sticky = None
    if external.HasField("sticky_schedule_to_start"):
        sticky = external.sticky_schedule_to_start
        spath = f"{path}.sticky_schedule_to_start"
        if _policy.check_duration(sticky, spath, site.report, bounded=bounded) and (
            sticky.ToNanoseconds() > MAX_STICKY_S * 10**9
        ):
            site.report(spath, f"must be at most {MAX_STICKY_S}s")
    block = site.block
    template = site.template(block.input, f"{site.path}.input") if block.HasField("input") else None
    keys = [
        site.template(struct_pb2.Value(string_value=source), f"{path}.{name}") if source else None
        for name, source in (
            ("affinity_key", external.affinity_key),
            ("fairness_key", external.fairness_key),
        )
    ]
    policy = ExternalPolicy(
        block_type=external.block,
        task_queue=task_queue,
        retry=retry,
        timeouts=timeouts,
        priority=external.priority,
        affinity=external.affinity,
        own_task_queue=bool(external.task_queue),
        sticky_schedule_to_start=sticky,
    )
    return ExternalPlan(policy, template, affinity_key=keys[0], fairness_key=keys[1])


def _routing_key(template: Template | None, block: BlockContext, path: str) -> str:
    """A rendered affinity or fairness key: its text form, bounded."""
    if template is None:
        return ""
    value = template.render(block.env)
    key = value if isinstance(value, str) else text_form(value)
    if len(key) > MAX_ROUTING_KEY:
        raise ExpressionError(
            expression=key[:50],
            path=f"{block.block_id}.external.{path}",
            message=f"renders a key of {len(key)} characters, more than {MAX_ROUTING_KEY}",
        )
    return key


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
            affinity_key=_routing_key(plan.affinity_key, block, "affinity_key"),
            fairness_key=_routing_key(plan.fairness_key, block, "fairness_key"),
            sticky_schedule_to_start=plan.policy.sticky_schedule_to_start,
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
