"""Block kinds: how each is checked at registration and what it compiles to.

One `KindSpec` per `Block.kind` field. Its `check` reports the kind's own problems and returns
a `BlockPlan`, the compiled form (plain data) that the server's interpreter starts when the
block is ready (`tideflow_server.history.interpreter._kinds.start`). A new kind is a new spec
here and a start rule there; validation dispatches through `KINDS`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from google.protobuf import struct_pb2

from tideflow.api.v1 import blueprint_pb2, common_pb2
from tideflow.blueprint.language import policy as _policy
from tideflow.blueprint.language.model import BlockError
from tideflow.blueprint.language.templates import Template, field_path

BLOCK_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*@[1-9][0-9]*")
VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
DEFAULT_FAIL_TYPE = "Failed"
"""The error type of a `fail` block that names none."""


class Site(Protocol):
    """What a kind's check may use: the block, where it is, and the registration's tools."""

    @property
    def block(self) -> blueprint_pb2.Block: ...
    @property
    def path(self) -> str:
        """`blocks[<index>]`"""

    @property
    def blueprint(self) -> blueprint_pb2.Blueprint: ...
    @property
    def stored(self) -> bool:
        """A version registered already, loaded again: checks added since are skipped."""

    def report(self, path: str, description: str) -> None: ...
    def template(self, value: struct_pb2.Value, path: str) -> Template:
        """Compile a template in this block's scope, reporting its problems."""


class BlockPlan(Protocol):
    """A block's compiled form, one dataclass per kind."""

    @property
    def ends_run(self) -> bool:
        """Once it succeeds the run is over, with its output as the result."""


@dataclass(frozen=True, slots=True)
class KindSpec:
    name: str
    """As users write it: `switch`, `map`."""
    kind: blueprint_pb2.BlockKind.ValueType
    check: Callable[[Site], BlockPlan | None]
    takes_input: bool = False
    """Reads `Block.input`."""


# -- external ----------------------------------------------------------------------------


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


def _check_external(site: Site) -> BlockPlan | None:
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


# -- set, transform, succeed, fail -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetPlan:
    vars: tuple[tuple[str, Template], ...]
    ends_run: bool = False


def _check_set(site: Site) -> BlockPlan | None:
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


@dataclass(frozen=True, slots=True)
class TransformPlan:
    output: Template | None
    ends_run: bool = False


def _check_transform(site: Site) -> BlockPlan | None:
    transform = site.block.transform
    if not transform.HasField("output"):
        return TransformPlan(None)
    return TransformPlan(site.template(transform.output, f"{site.path}.transform.output"))


@dataclass(frozen=True, slots=True)
class SucceedPlan:
    output: Template | None
    ends_run: bool = True


def _check_succeed(site: Site) -> BlockPlan | None:
    succeed = site.block.succeed
    if not succeed.HasField("output"):
        return SucceedPlan(None)
    return SucceedPlan(site.template(succeed.output, f"{site.path}.succeed.output"))


@dataclass(frozen=True, slots=True)
class FailPlan:
    error: BlockError
    ends_run: bool = False


def _check_fail(site: Site) -> BlockPlan | None:
    fail = site.block.fail
    error = BlockError(
        type=fail.error_type or DEFAULT_FAIL_TYPE,
        message=fail.message or f"{site.block.id} failed",
        non_retryable=True,
    )
    return FailPlan(error)


# -- not yet -----------------------------------------------------------------------------


def _unsupported(name: str) -> Callable[[Site], BlockPlan | None]:
    def check(site: Site) -> BlockPlan | None:
        site.report(site.path, f"{name} blocks are not supported yet")
        return None

    return check


def _spec(
    name: str,
    kind: blueprint_pb2.BlockKind.ValueType,
    check: Callable[[Site], BlockPlan | None] | None = None,
    *,
    takes_input: bool = False,
) -> KindSpec:
    return KindSpec(name, kind, check or _unsupported(name), takes_input=takes_input)


KINDS: Mapping[str, KindSpec] = {
    "external": _spec(
        "external", blueprint_pb2.BLOCK_KIND_EXTERNAL, _check_external, takes_input=True
    ),
    "switch_block": _spec("switch", blueprint_pb2.BLOCK_KIND_SWITCH),
    "map_block": _spec("map", blueprint_pb2.BLOCK_KIND_MAP),
    "wait": _spec("wait", blueprint_pb2.BLOCK_KIND_WAIT),
    "signal": _spec("signal", blueprint_pb2.BLOCK_KIND_SIGNAL),
    "set": _spec("set", blueprint_pb2.BLOCK_KIND_SET, _check_set),
    "transform": _spec("transform", blueprint_pb2.BLOCK_KIND_TRANSFORM, _check_transform),
    "subflow": _spec("subflow", blueprint_pb2.BLOCK_KIND_SUBFLOW, takes_input=True),
    "succeed": _spec("succeed", blueprint_pb2.BLOCK_KIND_SUCCEED, _check_succeed),
    "fail": _spec("fail", blueprint_pb2.BLOCK_KIND_FAIL, _check_fail),
}
"""By the name of the `Block.kind` oneof field."""
