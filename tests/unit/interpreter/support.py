"""Blueprint builders and a small engine that applies `decide`'s commands, as history does."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from google.protobuf import json_format

from tideflow.api.v1 import blueprint_pb2, common_pb2
from tideflow.blueprint.language.commands import SETTLING
from tideflow_server.history.interpreter import (
    JSON,
    AwaitEvent,
    AwaitSignal,
    BlockError,
    BlockView,
    CancelTimer,
    CatchFailure,
    Command,
    CompiledBlueprint,
    CompleteBlock,
    CompleteRun,
    ConsumeSignal,
    Escalate,
    EventReceived,
    FailBlock,
    FailRun,
    RecordItem,
    RecordScopes,
    RunView,
    ScheduleExternal,
    Scopes,
    Signal,
    SignalReceived,
    SkipBlock,
    StartChild,
    StartLoop,
    StartMap,
    StartTimer,
    TimerFired,
    compile_blueprint,
    decide,
    deliver,
    initial_vars,
)

RUNNING = common_pb2.BLOCK_STATUS_RUNNING
SUCCEEDED = common_pb2.BLOCK_STATUS_SUCCEEDED
FAILED = common_pb2.BLOCK_STATUS_FAILED
SKIPPED = common_pb2.BLOCK_STATUS_SKIPPED
CANCELED = common_pb2.BLOCK_STATUS_CANCELED
TERMINAL = {SUCCEEDED, FAILED, SKIPPED, CANCELED}
MAX_ROUNDS = 10_000


def blueprint(*blocks: Mapping[str, Any], **fields: Any) -> blueprint_pb2.Blueprint:
    """A blueprint from its JSON form, with a name, version, task queue and timeout unless
    `fields` say otherwise."""
    data: dict[str, Any] = {
        "name": "docs",
        "version": 1,
        "taskQueue": "cpu",
        "timeouts": {"startToClose": "60s"},
        **fields,
        "blocks": list(blocks),
    }
    return json_format.ParseDict(data, blueprint_pb2.Blueprint())


def external(block_id: str, *needs: str, **fields: Any) -> dict[str, Any]:
    return {"id": block_id, "needs": list(needs), "external": {"block": "work@1"}, **fields}


def compile_(*blocks: Mapping[str, Any], **fields: Any) -> CompiledBlueprint:
    return compile_blueprint(blueprint(*blocks, **fields))


def view(
    blocks: Mapping[str, BlockView] | None = None,
    *,
    input: JSON = None,
    vars: Mapping[str, JSON] | None = None,
    task_queue: str = "",
    signals: tuple[Signal, ...] = (),
) -> RunView:
    return RunView(
        namespace="default",
        run_id="order-7",
        execution_id="e-1",
        flow_name="docs",
        flow_version=1,
        input=input,
        vars=dict(vars or {}),
        blocks=dict(blocks or {}),
        task_queue=task_queue,
        signals=signals,
    )


def done(output: JSON = None) -> BlockView:
    return BlockView(SUCCEEDED, output=output, attempt=1)


def failed(type_: str = "Boom", message: str = "it broke") -> BlockView:
    return BlockView(FAILED, error=BlockError(type_, message), attempt=3)


@dataclass
class Engine:
    """Applies commands the way the history service does, and checks `decide`'s promises on
    every call: nothing for a block already reached, one command per block, same answer twice."""

    compiled: CompiledBlueprint
    input: JSON = None
    blocks: dict[str, BlockView] = field(default_factory=dict)
    vars: dict[str, JSON] = field(default_factory=dict)
    result: CompleteRun | FailRun | None = None
    log: list[Command] = field(default_factory=list)
    closes: int = 0
    """Blocks closed so far: the next one's `BlockView.closed` is one more."""
    timers: dict[str, str] = field(default_factory=dict)
    """Open timers: timer id -> block id."""
    signals: list[Signal] = field(default_factory=list)
    """Received and not taken, oldest first."""
    awaiting: dict[str, str] = field(default_factory=dict)
    """Blocks waiting for a signal: block id -> signal name, in the order they started."""
    children: dict[str, str] = field(default_factory=dict)
    """Open child runs: block id -> the child's run id."""
    awaiting_events: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Event blocks that wait: block id -> (event type, correlation key)."""
    items: dict[str, StartChild] = field(default_factory=dict)
    """Map items started as child runs, by their (relative) run id."""
    next_event_id: int = 1

    def __post_init__(self) -> None:
        self.vars = initial_vars(self.compiled, self.input)

    def view(self) -> RunView:
        return view(self.blocks, input=self.input, vars=self.vars, signals=tuple(self.signals))

    def decide(self) -> list[Command]:
        current = self.view()
        commands = decide(self.compiled, current)
        assert decide(self.compiled, current) == commands, "decide is not deterministic"
        # A container's progress may come with its end (the final counts).
        ids = [_block_id(c) for c in commands if _block_id(c) and not isinstance(c, RecordScopes)]
        grouped = [b for i, b in enumerate(ids) if i == 0 or ids[i - 1] != b]
        assert len(grouped) == len(set(grouped)), f"a block's commands apart: {commands}"
        progress = [c.block_id for c in commands if isinstance(c, RecordScopes)]
        assert len(progress) == len(set(progress)), f"two progress records: {commands}"
        # A running container (map, loop) is the one block reached that decide answers for,
        # and a failed block's catch is judged after it was reached.
        containers = {
            b
            for b, v in self.blocks.items()
            if v.status == RUNNING and self.compiled.block(b).inner is not None
        }
        reached = set(self.blocks) - containers
        starts = {
            i
            for c in commands
            if (i := _block_id(c)) and not isinstance(c, CatchFailure | RecordScopes)
        }
        assert not starts & reached, f"a command for a block already reached: {commands}"
        for command in commands:
            if isinstance(command, CatchFailure):
                caught = self.blocks[command.block_id]
                assert caught.status == FAILED and caught.caught is None, "caught twice"
        return commands

    def step(self) -> list[Command]:
        """One decision, applied."""
        assert self.result is None, "the run is closed"
        commands = self.decide()
        for command in commands:
            self.apply(command)
        self.log.extend(commands)
        return commands

    def settle(self) -> list[Command]:
        """Decide and apply until decide has nothing more (or the run closed)."""
        applied: list[Command] = []
        for _ in range(MAX_ROUNDS):
            if self.result is not None:
                return applied
            commands = self.step()
            if not commands:
                return applied
            applied.extend(commands)
            if self.result is None and all(
                isinstance(c, SETTLING) and self.blocks[c.block_id].status == RUNNING
                for c in commands
            ):
                # History stops after such a decision (progress._settled): nothing follows.
                assert self.decide() == [], f"a settling decision was not settled: {commands}"
        raise AssertionError("the run did not settle")

    def apply(self, command: Command) -> None:
        if isinstance(command, CompleteBlock | FailBlock):
            self._end(command)
        elif isinstance(command, SkipBlock):
            self.blocks[command.block_id] = BlockView(SKIPPED)
        elif isinstance(command, CatchFailure):
            self.catch(command)
        elif isinstance(command, CompleteRun | FailRun):
            self.result = command
            for block_id, block in self.blocks.items():
                if block.status == RUNNING:
                    self.blocks[block_id] = BlockView(CANCELED)
        else:
            self._start_or_wait(command)

    def _end(self, command: CompleteBlock | FailBlock) -> None:
        ended = BlockView(
            SUCCEEDED if isinstance(command, CompleteBlock) else FAILED,
            route=command.route,
            escalated=self._escalated(command.block_id),
            closed=self._close(),
            scopes=self._scopes(command),
        )
        if isinstance(command, CompleteBlock):
            ended = replace(ended, output=command.output)
            self.vars.update(command.vars)
        else:
            ended = replace(ended, error=command.error)
        self.blocks[command.block_id] = ended
        self.awaiting.pop(command.block_id, None)
        self.children.pop(command.block_id, None)
        self.awaiting_events.pop(command.block_id, None)

    def _start_or_wait(self, command: Command) -> None:
        if isinstance(command, ScheduleExternal):
            self.blocks[command.block_id] = BlockView(RUNNING, attempt=1)
        elif isinstance(command, StartChild):
            self._child(command)
        elif isinstance(command, RecordItem):
            self._item(command)
        elif isinstance(command, StartMap):
            self.blocks[command.block_id] = BlockView(RUNNING, items=command.items)
        elif isinstance(command, StartLoop):
            self.blocks[command.block_id] = BlockView(RUNNING)
        elif isinstance(command, RecordScopes):
            view = self.blocks[command.block_id]
            assert view.status == RUNNING, f"progress of a block that is not running: {command}"
            self.blocks[command.block_id] = replace(view, scopes=command.scopes)
        elif isinstance(command, StartTimer):
            self._wait(command.block_id)
            self.timers[command.timer_id] = command.block_id
        elif isinstance(command, CancelTimer):
            assert self.timers.pop(command.timer_id) == command.block_id, "no such timer"
        elif isinstance(command, AwaitSignal):
            self._wait(command.block_id)
            self.awaiting[command.block_id] = command.name
        elif isinstance(command, AwaitEvent):
            self._wait(command.block_id)
            self.awaiting_events[command.block_id] = (command.event_type, command.correlation_key)
        elif isinstance(command, ConsumeSignal):
            taken = [s for s in self.signals if s.event_id == command.event_id]
            assert taken, f"no signal {command.event_id} to take"
            self.signals.remove(taken[0])
        elif isinstance(command, Escalate):
            block = self.blocks[command.block_id]
            assert block.status == RUNNING
            self.blocks[command.block_id] = replace(
                block, escalated=(*block.escalated, command.target)
            )
        else:
            raise AssertionError(f"no rule for {command}")

    def _child(self, command: StartChild) -> None:
        if command.entry:
            # A map's item as a child run: the map runs on; the child is the item's.
            assert self.blocks[command.block_id].status == RUNNING
            self.items[command.run_id] = command
            return
        self.blocks[command.block_id] = BlockView(RUNNING)
        self.children[command.block_id] = command.run_id

    def _item(self, command: RecordItem) -> None:
        view = self.blocks[command.block_id]
        assert command.index not in view.outcomes, f"item recorded twice: {command}"
        outcomes = {**view.outcomes, command.index: command.outcome}
        self.blocks[command.block_id] = replace(view, outcomes=outcomes)

    def catch(self, command: CatchFailure) -> None:
        """As history's applier: the outcome is kept, a goto routes, a continue succeeds."""
        caught = replace(self.blocks[command.block_id], caught=command.clause)
        if command.goto:
            caught = replace(caught, route=command.goto)
        elif command.action == blueprint_pb2.CATCH_ACTION_CONTINUE:
            caught = replace(caught, status=SUCCEEDED, output=command.output)
        self.blocks[command.block_id] = caught

    def _close(self) -> int:
        self.closes += 1
        return self.closes

    def _escalated(self, block_id: str) -> tuple[str, ...]:
        block = self.blocks.get(block_id)
        return () if block is None else block.escalated

    def _wait(self, block_id: str) -> None:
        if block_id not in self.blocks:
            self.blocks[block_id] = BlockView(RUNNING)
        assert self.blocks[block_id].status == RUNNING

    def _event_id(self) -> int:
        self.next_event_id += 1
        return self.next_event_id - 1

    def deliver(self, block_id: str, event: object) -> list[Command]:
        """`event` reaches the block (as history's deliver_event does), applied; then settle."""
        commands = deliver(self.compiled, self.view(), block_id, event)
        for command in commands:
            self.apply(command)
        self.log.extend(commands)
        return commands + self.settle() if commands else []

    def fire(self, timer_id: str) -> list[Command]:
        """The timer fires (as history's timer executor does)."""
        block_id = self.timers.pop(timer_id)
        return self.deliver(block_id, TimerFired(timer_id, self._event_id()))

    def signal(self, name: str, input: JSON = None) -> list[Command]:
        """A signal arrives: kept, then offered to the blocks waiting for its name in order."""
        kept = Signal(self._event_id(), name, input)
        self.signals.append(kept)
        for block_id, waits_for in list(self.awaiting.items()):
            if waits_for == name:
                taken = self.deliver(block_id, SignalReceived(kept.event_id, name, input))
                if taken:
                    return taken
        return []

    def _scopes(self, command: CompleteBlock | FailBlock) -> Scopes:
        """A container keeps its counts when it ends, as history keeps them."""
        before = self.blocks.get(command.block_id)
        return Scopes() if before is None else before.scopes

    def publish(self, event: EventReceived) -> list[Command]:
        """A published event reaches the blocks waiting for its type and key (as history's
        DeliverEvent does), until one takes it."""
        for block_id, waits_for in list(self.awaiting_events.items()):
            if waits_for == (event.event_type, event.correlation_key):
                taken = self.deliver(block_id, replace(event, event_id=self._event_id()))
                if taken:
                    return taken
        return []

    def complete(self, block_id: str, output: JSON = None) -> None:
        assert self.blocks[block_id].status == RUNNING
        self.blocks[block_id] = BlockView(SUCCEEDED, output=output, attempt=1, closed=self._close())

    def fail(self, block_id: str, error: BlockError | None = None) -> None:
        assert self.blocks[block_id].status == RUNNING
        self.blocks[block_id] = BlockView(
            FAILED,
            error=error or BlockError("Boom", f"{block_id} broke"),
            attempt=1,
            closed=self._close(),
        )

    def running(self) -> list[str]:
        return [b for b, v in self.blocks.items() if v.status == RUNNING]


def _block_id(command: Command) -> str:
    if isinstance(command, CompleteRun | FailRun):
        return ""
    return command.block_id


def scheduled(commands: list[Command]) -> list[str]:
    return [c.block_id for c in commands if isinstance(c, ScheduleExternal)]
