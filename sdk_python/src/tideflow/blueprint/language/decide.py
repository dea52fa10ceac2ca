"""`decide`: from the state of a run, the commands that follow.

Pure and deterministic (invariant 4): the same compiled blueprint and view give equal
commands, in topological order with ties broken by declaration order. Each call looks at the
blocks not reached yet, in that order, and starts (or skips) those whose prerequisites are
done; it does not cascade, because the engine applies the commands and calls again.

A block is *ready* when every block it `needs` and every block its `depends` reads is done
(SUCCEEDED, FAILED, SKIPPED or CANCELED). Then, in order:

1. without `depends`: a need that routed the run elsewhere (`BlockView.route`: a switch's
   other case, a handled failure's other dependents) skips the block; a need that FAILED or
   was CANCELED skips it, and so does a need that was skipped for that reason, so a failure
   skips everything downstream of it. A need skipped by its `when` or by a route counts as
   satisfied, and a failure that routed counts as handled;
2. with `depends`: it replaces that rule; false skips the block;
3. `when` false skips the block;
4. the block's kind starts it (`kinds.<kind>.start`): an external block is scheduled, a
   `set` or `transform` block completes in-line, a `fail` block fails.

Something that reaches a block already started (a timer, a signal, a child run's close) goes
to its kind's `on_event` through `deliver`.

Containers (map, loop) nest a block list, run once per *scope* (an item, an iteration) whose
blocks are addressed `<container id>[<index>].<id>`. A scope is decided like the blueprint:
the same rules over its own blocks, with the variables its container binds (`Kind.bind`) and
`blocks.<id>` reading its own blocks over the outer ones. On every decision, each running
container's open scopes (`BlockView.scopes.opened`) are decided, and the container's kind gets
their `Progress` (which ended, how) through `on_event`: it opens more (`RecordScopes`), or
completes or fails the block, which stops deciding its scopes (blocks still running in them
are left to finish; nothing new starts there). A scope ends as a run does: when nothing in it
runs and nothing is left to start, failed by its first failed block, or with its output; a
`succeed` block ends its scope.

A failed block's `catch` is judged once, on the decision after it failed (`CatchFailure`);
a failure that stands when nothing is left to do unwinds the run: the `on_failure` block,
then the compensations of the blocks that succeeded, last completed first, one decision at a
time, and then the run fails (`_finish`). Catch and unwinding apply to the blueprint's own
blocks; inside a container's scope a failure fails the scope.

An expression that fails fails its block (`ExpressionError`, an engine-side error: a
ServerFailureInfo, never retried). A failed block does not fail the run at once: the run ends
when nothing runs and nothing is left to start, failed by the first failed block in
topological order, or completed with the rendered `output`. A `succeed` block ends the run as
soon as it completes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tideflow.blueprint.language import catch as _catch
from tideflow.blueprint.language.commands import (
    Command,
    Compensation,
    CompleteBlock,
    CompleteRun,
    ConsumeSignal,
    FailBlock,
    FailRun,
    SkipBlock,
)
from tideflow.blueprint.language.compiled import (
    CompiledBlock,
    CompiledBlueprint,
    CompiledScope,
    split_path,
)
from tideflow.blueprint.language.kinds import BlockContext
from tideflow.blueprint.language.kinds.base import Progress, Settled
from tideflow.blueprint.language.model import (
    CANCELED,
    FAILED,
    JSON,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    TERMINAL,
    BlockError,
    BlockView,
    RunView,
    Signal,
)
from tideflow.blueprint.language.templates import Env, ExpressionError, run_variables
from tideflow.blueprint.language.validate import schema_violations

EXPRESSION_ERROR = "ExpressionError"
OUTPUT_SCHEMA_VIOLATION = "OutputSchemaViolation"
BLOCK_FAILED = "BlockFailed"
BLOCK_CANCELED = "BlockCanceled"


Scope = CompiledBlueprint | CompiledScope
"""A block list decided as one: the blueprint's, or one scope of a container."""


@dataclass
class _Tree:
    """The views of one scope: its own blocks by id, and its containers' scopes by index."""

    own: dict[str, BlockView] = field(default_factory=dict)
    scopes: dict[str, dict[int, _Tree]] = field(default_factory=dict)
    busy: bool = False
    """A block in it, or in a scope under it, is not done."""


def _tree(views: Mapping[str, BlockView]) -> _Tree:
    root = _Tree()
    for path, view in views.items():
        node = root
        busy = view.status not in TERMINAL
        node.busy |= busy
        block_id = path
        if "[" in path:
            containers, block_id = split_path(path)
            for container, index in containers:
                node = node.scopes.setdefault(container, {}).setdefault(index, _Tree())
                node.busy |= busy
        node.own[block_id] = view
    return root


@dataclass
class _Decision:
    """What every scope of one decision shares; `signals` are those no block took yet, as
    the blocks started so far in this decision leave them."""

    compiled: CompiledBlueprint
    run: RunView
    signals: tuple[Signal, ...] = ()

    @property
    def task_queue(self) -> str:
        return self.run.task_queue


def decide(compiled: CompiledBlueprint, run: RunView) -> list[Command]:
    """The commands that follow from `run`; empty while the run waits on running blocks."""
    decision = _Decision(compiled, run, run.signals)
    step = _decide_scope(decision, compiled, _tree(run.blocks), compiled.env(run), "")
    return step if isinstance(step, list) else [step]


def _decide_scope(
    decision: _Decision, scope: Scope, tree: _Tree, env: Env, prefix: str
) -> list[Command] | CompleteRun | FailRun:
    """The commands of one scope (`prefix` addresses its blocks), or, when it has ended, its
    result: the run's, or one item's or iteration's."""
    views = tree.own
    ended = _ended(scope, views)
    if ended is not None:
        return ended
    top = not prefix
    if top and (caught := _judge_failures(decision.compiled, decision.run)):
        return caught
    causes: dict[str, str | None] = {}
    commands: list[Command] = []
    stopping = top and _stopping(decision.compiled, views)
    for block in scope.order:
        view = views.get(block.id)
        if view is not None:
            # A running container goes on while the run unwinds too: it must end first.
            running = block.inner is not None and view.status == RUNNING
            if running and block.spec.in_line(block.plan):
                scopes = tree.scopes.get(block.id, {})
                commands += _container(decision, block, view, scopes=scopes, env=env, prefix=prefix)
            continue
        if block.dormant or stopping:
            continue
        if block.triggered_by and (held := _on_demand(block, views, prefix)) is not None:
            commands += held
            continue
        if not _ready(block, views):
            continue
        context = BlockContext(
            prefix + block.id,
            env,
            scope.result if isinstance(scope, CompiledScope) else scope.output,
            decision.task_queue,
            signals=decision.signals,
            limits=decision.compiled.limits,
        )
        step = _step(scope, block, views, context, causes)
        decision.signals = _untaken(decision.signals, step)
        if top and block.plan.ends_run and (done := _completion(step, block.id)) is not None:
            # The run ends here: what the other ready blocks would do no longer matters.
            return [*step, _result(scope, done.output, block.id)]
        commands += step
    if commands or tree.busy:
        return commands
    if top:
        return _finish_run(decision.compiled, decision.run, env)
    return _finish(scope, views, env)


def _container(
    decision: _Decision,
    block: CompiledBlock,
    view: BlockView,
    *,
    scopes: Mapping[int, _Tree],
    env: Env,
    prefix: str,
) -> list[Command]:
    """A running container: decide its open scopes, then let its kind answer their
    progress."""
    inner, bind = block.inner, block.spec.bind
    assert inner is not None and bind is not None
    path = prefix + block.id
    settled: dict[int, Settled] = {}
    commands: list[Command] = []
    context = BlockContext(
        path, env, None, decision.task_queue, view, limits=decision.compiled.limits
    )
    try:
        for index in range(view.scopes.opened):
            tree = scopes.get(index) or _Tree()
            scope_env = env.nested(tree.own, bind(block.plan, view, index, settled))
            step = _decide_scope(decision, inner, tree, scope_env, f"{path}[{index}].")
            if isinstance(step, list):
                commands += step
            else:
                settled[index] = _settled(inner, tree, scope_env, step)
        own = list(block.spec.on_event(block.plan, context, Progress(settled)))
    except ExpressionError as e:
        own = [FailBlock(path, _engine_error(EXPRESSION_ERROR, str(e)))]
    if any(isinstance(c, CompleteBlock | FailBlock) and c.block_id == path for c in own):
        return own  # the container ends: its scopes are not decided any further
    return [*commands, *own]


def _settled(scope: CompiledScope, tree: _Tree, env: Env, ended: CompleteRun | FailRun) -> Settled:
    if isinstance(ended, FailRun):
        return Settled(error=ended.error)
    result = scope.result
    if result is None or _ended(scope, tree.own) is not None:
        return Settled(ended.output)  # a `succeed` block's output, or none
    return Settled(render=lambda: result.render(env))


def deliver(
    compiled: CompiledBlueprint, run: RunView, block_id: str, event: object
) -> list[Command]:
    """The commands when `event` reaches the started block `block_id` (its kind's
    `on_event`); an expression that fails there fails the block. The engine applies them and
    then asks `decide` for what follows. A block in a container's scope sees the scope's own
    blocks and the variables its container binds (without the earlier scopes' outcomes: a
    loop's `iteration.previous` reads null there)."""
    block = compiled.block(block_id)
    env = _env_at(compiled, run, block_id)
    context = BlockContext(
        block_id,
        env,
        compiled.output,
        run.task_queue,
        run.blocks.get(block_id),
        signals=run.signals,
        limits=compiled.limits,
    )
    try:
        return list(block.spec.on_event(block.plan, context, event))
    except ExpressionError as e:
        return [FailBlock(block_id, _engine_error(EXPRESSION_ERROR, str(e)))]


def _env_at(compiled: CompiledBlueprint, run: RunView, path: str) -> Env:
    env = compiled.env(run)
    containers, _ = split_path(path)
    tree = _tree(run.blocks)
    blocks: Mapping[str, CompiledBlock] = compiled.blocks
    prefix = ""
    for container, index in containers:
        block, view = blocks[container], run.blocks[prefix + container]
        assert block.inner is not None and block.spec.bind is not None
        tree = tree.scopes.get(container, {}).get(index) or _Tree()
        env = env.nested(tree.own, block.spec.bind(block.plan, view, index, {}))
        blocks, prefix = block.inner.blocks, f"{prefix}{container}[{index}]."
    return env


def _on_demand(
    block: CompiledBlock, views: Mapping[str, BlockView], prefix: str
) -> list[Command] | None:
    """A block only an escalation starts (`CompiledBlock.triggered_by`): None once one of its
    triggers started it (then it is ready as any block is); nothing while they may still do;
    skipped when they all ended without starting it."""
    triggers = [views.get(trigger) for trigger in block.triggered_by]
    if any(view is not None and block.id in view.escalated for view in triggers):
        return None
    if all(view is not None and view.status in TERMINAL for view in triggers):
        ended = ", ".join(block.triggered_by)
        reason = f"not escalated to: {ended} ended before its escalation"
        return [SkipBlock(prefix + block.id, reason)]
    return []


def _untaken(signals: tuple[Signal, ...], step: Sequence[Command]) -> tuple[Signal, ...]:
    """The signals left for the blocks after one that started and took one, if it did."""
    taken = {c.event_id for c in step if isinstance(c, ConsumeSignal)}
    return tuple(s for s in signals if s.event_id not in taken) if taken else signals


def _completion(step: Sequence[Command], block_id: str) -> CompleteBlock | None:
    for command in step:
        if isinstance(command, CompleteBlock) and command.block_id == block_id:
            return command
    return None


def initial_vars(
    compiled: CompiledBlueprint, run_input: JSON, *, run: RunView | None = None
) -> dict[str, JSON]:
    """The run variables a run starts with (see `CompiledBlueprint.initial_vars`)."""
    return compiled.initial_vars(run_input, run=run)


def _ended(compiled: Scope, views: Mapping[str, BlockView]) -> CompleteRun | FailRun | None:
    """The run's result, if a block that ends the run (`succeed`) has completed."""
    for block in compiled.order:
        view = views.get(block.id)
        if block.plan.ends_run and view is not None and view.status == SUCCEEDED:
            return _result(compiled, view.output, block.id)
    return None


def _step(
    compiled: Scope,
    block: CompiledBlock,
    views: Mapping[str, BlockView],
    context: BlockContext,
    causes: dict[str, str | None],
) -> Sequence[Command]:
    """What to do with a ready block not reached yet (`_ready`)."""
    try:
        if block.depends is None:
            for need in block.needs:
                routed = _routed_away(compiled, need, views[need], block.id)
                if routed is not None:
                    return [SkipBlock(context.block_id, routed)]
                cause = _failure_cause(compiled, need, views, causes)
                if cause == need:
                    word = "canceled" if views[need].status == CANCELED else "failed"
                    return [SkipBlock(context.block_id, f"needs {need}, which {word}")]
                if cause is not None:
                    return [
                        SkipBlock(context.block_id, f"needs {need}, skipped because {cause} failed")
                    ]
        elif not block.depends.evaluate_bool(context.env):
            return [SkipBlock(context.block_id, f"depends is false: {block.depends.source}")]
        if block.when is not None and not block.when.evaluate_bool(context.env):
            return [SkipBlock(context.block_id, f"when is false: {block.when.source}")]
        return block.spec.start(block.plan, context)
    except ExpressionError as e:
        return [FailBlock(context.block_id, _engine_error(EXPRESSION_ERROR, str(e)))]


def _ready(block: CompiledBlock, views: Mapping[str, BlockView]) -> bool:
    """Every block it needs and every block its `depends` reads is done."""
    for prerequisite in block.prerequisites:
        view = views.get(prerequisite)
        if view is None or view.status not in TERMINAL:
            return False
    return True


def _routed_away(compiled: Scope, need: str, view: BlockView, block_id: str) -> str | None:
    """Why `block_id` is skipped because its need `need` routed the run elsewhere: `need` is
    a target not taken, or a failure that routed (every dependent but its route is skipped).
    A route target (a catch's goto, a signal's or event's on_timeout) runs only when the need
    routes to it: a need that succeeded without routing skips it. None when the need did not
    route, or routed here."""
    if view.route is None:
        # A failure that stands skips it as any failure does (`_failure_cause`).
        block = compiled.blocks[need]
        if view.status == SUCCEEDED and (block_id in block.handlers or block_id in block.targets):
            return f"needs {need}, which did not route to it"
        return None
    if view.route == block_id:
        return None
    if view.status == SUCCEEDED and block_id not in compiled.blocks[need].targets:
        return None  # not one of its routes: an ordinary dependent
    verb = compiled.blocks[need].spec.routes_as
    where = view.route or "none of its targets"
    return f"needs {need}, which {verb} {where}"


def _failure_cause(
    compiled: Scope,
    block_id: str,
    views: Mapping[str, BlockView],
    causes: dict[str, str | None],
) -> str | None:
    """The failed (or canceled) block that `block_id` stands for, if any: itself, or, when
    it was skipped for a failed need, that need's cause. Read from the statuses again on every
    decision, since a view does not keep skip reasons."""
    if block_id in causes:
        return causes[block_id]
    cause: str | None = None
    view = views.get(block_id)
    block = compiled.blocks.get(block_id)
    if view is not None and view.status in (FAILED, CANCELED):
        cause = None if view.route is not None else block_id  # a routed failure is handled
    elif (
        view is not None and view.status == SKIPPED and block is not None and block.depends is None
    ):
        # Only the needs rule skips for a failure; a block with `depends` decided for itself.
        for need in block.needs:
            cause = _failure_cause(compiled, need, views, causes)
            if cause is not None:
                break
    causes[block_id] = cause
    return cause


def _judge_failures(compiled: CompiledBlueprint, run: RunView) -> list[Command]:
    """Judge the catch of each block that failed since the last decision, once: its outcome
    is recorded (`CatchFailure`), and the next decision acts on it."""
    commands: list[Command] = []
    for block in compiled.catching:
        view = run.blocks.get(block.id)
        if view is None or view.status != FAILED or view.caught is not None:
            continue
        if view.route is not None or view.error is None:
            continue  # routed when it failed (a kind's own route): nothing left to catch
        commands.append(
            _catch.judge(block.id, block.catches, view.error, _catch_env(run, view.error))
        )
    return commands


def _catch_env(run: RunView, error: BlockError) -> Env:
    """The run's variables and `error`, as `${blocks.<id>.error}` shows it."""
    value = {"type": error.type, "message": error.message}
    return Env(lambda: {**run_variables(run), _catch.ERROR_VARIABLE: value})


def _stopping(compiled: CompiledBlueprint, views: Mapping[str, BlockView]) -> bool:
    """A catch said `compensate`: the run starts nothing new and unwinds once the running
    blocks are done."""
    for block in compiled.catching:
        view = views.get(block.id)
        caught = None if view is None else view.caught
        if caught is not None and caught >= 0 and block.catches[caught].action == _catch.COMPENSATE:
            return True
    return False


def _finish_run(compiled: CompiledBlueprint, run: RunView, env: Env) -> list[Command]:
    """Nothing runs and nothing is left to start: the run completes, or, when a failure that
    nothing handled stands, it unwinds (the on_failure block, then the compensations, one
    decision at a time) and then fails."""
    views = run.blocks
    for block in compiled.order:
        view = views.get(block.id)
        if block.dormant or view is None or view.status not in (FAILED, CANCELED):
            continue
        if view.route is not None:
            continue
        unwinding = _unwind(compiled, run, env)
        if unwinding:
            return unwinding
        error = view.error
        if error is None:
            failed = view.status == FAILED
            error = BlockError(
                BLOCK_FAILED if failed else BLOCK_CANCELED,
                f"block {block.id} {'failed' if failed else 'was canceled'}",
            )
        return [FailRun(error=error, block_id=block.id, compensated=_compensated(compiled, views))]
    try:
        output = None if compiled.output is None else compiled.output.render(env)
    except ExpressionError as e:
        return [FailRun(_engine_error(EXPRESSION_ERROR, str(e)))]
    return [_result(compiled, output, "")]


def _finish(compiled: Scope, views: Mapping[str, BlockView], env: Env) -> CompleteRun | FailRun:
    """A container's scope ended: its first failed block's error, or its output."""
    for block in compiled.order:
        view = views.get(block.id)
        if view is None or view.status not in (FAILED, CANCELED) or view.route is not None:
            continue
        error = view.error
        if error is None:
            failed = view.status == FAILED
            error = BlockError(
                BLOCK_FAILED if failed else BLOCK_CANCELED,
                f"block {block.id} {'failed' if failed else 'was canceled'}",
            )
        return FailRun(error=error, block_id=block.id)
    try:
        output = None if compiled.output is None else compiled.output.render(env)
    except ExpressionError as e:
        return FailRun(_engine_error(EXPRESSION_ERROR, str(e)))
    return _result(compiled, output, "")


def _compensations(
    compiled: CompiledBlueprint, views: Mapping[str, BlockView]
) -> list[tuple[str, str]]:
    """(block, its compensation) for each block that succeeded and names one, the last to
    complete first. A block that continued past a caught failure did not succeed."""
    done = [
        (view.closed, block.id, block.compensate)
        for block in compiled.order
        if block.compensate
        and (view := views.get(block.id)) is not None
        and view.status == SUCCEEDED
        and view.caught is None
    ]
    return [(block_id, by) for _, block_id, by in sorted(done, reverse=True)]


def _unwind(compiled: CompiledBlueprint, run: RunView, env: Env) -> list[Command]:
    """Start the next block of the unwinding not started yet (the on_failure block first,
    then each compensation); empty when every one has run. One at a time: a decision while
    one runs waits for it."""
    due = [compiled.on_failure] if compiled.on_failure else []
    due += [by for _, by in _compensations(compiled, run.blocks)]
    for block_id in due:
        if block_id in run.blocks:
            continue
        block = compiled.blocks[block_id]
        context = BlockContext(
            block_id,
            env,
            compiled.output,
            run.task_queue,
            signals=run.signals,
            limits=compiled.limits,
        )
        try:
            return list(block.spec.start(block.plan, context))
        except ExpressionError as e:
            return [FailBlock(block_id, _engine_error(EXPRESSION_ERROR, str(e)))]
    return []


def _compensated(
    compiled: CompiledBlueprint, views: Mapping[str, BlockView]
) -> tuple[Compensation, ...]:
    return tuple(
        Compensation(block_id, by, views[by].status)
        for block_id, by in _compensations(compiled, views)
        if by in views
    )


def _engine_error(error_type: str, message: str) -> BlockError:
    """What only fails at run time is the engine's error, not the application's: never
    retried, and recorded as a ServerFailureInfo."""
    return BlockError(error_type, message, non_retryable=True, server=True)


def _result(compiled: Scope, output: JSON, block_id: str) -> CompleteRun | FailRun:
    violations = schema_violations(compiled.output_validator, output, "output")
    if violations:
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        error = _engine_error(OUTPUT_SCHEMA_VIOLATION, message)
        return FailRun(error=error, block_id=block_id)
    return CompleteRun(output)
