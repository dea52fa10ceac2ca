"""What every block kind is made of, and what it may use.

A kind is one module under `kinds/` with four parts, registered in `kinds.KINDS`:
- `check(site)`: the kind's own registration problems, reported with their paths, and the
  block's compiled `Plan` (plain, frozen data);
- `start(plan, block)`: the commands for a block whose prerequisites are done and whose
  guards hold;
- `on_event(plan, block, event)`: the commands when something reaches a block that is waiting
  (a timer fires, a signal or event arrives, a child run closes, an item or iteration ends);
- the example in docs/blueprints.md.

A kind never touches the run's state: it returns commands (`language.commands`), and the
engine applies each with the one applier of its type. So a new kind is a new module and a
registry line, never a branch elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf import struct_pb2

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language.commands import Command
from tideflow.blueprint.language.model import JSON, BlockError, BlockView, Limits, Signal
from tideflow.blueprint.language.templates import Env, Expression, Template


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

    def expression(
        self, source: str, path: str, *, reads: frozenset[str] = frozenset()
    ) -> Expression | None:
        """Compile a CEL expression in this block's scope (plus the variables `reads`, e.g.
        `signal` for a filter over a signal's payload), reporting its problems; None when it
        has one."""

    def condition(
        self, source: str, path: str, *, reads: frozenset[str] = frozenset()
    ) -> Expression | None:
        """`expression`, for one that decides: it must be able to be a bool."""

    @property
    def limits(self) -> Limits:
        """The server's bounds this registration checks against."""

    def nest(
        self,
        blocks: Sequence[blueprint_pb2.Block],
        path: str,
        *,
        reads: frozenset[str],
        output: struct_pb2.Value | None,
        output_path: str,
    ) -> None:
        """Check `blocks` (at `path`) as this container's nested scope, like the blueprint's
        own blocks, where expressions may also read `reads` (a map's `item` and `index`) and
        `blocks.<id>` reads the scope's blocks or the outer ones this block may read. `output`
        is one scope's output template (at `output_path`); None: the output of the scope's
        only sink block. The compiled scope goes to `CompiledBlock.inner`."""

    def goto(self, target: str, path: str) -> None:
        """`target` (at `path`) is where the block may route the run: registration checks it
        is a direct dependent (it needs this block), and decisions skip the targets not
        taken (`BlockView.route`)."""

    def trigger(self, target: str, path: str) -> None:
        """`target` (at `path`) is started by this block while it runs (a signal's
        escalation, `commands.Escalate`), never by readiness: registration checks it does not
        come after this block, and decisions skip it when this block ends without starting
        it."""


class Plan(Protocol):
    """A block's compiled form, one frozen dataclass per kind."""

    @property
    def ends_run(self) -> bool:
        """Once it succeeds the run is over, with its output as the result."""


@dataclass(frozen=True, slots=True)
class BlockContext:
    """What `start` and `on_event` read: the block, and the run as the decision sees it."""

    block_id: str
    env: Env
    """The run's variables (`input`, `vars`, `run`, `blocks`) for templates and CEL."""
    run_output: Template | None = None
    """The blueprint's `output`, for a `succeed` block that sets none."""
    task_queue: str = ""
    """The run's task queue (`RunView.task_queue`): where external blocks that name no queue
    of their own go. Empty: the blueprint's, as compiled into each block's plan."""
    view: BlockView | None = None
    """The block as the run has it; None before it starts."""
    signals: tuple[Signal, ...] = ()
    """Signals the run received that no block has taken, oldest first (`RunView.signals`)."""
    limits: Limits = field(default_factory=Limits)
    """The server's bounds (in-line map items, default map concurrency)."""


class Settled:
    """How one scope of a container (a map's item, a loop's iteration) ended: its output, or
    the error of the block that failed it. The output is rendered when first read (an
    ExpressionError then fails the container)."""

    __slots__ = ("_output", "_render", "error")

    def __init__(
        self,
        output: JSON = None,
        error: BlockError | None = None,
        *,
        render: Callable[[], JSON] | None = None,
    ) -> None:
        self._output = output
        self._render = render
        self.error = error

    @property
    def output(self) -> JSON:
        if self._render is not None:
            self._output, self._render = self._render(), None
        return self._output


@dataclass(frozen=True, slots=True)
class Progress:
    """What reaches a running container's `on_event` on every decision: how each of its open
    scopes that ended did, by index (those still running are absent). The kind answers with
    `RecordScopes` to open more or count those that ended (only when that changes its
    `BlockView.scopes`), or with the block's completion or failure; nothing lets it wait."""

    settled: Mapping[int, Settled]


Check = Callable[[Site], Any]
Bind = Callable[[Any, BlockView, int, Mapping[int, Settled]], Mapping[str, JSON]]
"""(plan, container, index, the scopes settled so far): the variables scope `index` binds."""
Nested = Callable[[blueprint_pb2.Block], Sequence[blueprint_pb2.Block]]
Start = Callable[[Any, BlockContext], Sequence[Command]]
OnEvent = Callable[[Any, BlockContext, Any], Sequence[Command]]
"""(plan, block, event): the event is one of the kind's own event types."""


def by_event_type(
    handlers: Mapping[type, Callable[[Any, BlockContext, Any], Sequence[Command]]],
) -> OnEvent:
    """An `on_event` that hands each event to the handler of its type; an event of another
    type does nothing to the block."""

    def on_event(plan: object, block: BlockContext, event: object) -> Sequence[Command]:
        handler = handlers.get(type(event))
        return () if handler is None else handler(plan, block, event)

    return on_event


def waits_for_nothing(plan: object, block: BlockContext, event: object) -> Sequence[Command]:
    """`on_event` of a kind that finishes when it starts (or whose work the engine tracks,
    like an external block's attempts): nothing reaches it."""
    return ()


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    """As users write it: `switch`, `map`."""
    field: str
    """The `Block.kind` oneof field that holds it: `switch_block`."""
    kind: blueprint_pb2.BlockKind.ValueType
    check: Check
    start: Start
    on_event: OnEvent = waits_for_nothing
    takes_input: bool = False
    """Reads `Block.input`."""
    routes_as: str = "routed to"
    """How a skip reason says where the block routed: "needs s, which chose b"."""
    nested: Nested | None = None
    """A container (map, loop): the block list it nests, which its check hands to
    `Site.nest`."""
    bind: Bind | None = None
    """A container: the variables each of its scopes binds (`item` and `index`, `iteration`).
    `decide` runs a running container's open scopes, each with these, and hands the container
    their `Progress`."""
    in_line: Callable[[Any], bool] = lambda plan: True
    """A container (by its plan): its scopes run in this run's history. False: they run as
    child runs (a map's `child_runs`), whose closes reach `on_event`, and `decide` leaves
    the container alone otherwise."""
