"""`subflow`: run another flow as a child run and take its result.

```yaml
- id: report
  needs: [ocr]
  subflow: {flow: make-report@2, run_id: "${run.id}-report", run_timeout: 3600s}
  input: {pages: "${blocks.ocr.output.pages}"}
```

Starting it starts the child run (`StartChild`: the engine's outbox starts it, idempotently,
in the same namespace). The block waits, costing nothing, until the child closes; the engine
then delivers `ChildClosed` (or `ChildStartFailed` when the child could not be started), and
the block completes with the child's result, or fails with an application error whose type
says how the child ended, so `catch` can match it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import duration_pb2, struct_pb2

from tideflow.api.v1 import blueprint_pb2, common_pb2
from tideflow.blueprint.language import policy as _policy
from tideflow.blueprint.language.commands import Command, CompleteBlock, FailBlock, StartChild
from tideflow.blueprint.language.kinds.base import BlockContext, Kind, Site
from tideflow.blueprint.language.model import JSON, BlockError
from tideflow.blueprint.language.templates import Template

FLOW = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,127}(@[1-9][0-9]{0,9})?")
"""A flow name (as registration allows it), with an optional `@version`."""
MAX_RUN_ID_LENGTH = 255
"""As the frontend's `max_run_id_length` default: a child's run_id is held to it too."""

CHILD_RUN_START_FAILED = "ChildRunStartFailed"
CHILD_RUN_ID_INVALID = "ChildRunIdInvalid"
CHILD_ERRORS: Mapping[common_pb2.RunStatus.ValueType, str] = {
    common_pb2.RUN_STATUS_FAILED: "ChildRunFailed",
    common_pb2.RUN_STATUS_TIMED_OUT: "ChildRunTimedOut",
    common_pb2.RUN_STATUS_CANCELED: "ChildRunCanceled",
    common_pb2.RUN_STATUS_TERMINATED: "ChildRunTerminated",
}
"""The block's error type for each way a child ends other than completing."""


@dataclass(frozen=True, slots=True)
class ChildClosed:
    """The child run closed (its CHILD_RUN_CLOSED event)."""

    run_id: str
    status: common_pb2.RunStatus.ValueType
    output: JSON = None
    """COMPLETED: the child's result."""
    message: str = ""
    """Otherwise: what the child's close says (its failure's message)."""


@dataclass(frozen=True, slots=True)
class ChildStartFailed:
    """The child could not be started (its CHILD_RUN_START_FAILED event)."""

    run_id: str
    message: str


@dataclass(frozen=True, slots=True)
class SubflowPlan:
    flow: str
    run_id: Template
    input: Template | None
    task_queue: str
    run_timeout: duration_pb2.Duration | None
    parent_close_policy: blueprint_pb2.ParentClosePolicy.ValueType
    ends_run: bool = False


def check(site: Site) -> SubflowPlan:
    subflow = site.block.subflow
    path = f"{site.path}.subflow"
    if not subflow.flow:
        site.report(f"{path}.flow", "the child flow is required, as name or name@version")
    elif not FLOW.fullmatch(subflow.flow):
        site.report(
            f"{path}.flow", f"{subflow.flow!r} is not a flow name or name@version (e.g. report@2)"
        )
    run_timeout = subflow.run_timeout if subflow.HasField("run_timeout") else None
    if run_timeout is not None:
        _policy.check_run_timeout(
            run_timeout, f"{path}.run_timeout", site.report, bounded=not site.stored
        )
    if subflow.parent_close_policy not in blueprint_pb2.ParentClosePolicy.values():
        site.report(
            f"{path}.parent_close_policy",
            f"unknown parent close policy {subflow.parent_close_policy}",
        )
    # The default run_id is a template too, so both render the same way at start.
    run_id = subflow.run_id or "${run.id}/" + site.block.id
    block = site.block
    return SubflowPlan(
        flow=subflow.flow,
        run_id=site.template(struct_pb2.Value(string_value=run_id), f"{path}.run_id"),
        input=site.template(block.input, f"{site.path}.input") if block.HasField("input") else None,
        task_queue=subflow.task_queue,
        run_timeout=run_timeout,
        parent_close_policy=subflow.parent_close_policy
        or blueprint_pb2.PARENT_CLOSE_POLICY_TERMINATE,
    )


def start(plan: SubflowPlan, block: BlockContext) -> Sequence[Command]:
    run_id = plan.run_id.render(block.env)
    if not isinstance(run_id, str) or not run_id or len(run_id) > MAX_RUN_ID_LENGTH:
        message = (
            f"the child's run_id must be a string of 1 to {MAX_RUN_ID_LENGTH} characters, "
            f"got {run_id!r:.300}"
        )
        error = BlockError(CHILD_RUN_ID_INVALID, message, non_retryable=True, server=True)
        return [FailBlock(block.block_id, error)]
    timeout = None
    if plan.run_timeout is not None:
        timeout = duration_pb2.Duration()  # a copy: the engine may keep the command's message
        timeout.CopyFrom(plan.run_timeout)
    return [
        StartChild(
            block_id=block.block_id,
            flow=plan.flow,
            run_id=run_id,
            input=None if plan.input is None else plan.input.render(block.env),
            task_queue=plan.task_queue,
            run_timeout=timeout,
            parent_close_policy=plan.parent_close_policy,
        )
    ]


def child_error(event: ChildClosed | ChildStartFailed) -> BlockError:
    """Why a child did not complete, as the block that waited for it fails (a map's item
    too)."""
    if isinstance(event, ChildStartFailed):
        message = f"child run {event.run_id!r} was not started: {event.message}"
        return BlockError(CHILD_RUN_START_FAILED, message, non_retryable=True)
    error_type = CHILD_ERRORS.get(event.status, CHILD_ERRORS[common_pb2.RUN_STATUS_FAILED])
    ended = error_type.removeprefix("ChildRun").lower().replace("timedout", "timed out")
    message = f"child run {event.run_id!r} {ended}"
    if event.message:
        message += f": {event.message}"
    return BlockError(error_type, message, non_retryable=True)


def _closed(plan: SubflowPlan, block: BlockContext, event: ChildClosed) -> Sequence[Command]:
    if event.status == common_pb2.RUN_STATUS_COMPLETED:
        return [CompleteBlock(block.block_id, blueprint_pb2.BLOCK_KIND_SUBFLOW, event.output)]
    return [FailBlock(block.block_id, child_error(event))]


def _start_failed(
    plan: SubflowPlan, block: BlockContext, event: ChildStartFailed
) -> Sequence[Command]:
    return [FailBlock(block.block_id, child_error(event))]


_EVENTS: Mapping[type, Callable[[SubflowPlan, BlockContext, Any], Sequence[Command]]] = {
    ChildClosed: _closed,
    ChildStartFailed: _start_failed,
}


def on_event(plan: SubflowPlan, block: BlockContext, event: object) -> Sequence[Command]:
    return _EVENTS[type(event)](plan, block, event)


KIND = Kind(
    name="subflow",
    field="subflow",
    kind=blueprint_pb2.BLOCK_KIND_SUBFLOW,
    check=check,
    start=start,
    on_event=on_event,
    takes_input=True,
)
