"""What blueprint expressions read: JSON values and the view of a run's blocks.

The engine's interpreter (in the server) decides from a `RunView`; expressions see it through
`templates.run_variables`. The commands it decides are the server's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from tideflow.api.v1 import common_pb2

JSON: TypeAlias = bool | int | float | str | list["JSON"] | dict[str, "JSON"] | None

BlockStatus: TypeAlias = common_pb2.BlockStatus.ValueType
RUNNING = common_pb2.BLOCK_STATUS_RUNNING
SUCCEEDED = common_pb2.BLOCK_STATUS_SUCCEEDED
FAILED = common_pb2.BLOCK_STATUS_FAILED
SKIPPED = common_pb2.BLOCK_STATUS_SKIPPED
CANCELED = common_pb2.BLOCK_STATUS_CANCELED
TERMINAL = frozenset({SUCCEEDED, FAILED, SKIPPED, CANCELED})


@dataclass(frozen=True, slots=True)
class BlockError:
    """Why a block failed, as `${blocks.<id>.error}` shows it."""

    type: str
    message: str
    non_retryable: bool = False
    server: bool = False
    """An engine-side error (an expression that failed on the run's data, an output that
    breaks the schema), recorded as a ServerFailureInfo. Otherwise an application error (a
    worker's, a `fail` block's), an ApplicationFailureInfo whose type `catch` matches."""


@dataclass(frozen=True, slots=True)
class Scopes:
    """A container block's scopes (a map's items, a loop's iterations) as the run recorded
    them: scopes [0, opened) have started; how many of them ended, each way."""

    opened: int = 0
    succeeded: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of the language that are the server's settings (`blueprint.*` in its
    config); the defaults are theirs."""

    max_nesting_depth: int = 4
    """Containers (map, loop) inside containers, checked at registration."""
    max_loop_iterations: int = 1_000
    """The largest `max_iterations` a loop may set, checked at registration."""
    max_inline_map_items: int = 1_000
    """Items a map runs in-line; more fail the block when it starts (unless it runs its items
    as child runs)."""
    max_child_map_items: int = 100_000
    """Items a map runs as child runs (`MapBlock.child_runs`); more fail the block when it
    starts."""
    default_map_concurrency: int = 100
    """Items in flight at once for a map that sets no `max_concurrency`."""


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """How one item of a map that runs its items as child runs ended: its child's result, or
    why the child did not complete."""

    output: JSON = None
    error: BlockError | None = None


@dataclass(frozen=True, slots=True)
class BlockView:
    """A block the run has reached. Blocks not yet reached are absent from `RunView.blocks`."""

    status: BlockStatus
    output: JSON = None
    error: BlockError | None = None
    attempt: int = 0
    route: str | None = None
    """Where the block routed the run when it ended (a switch's case, a catch's goto, a
    signal's on_timeout): that dependent runs, its other route targets are skipped, and a
    failure that routed counts as handled. "" routes to none of them; None: no routing."""
    caught: int | None = None
    """The failed block's catch was judged: the index of the clause that matched, -1 when none
    did (`catch.judge`). None: not judged (no catch, or it did not fail)."""
    closed: int = 0
    """When it closed, as an increasing number (its close event's id): completions are
    compensated in reverse of this order. 0 while running."""
    escalated: tuple[str, ...] = ()
    """A signal block: the escalation targets it has started (`commands.Escalate`)."""
    items: Sequence[JSON] | None = None
    """A map's items, as recorded when it started (the engine may read them lazily)."""
    outcomes: Mapping[int, ItemOutcome] = field(default_factory=dict)
    """A map that runs its items as child runs: the items that ended, by index."""
    scopes: Scopes = Scopes()
    """A container's progress (`Scopes`); zeros for other blocks."""


@dataclass(frozen=True, slots=True)
class Signal:
    """A signal the run received that no block has taken yet (`RunView.signals`)."""

    event_id: int
    """Its RUN_SIGNALED event."""
    name: str
    input: JSON = None


@dataclass(frozen=True, slots=True)
class RunView:
    """Everything `decide` may read. `${run.*}` exposes the identity fields."""

    namespace: str
    run_id: str
    execution_id: str
    flow_name: str
    flow_version: int
    input: JSON
    vars: Mapping[str, JSON] = field(default_factory=dict)
    blocks: Mapping[str, BlockView] = field(default_factory=dict)
    task_queue: str = ""
    """The run's task queue: its start's, else the blueprint's. External blocks that name no
    queue of their own go there. Empty: each block's policy decides."""
    signals: tuple[Signal, ...] = ()
    """Signals received and not taken yet, oldest first: a signal block that starts takes the
    first that matches."""
