"""Moving a run forward: ask the interpreter what follows, apply it, repeat until it settles.

System blocks complete in-line and may unlock more blocks, so one step loops until `decide`
has nothing new; each command is applied by its applier (`interpreter.appliers`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import overload

from google.protobuf import struct_pb2

from tideflow.api.v1 import common_pb2, failure_pb2
from tideflow.blueprint.language.commands import SETTLING
from tideflow_server.history import blocks, payloads
from tideflow_server.history.closing import close_run, engine_failure
from tideflow_server.history.interpreter import (
    JSON,
    BlockError,
    BlockView,
    Command,
    CompiledBlock,
    CompiledBlueprint,
    ItemOutcome,
    RunView,
    Scopes,
    Signal,
    decide,
    deliver,
    split_path,
)
from tideflow_server.history.interpreter.appliers import Applying, apply
from tideflow_server.history.shard.port import Shard
from tideflow_server.history.state import RunStep
from tideflow_server.internal.v1 import records_pb2
from tideflow_server.namespaces import tighter

MAX_ROUNDS = 10_000
"""A blueprint settles in at most one round per block; more means an interpreter bug."""


def block_error(failure: failure_pb2.Failure) -> BlockError:
    """A recorded failure as blueprint expressions see it (`${blocks.<id>.error}`): the
    block's own, under the BlockFailureInfo that says where it happened."""
    if failure.HasField("block_failure_info") and failure.HasField("cause"):
        failure = failure.cause
    if failure.HasField("application_failure_info"):
        app = failure.application_failure_info
        return BlockError(app.type or "ApplicationError", failure.message, app.non_retryable)
    if failure.HasField("server_failure_info"):
        server = failure.server_failure_info
        return BlockError(
            server.type or "ServerError", failure.message, server.non_retryable, server=True
        )
    if failure.HasField("timeout_failure_info"):
        return BlockError("TimeoutError", failure.message, True)
    if failure.HasField("canceled_failure_info"):
        return BlockError("CanceledError", failure.message, True)
    return BlockError("Error", failure.message)


def run_view(state: records_pb2.MutableState, namespace: str) -> RunView:
    info = state.execution_info
    maps = state.map_blocks
    views = {
        block_id: _view(result, maps.get(block_id) if maps else None)
        for block_id, result in state.block_results.items()
    }
    signals = tuple(
        Signal(s.event_id, s.signal_name, payloads.from_payloads(s.input, "input"))
        for s in state.buffered_signals
    )
    return RunView(
        namespace=namespace,
        run_id=info.run_id,
        execution_id=info.execution_id,
        flow_name=info.flow.name,
        flow_version=info.flow.version,
        input=payloads.from_value(info.input),
        vars={name: payloads.from_value(v) for name, v in info.vars.items()},
        blocks=views,
        task_queue=info.task_queue.name,
        signals=signals,
    )


_NO_SCOPES = Scopes()


def _view(result: records_pb2.BlockResult, recorded: records_pb2.MapBlockState | None) -> BlockView:
    """A block as `decide` reads it. Every decision of a run builds one per block reached, so
    fields most blocks leave unset are read only when set."""
    scopes = result.scopes if result.HasField("scopes") else None
    return BlockView(
        status=result.status,
        output=payloads.from_value(result.output) if result.HasField("output") else None,
        error=block_error(result.failure) if result.HasField("failure") else None,
        attempt=result.attempt,
        route=result.route if result.routed else None,
        caught=result.caught.clause if result.HasField("caught") else None,
        closed=result.close_event_id,
        escalated=tuple(result.escalated) if result.escalated else (),
        items=None if recorded is None else _Recorded(recorded.items.values),
        outcomes={} if recorded is None else _Outcomes(recorded.outcomes),
        scopes=_NO_SCOPES
        if scopes is None
        else Scopes(scopes.opened, scopes.succeeded, scopes.failed),
    )


class _Recorded(Sequence[JSON]):
    """Recorded values, each read as JSON when first asked for: a decision reads a map's
    items (up to `blueprint.max_child_map_items`) only to start the next few."""

    __slots__ = ("_read", "_values")

    def __init__(self, values: Sequence[struct_pb2.Value]) -> None:
        self._values = values
        self._read: dict[int, JSON] = {}

    def __len__(self) -> int:
        return len(self._values)

    @overload
    def __getitem__(self, index: int) -> JSON: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[JSON]: ...
    def __getitem__(self, index: int | slice) -> JSON | Sequence[JSON]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if index not in self._read:
            self._read[index] = payloads.from_value(self._values[index])
        return self._read[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


class _Outcomes(Mapping[int, ItemOutcome]):
    """A child-run map's item outcomes (`BlockView.outcomes`), read when first asked for."""

    __slots__ = ("_recorded",)

    def __init__(self, recorded: Mapping[int, records_pb2.MapItemOutcome]) -> None:
        self._recorded = recorded

    def __len__(self) -> int:
        return len(self._recorded)

    def __iter__(self) -> Iterator[int]:
        return iter(self._recorded)

    def __getitem__(self, index: int) -> ItemOutcome:
        if index not in self._recorded:
            raise KeyError(index)
        outcome = self._recorded[index]
        error = None
        if outcome.failed:
            error = BlockError(
                outcome.error_type, outcome.error_message, True, server=outcome.server
            )
        return ItemOutcome(payloads.from_value(outcome.output), error)


def advance(
    step: RunStep,
    compiled: CompiledBlueprint,
    *,
    namespace: str,
    max_pending_blocks: int,
    max_pending_children: int = 1_000,
    max_event_waits: int = 1_000,
    max_map_items: int = 0,
) -> None:
    """Apply the interpreter's commands until it has none (or the run closed).
    `max_map_items`: the namespace's own bound on a map's items (0: none), under the
    server's `blueprint.max_inline_map_items` and `blueprint.max_child_map_items`."""
    limits = compiled.limits
    tightened = replace(
        limits,
        max_inline_map_items=tighter(max_map_items, limits.max_inline_map_items),
        max_child_map_items=tighter(max_map_items, limits.max_child_map_items),
    )
    if tightened != limits:
        compiled = replace(compiled, limits=tightened)
    context = Applying(
        compiled, max_pending_blocks, max_pending_children, max_event_waits, max_map_items
    )
    for _ in range(MAX_ROUNDS):
        if not step.is_open or step.info.cancel_requested:
            return
        commands = decide(compiled, run_view(step.state, namespace))
        if not commands:
            return
        before = set(step.state.block_results)
        for command in commands:
            if not step.is_open:
                break
            apply(step, command, context)
        _mark_reached(step, compiled, (b for b in step.state.block_results if b not in before))
        if _settled(step, commands):
            return
    close_run(
        step,
        common_pb2.RUN_STATUS_FAILED,
        failure=engine_failure(
            BlockError("InternalError", "blueprint did not settle", True, server=True)
        ),
    )


def _settled(step: RunStep, commands: list[Command]) -> bool:
    """The decision only started blocks that now wait (`SETTLING`): the next would be empty,
    so it is not asked for (one decision fewer for every block a run schedules)."""
    results = step.state.block_results
    for command in commands:
        if not isinstance(command, SETTLING):
            return False
        if results[command.block_id].status != common_pb2.BLOCK_STATUS_RUNNING:
            return False
    return True


def _mark_reached(step: RunStep, compiled: CompiledBlueprint, new: Iterable[str]) -> None:
    """Number the blocks one decision reached, after those reached before, in declaration
    order (they were reached together), and record their kind: a skip has no event, and a
    block that failed before it started has no other record of it. Describing a run lists
    its blocks in this order; `block_results`, a map, keeps none."""
    results = step.state.block_results
    # Blocks in containers' scopes sort by item or iteration, then by declaration.
    reached = sorted(((compiled.block(path), path) for path in new), key=_declared)
    # Results are never removed, and those of this decision are all new.
    for number, (block, path) in enumerate(reached, start=len(results) - len(reached) + 1):
        result = results[path]
        result.kind = block.kind
        result.reached = number
        if block.dormant:  # an on_failure block compensates nothing
            result.compensates = compiled.compensates.get(block.id, "")


def _declared(reached: tuple[CompiledBlock, str]) -> tuple[tuple[int, ...], int]:
    block, path = reached
    scopes, _ = split_path(path)
    return tuple(index for _, index in scopes), block.index


def finish_cancel_if_done(step: RunStep) -> None:
    """A run whose cancellation was requested closes as CANCELED once no block is pending."""
    if step.is_open and step.info.cancel_requested and not step.state.pending_blocks:
        close_run(step, common_pb2.RUN_STATUS_CANCELED)


def undo_direct_start(step: RunStep, pending: records_pb2.PendingBlock) -> None:
    """No worker got the block history started for direct dispatch: it waits for a poll again,
    unless its run is being canceled, when nobody else will cancel it, so it is canceled here
    (and the run closes once nothing else is pending)."""
    blocks.unstart(step, pending)
    if pending.cancel_requested or step.info.cancel_requested:
        blocks.cancel(step, pending)
        finish_cancel_if_done(step)


async def continue_run(shard: Shard, step: RunStep) -> None:
    """After a block closed: finish a requested cancellation, or let the blueprint go on."""
    if not step.is_open:
        return
    if step.info.cancel_requested:
        finish_cancel_if_done(step)
        return
    compiled, namespace, context = await _applying(shard, step)
    _advance(step, compiled, namespace, context)


async def deliver_event(shard: Shard, step: RunStep, block_id: str, event: object) -> bool:
    """`event` (a timer that fired, a signal, a child run's close) reaches the started block
    `block_id`: apply what its kind makes of it, then let the blueprint go on. False when the
    block took nothing from it (it no longer waits, or it ignores the event), and nothing
    changed."""
    result = step.state.block_results.get(block_id)
    if not step.is_open or step.info.cancel_requested or result is None:
        return False
    if result.status != common_pb2.BLOCK_STATUS_RUNNING:
        return False
    compiled, namespace, context = await _applying(shard, step)
    commands = deliver(compiled, run_view(step.state, namespace), block_id, event)
    if not commands:
        return False
    for command in commands:
        if step.is_open:
            apply(step, command, context)
    _advance(step, compiled, namespace, context)
    return True


def _advance(step: RunStep, compiled: CompiledBlueprint, namespace: str, context: Applying) -> None:
    advance(
        step,
        compiled,
        namespace=namespace,
        max_pending_blocks=context.max_pending_blocks,
        max_pending_children=context.max_pending_children,
        max_map_items=context.max_map_items,
        max_event_waits=context.max_event_waits,
    )


async def _applying(shard: Shard, step: RunStep) -> tuple[CompiledBlueprint, str, Applying]:
    """The run's blueprint, its namespace's name, and the limits its commands apply under."""
    info = step.info
    _, compiled = await shard.flows.get(
        info.namespace_id, info.flow.name, info.flow.version, info.parent.entry
    )
    namespace = await shard.namespaces.by_id(info.namespace_id)
    max_pending_blocks = tighter(
        namespace.config.limits.max_pending_blocks, shard.config.max_pending_blocks
    )
    context = Applying(
        compiled,
        max_pending_blocks,
        shard.config.max_pending_children,
        shard.config.max_event_waits,
        namespace.config.limits.max_map_items,
    )
    return compiled, namespace.info.name, context
