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

An expression that fails fails its block (`ExpressionError`, an engine-side error: a
ServerFailureInfo, never retried). A failed block does not fail the run at once: the run ends
when nothing runs and nothing is left to start, failed by the first failed block in
topological order, or completed with the rendered `output`. A `succeed` block ends the run as
soon as it completes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tideflow.blueprint.language.commands import (
    Command,
    CompleteBlock,
    CompleteRun,
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
)
from tideflow.blueprint.language.templates import Env, ExpressionError
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


@dataclass(frozen=True, slots=True)
class _Decision:
    """What every scope of one decision shares."""

    compiled: CompiledBlueprint
    task_queue: str


def decide(compiled: CompiledBlueprint, run: RunView) -> list[Command]:
    """The commands that follow from `run`; empty while the run waits on running blocks."""
    decision = _Decision(compiled, run.task_queue)
    step = _decide_scope(decision, compiled, _tree(run.blocks), Env.for_run(run), "")
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
    causes: dict[str, str | None] = {}
    commands: list[Command] = []
    for block in scope.order:
        view = views.get(block.id)
        if view is not None:
            if block.inner is not None and view.status == RUNNING:
                scopes = tree.scopes.get(block.id, {})
                commands += _container(decision, block, view, scopes=scopes, env=env, prefix=prefix)
            continue
        context = BlockContext(
            prefix + block.id,
            env,
            scope.result if isinstance(scope, CompiledScope) else scope.output,
            decision.task_queue,
            limits=decision.compiled.limits,
        )
        step = _step(scope, block, views, context, causes)
        if not prefix and block.plan.ends_run and (done := _completion(step, block.id)) is not None:
            # The run ends here: what the other ready blocks would do no longer matters.
            return [*step, _result(scope, done.output, block.id)]
        commands += step
    if commands or tree.busy:
        return commands
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
        limits=compiled.limits,
    )
    try:
        return list(block.spec.on_event(block.plan, context, event))
    except ExpressionError as e:
        return [FailBlock(block_id, _engine_error(EXPRESSION_ERROR, str(e)))]


def _env_at(compiled: CompiledBlueprint, run: RunView, path: str) -> Env:
    env = Env.for_run(run)
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
    """What to do with a block not reached yet; nothing while it is not ready."""
    for prerequisite in block.prerequisites:
        view = views.get(prerequisite)
        if view is None or view.status not in TERMINAL:
            return ()
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


def _routed_away(compiled: Scope, need: str, view: BlockView, block_id: str) -> str | None:
    """Why `block_id` is skipped because its need `need` routed the run elsewhere: `need` is
    a target not taken, or a failure that routed (every dependent but its route is skipped).
    None when the need did not route, or routed here."""
    if view.route is None or view.route == block_id:
        return None
    if view.status == SUCCEEDED and block_id not in compiled.blocks[need].targets:
        return None  # not one of its routes: an ordinary dependent
    where = f"routed to {view.route}" if view.route else "routed to none of its targets"
    return f"needs {need}, which {where}"


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


def _finish(compiled: Scope, views: Mapping[str, BlockView], env: Env) -> CompleteRun | FailRun:
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
