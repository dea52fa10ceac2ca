"""What the interpreter decides: a small, closed set of command primitives.

Block kinds return these (`kinds.base`); the engine applies each type with exactly one
applier (the server's `history.interpreter.appliers`), recording events and changing the run's
state. Commands are plain, frozen data, equal for equal decisions (invariant 4): replaying a
run's history gives the same commands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from tideflow.api.v1 import blueprint_pb2, common_pb2
from tideflow.blueprint.language.model import JSON, BlockError, Scopes


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
class CompleteBlock:
    """A block finished in the engine with this output; `vars` are the run variables it
    assigns (`set`)."""

    block_id: str
    kind: blueprint_pb2.BlockKind.ValueType
    output: JSON = None
    vars: Mapping[str, JSON] = field(default_factory=dict)
    route: str | None = None
    """The dependent it routes to (`BlockView.route`); None: no routing."""


@dataclass(frozen=True, slots=True)
class SkipBlock:
    """The block does not run; `reason` says why (a guard, a failed need, a branch not
    taken)."""

    block_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class FailBlock:
    """The block fails in the engine: an expression failed, or it is a `fail` block."""

    block_id: str
    error: BlockError
    route: str | None = None
    """The dependent the failure routes to, which handles it (`BlockView.route`)."""


@dataclass(frozen=True, slots=True)
class StartMap:
    """A map block starts over these items (recorded, so they are evaluated once); its items'
    scopes open as `RecordScopes` says."""

    block_id: str
    items: tuple[JSON, ...]


@dataclass(frozen=True, slots=True)
class StartLoop:
    """A loop block starts; its iterations' scopes open as `RecordScopes` says."""

    block_id: str


@dataclass(frozen=True, slots=True)
class RecordScopes:
    """A running container's progress changed (`BlockView.scopes`): more scopes open, or some
    ended. It follows from the events before it, so like a skip it records no event."""

    block_id: str
    scopes: Scopes


@dataclass(frozen=True, slots=True)
class CompleteRun:
    output: JSON


@dataclass(frozen=True, slots=True)
class FailRun:
    error: BlockError
    block_id: str = ""
    """The block whose failure failed the run, if one did."""


Command: TypeAlias = (
    ScheduleExternal
    | CompleteBlock
    | SkipBlock
    | FailBlock
    | StartMap
    | StartLoop
    | RecordScopes
    | CompleteRun
    | FailRun
)
