"""What the interpreter decides: a small, closed set of command primitives.

Block kinds return these (`kinds.base`); the engine applies each type with exactly one
applier (the server's `history.interpreter.appliers`), recording events and changing the run's
state. Commands are plain, frozen data, equal for equal decisions (invariant 4): replaying a
run's history gives the same commands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeAlias

from google.protobuf import duration_pb2

from tideflow.api.v1 import blueprint_pb2, common_pb2
from tideflow.blueprint.language.model import JSON, BlockError, ItemOutcome, Scopes


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
    affinity_key: str = ""
    """Rendered `affinity_key`; empty: none."""
    fairness_key: str = ""
    """Rendered `fairness_key`; empty is the key "" like any other."""
    sticky_schedule_to_start: duration_pb2.Duration | None = None
    """The block's own wait for its preferred worker; None: the queue's."""


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
    cause_event_id: int = 0
    """The event that let it finish (a TIMER_FIRED, a RUN_SIGNALED); 0: the step that
    reached it."""


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
    cause_event_id: int = 0
    """The event that made it fail (a timeout's TIMER_FIRED); 0: the step that reached it."""


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Arm a durable timer of the block, which is RUNNING from then on. It fires `after` from
    the time of the step that applies it (decide reads no clock), or `at`; a time already
    past fires at once. Then the block gets `events.TimerFired(timer_id)`."""

    block_id: str
    timer_id: str
    """Unique among the run's open timers: the block id, and what the timer is for."""
    after: timedelta | None = None
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """Drop a timer of the block that has not fired; nothing when it fired or is gone."""

    block_id: str
    timer_id: str


@dataclass(frozen=True, slots=True)
class AwaitSignal:
    """The block is RUNNING and waits for signals named `name`: each that arrives is offered
    to it (`events.SignalReceived`), in the order the waiting blocks were reached."""

    block_id: str
    name: str


@dataclass(frozen=True, slots=True)
class AwaitEvent:
    """The block is RUNNING and waits for a published event of `event_type` whose correlation
    key is `correlation_key`: the engine registers the wait with the namespace's event store
    and offers it the matching events, kept ones first (`events.EventReceived`)."""

    block_id: str
    event_type: str
    correlation_key: str


@dataclass(frozen=True, slots=True)
class ConsumeSignal:
    """The block takes the received signal `event_id` (a RUN_SIGNALED): it is no longer kept
    for other blocks."""

    block_id: str
    event_id: int


@dataclass(frozen=True, slots=True)
class Escalate:
    """Start `target`, a block only an escalation of `block_id` starts (`Site.trigger`),
    while `block_id` keeps waiting: `decide` starts it once its needs are done."""

    block_id: str
    target: str


@dataclass(frozen=True, slots=True)
class StartChild:
    """Start a child run of another flow (a subflow block) and wait for its close, which the
    engine delivers to the block (`kinds.subflow.ChildClosed`)."""

    block_id: str
    flow: str
    """"name@version", or a bare name: the latest version when the child starts."""
    run_id: str
    input: JSON = None
    task_queue: str = ""
    """Empty: the child flow's own."""
    run_timeout: duration_pb2.Duration | None = None
    """None: the child flow's own."""
    parent_close_policy: blueprint_pb2.ParentClosePolicy.ValueType = (
        blueprint_pb2.PARENT_CLOSE_POLICY_TERMINATE
    )
    entry: str = ""
    """A map's item (`MapBlock.child_runs`): the map's block path, whose block list the child
    runs, of this run's flow version (`flow` is empty then); empty: a subflow's child."""


@dataclass(frozen=True, slots=True)
class CatchFailure:
    """A failed block's catch clauses were judged (once: a `when` reads the run's data): the
    outcome is recorded and acted on. GOTO routes the failure (`BlockView.route`), CONTINUE
    makes the block SUCCEEDED with `output` (the error), NONE and COMPENSATE leave the failure
    standing (COMPENSATE also stops the run from starting blocks, `decide`)."""

    block_id: str
    clause: int
    """Index in `Block.catch`; -1: none matched."""
    action: blueprint_pb2.CatchAction.ValueType
    goto: str = ""
    output: JSON = None


@dataclass(frozen=True, slots=True)
class Compensation:
    """A compensation the run ran before it failed: `by` undid `block_id`, ending `status`."""

    block_id: str
    by: str
    status: common_pb2.BlockStatus.ValueType


@dataclass(frozen=True, slots=True)
class StartMap:
    """A map block starts over these items (recorded, so they are evaluated once); its items'
    scopes open as `RecordScopes` says."""

    block_id: str
    items: tuple[JSON, ...]


@dataclass(frozen=True, slots=True)
class RecordItem:
    """An item of a map that runs its items as child runs ended (its child closed): kept in
    the run's state (`BlockView.outcomes`); the child's close is its event."""

    block_id: str
    index: int
    outcome: ItemOutcome


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
    compensated: tuple[Compensation, ...] = ()
    """The compensations that ran first, in the order they ran."""


Command: TypeAlias = (
    ScheduleExternal
    | CompleteBlock
    | SkipBlock
    | FailBlock
    | StartChild
    | CatchFailure
    | StartTimer
    | CancelTimer
    | AwaitSignal
    | AwaitEvent
    | ConsumeSignal
    | Escalate
    | StartMap
    | StartLoop
    | RecordItem
    | RecordScopes
    | CompleteRun
    | FailRun
)


SETTLING = (ScheduleExternal, StartTimer, AwaitSignal, AwaitEvent, StartChild)
"""Commands that only start a block that then waits (for a worker, a timer, a signal, an
event, a child run). A decision made of these alone, each leaving its block waiting, is
settled: it changes nothing another decision reads (no block ended, no variable, route or
scope changed), so deciding again would give nothing, and the engine stops there."""
