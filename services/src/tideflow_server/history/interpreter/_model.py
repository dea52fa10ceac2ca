"""What the blueprint interpreter reads and what it decides.

The interpreter is a pure function of a run's state (invariant 4): `decide(compiled, view)`
looks at which blocks have been reached and how they ended, and returns the commands that
follow, with no I/O, no clock and no randomness. The history engine applies the commands
(recording events, scheduling block tasks, updating mutable state), rebuilds the view and
calls `decide` again until it returns nothing new, so system blocks run in-line and may
unlock further blocks in the same step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from tideflow.api.v1 import blueprint_pb2, common_pb2
from tideflow.blueprint.language.model import (
    CANCELED,
    FAILED,
    JSON,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    TERMINAL,
    BlockError,
    BlockStatus,
    BlockView,
    RunView,
)

__all__ = [
    "CANCELED",
    "FAILED",
    "JSON",
    "RUNNING",
    "SKIPPED",
    "SUCCEEDED",
    "TERMINAL",
    "BlockError",
    "BlockStatus",
    "BlockView",
    "Command",
    "CompleteRun",
    "CompleteSystem",
    "FailBlock",
    "FailRun",
    "RunView",
    "ScheduleExternal",
    "SkipBlock",
]


# -- commands ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScheduleExternal:
    """Dispatch an external block to a worker. Retry policy and timeouts are effective values
    (the block's own, else the blueprint's defaults, else the engine's)."""

    block_id: str
    block_type: str
    task_queue: str
    input: JSON
    retry: common_pb2.RetryPolicy
    timeouts: common_pb2.BlockTimeouts
    priority: int = 0
    affinity: blueprint_pb2.Affinity.ValueType = blueprint_pb2.AFFINITY_UNSPECIFIED


@dataclass(frozen=True, slots=True)
class CompleteSystem:
    """A system block (`set`, `transform`, `succeed`) finished in-line with this output;
    `vars` are the variables it assigns (`set`)."""

    block_id: str
    kind: blueprint_pb2.BlockKind.ValueType
    output: JSON = None
    vars: Mapping[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SkipBlock:
    block_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class FailBlock:
    """The block fails without running: its input did not evaluate, or it is a `fail` block."""

    block_id: str
    error: BlockError


@dataclass(frozen=True, slots=True)
class CompleteRun:
    output: JSON


@dataclass(frozen=True, slots=True)
class FailRun:
    error: BlockError
    block_id: str = ""
    """The block whose failure failed the run, if one did."""


Command: TypeAlias = (
    ScheduleExternal | CompleteSystem | SkipBlock | FailBlock | CompleteRun | FailRun
)
