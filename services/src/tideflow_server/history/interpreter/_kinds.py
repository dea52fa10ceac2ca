"""Block kinds at run time: what a ready block does.

The check half (registration) is the blueprint language's, in
`tideflow.blueprint.language.kinds`, shared with the SDK's builder; it compiles each block to
a plan. `start` turns a ready block's plan into the command that starts (or, for system
blocks, completes) it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tideflow.api.v1 import blueprint_pb2, common_pb2
from tideflow.blueprint.language.kinds import (
    KINDS,
    BlockPlan,
    ExternalPlan,
    ExternalPolicy,
    FailPlan,
    SetPlan,
    SucceedPlan,
    TransformPlan,
)
from tideflow.blueprint.language.templates import Env, Template
from tideflow_server.history.interpreter._model import (
    JSON,
    Command,
    CompleteSystem,
    FailBlock,
    ScheduleExternal,
)

__all__ = ["KINDS", "BlockPlan", "ExternalPlan", "ExternalPolicy", "StartContext", "start"]


@dataclass(frozen=True, slots=True)
class StartContext:
    env: Env
    run_output: Template | None
    """The blueprint's `output`, for a `succeed` block that sets none."""
    task_queue: str = ""
    """The run's task queue (`RunView.task_queue`): where external blocks that name no queue of
    their own go. Empty: the blueprint's, as compiled into each block's policy."""


def start(plan: BlockPlan, block_id: str, context: StartContext) -> Command:
    """The command that starts (or, for system blocks, completes) a ready block. May raise
    ExpressionError, which fails the block."""
    if isinstance(plan, ExternalPlan):
        rendered = None if plan.input is None else plan.input.render(context.env)
        # Copies: the engine may keep or change the messages of a command it applies.
        retry, timeouts = common_pb2.RetryPolicy(), common_pb2.BlockTimeouts()
        retry.CopyFrom(plan.policy.retry)
        timeouts.CopyFrom(plan.policy.timeouts)
        # A start may override the blueprint's queue, not a queue the block names itself.
        own = plan.policy.own_task_queue or not context.task_queue
        return ScheduleExternal(
            block_id=block_id,
            block_type=plan.policy.block_type,
            task_queue=plan.policy.task_queue if own else context.task_queue,
            input=rendered,
            retry=retry,
            timeouts=timeouts,
            priority=plan.policy.priority,
            affinity=plan.policy.affinity,
        )
    if isinstance(plan, SetPlan):
        # Every value sees the variables as they were before this block.
        values: dict[str, JSON] = {name: t.render(context.env) for name, t in plan.vars}
        return CompleteSystem(
            block_id=block_id, kind=blueprint_pb2.BLOCK_KIND_SET, output=dict(values), vars=values
        )
    if isinstance(plan, TransformPlan):
        output = None if plan.output is None else plan.output.render(context.env)
        return CompleteSystem(
            block_id=block_id, kind=blueprint_pb2.BLOCK_KIND_TRANSFORM, output=output
        )
    if isinstance(plan, SucceedPlan):
        template = plan.output if plan.output is not None else context.run_output
        output = None if template is None else template.render(context.env)
        return CompleteSystem(
            block_id=block_id, kind=blueprint_pb2.BLOCK_KIND_SUCCEED, output=output
        )
    if isinstance(plan, FailPlan):
        return FailBlock(block_id=block_id, error=plan.error)
    raise TypeError(f"no start rule for {type(plan).__name__}")  # pragma: no cover
