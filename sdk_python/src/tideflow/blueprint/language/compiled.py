"""A registered blueprint, compiled once: what `decide` runs on."""

from __future__ import annotations

import heapq
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import jsonschema

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language.catch import CatchClause
from tideflow.blueprint.language.errors import LanguageError
from tideflow.blueprint.language.kinds import ExternalPlan, ExternalPolicy, Kind, Plan
from tideflow.blueprint.language.model import JSON, Limits, RunView
from tideflow.blueprint.language.templates import Env, Expression, Template, run_identity
from tideflow.blueprint.language.validate import (
    DEFAULT_MAX_BLOCKS,
    CheckedBlock,
    CheckedScope,
    check_blueprint,
    schema_violations,
)
from tideflow.blueprint.language.values import normalize
from tideflow.errors import FieldViolation


@dataclass(frozen=True, slots=True)
class CompiledBlock:
    id: str
    index: int
    """Position in `Blueprint.blocks`."""
    kind: blueprint_pb2.BlockKind.ValueType
    needs: tuple[str, ...]
    depends: Expression | None
    depends_on: tuple[str, ...]
    """The blocks `depends` reads; they must be done before it is evaluated."""
    when: Expression | None
    spec: Kind
    """Its kind, which starts it and takes its events."""
    plan: Plan
    targets: tuple[str, ...] = ()
    """The dependents it may route the run to (`BlockView.route`)."""
    catches: tuple[CatchClause, ...] = ()
    compensate: str = ""
    """The block that undoes it (saga)."""
    dormant: bool = False
    """A compensation block or the on_failure block: readiness never starts it, only the
    run's unwinding does (`decide`)."""
    triggered_by: tuple[str, ...] = ()
    """The blocks whose escalation starts it (`commands.Escalate`); empty: readiness does."""
    inner: CompiledScope | None = None
    """A container's nested blocks (a map's, a loop's), run once per scope."""
    prerequisites: tuple[str, ...] = field(init=False)
    """What it needs and what its `depends` reads, once each: done before it is ready."""
    handlers: frozenset[str] = field(init=False)
    """Its catch's `goto` blocks: they run only when its failure routes to them."""

    def __post_init__(self) -> None:
        # Read on every decision: computed once here.
        prerequisites = tuple(dict.fromkeys((*self.needs, *self.depends_on)))
        object.__setattr__(self, "prerequisites", prerequisites)
        handlers = frozenset(clause.goto for clause in self.catches if clause.goto)
        object.__setattr__(self, "handlers", handlers)

    @property
    def policy(self) -> ExternalPolicy | None:
        """Task queue, retry policy and timeouts of an external block, defaults applied."""
        return self.plan.policy if isinstance(self.plan, ExternalPlan) else None


@dataclass(frozen=True, slots=True, eq=False)
class CompiledScope:
    """A container's blocks, decided once per scope (item, iteration) like a blueprint's."""

    blocks: Mapping[str, CompiledBlock]
    order: tuple[CompiledBlock, ...]
    """Topological, as `CompiledBlueprint.order`."""
    result: Template | None
    """One scope's output. Its container renders it when it reads it (`Settled.output`), not
    on every decision: a map's items are rendered once, when the map completes."""
    output: Template | None = None
    """What `decide` renders when the scope ends, as it renders a blueprint's `output`:
    nothing (see `result`)."""
    output_validator: jsonschema.protocols.Validator | None = None
    """Scopes have no output schema; the field lets `decide` treat both alike."""

    @classmethod
    def of(cls, checked: CheckedScope) -> CompiledScope:
        blocks = [_block(b) for b in checked.blocks]
        return cls({b.id: b for b in blocks}, _topological(blocks), checked.output)


_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\[(\d+)\]")


def split_path(path: str) -> tuple[tuple[tuple[str, int], ...], str]:
    """`m[2].l[0].a` -> ((("m", 2), ("l", 0)), "a"): the containers and scopes a block path
    goes through, and the block's id in the innermost."""
    *outer, block_id = path.split(".")
    scopes = []
    for segment in outer:
        match = _SEGMENT.fullmatch(segment)
        if match is None:
            raise KeyError(path)
        scopes.append((match[1], int(match[2])))
    return tuple(scopes), block_id


@dataclass(frozen=True, slots=True, eq=False)
class CompiledBlueprint:
    blueprint: blueprint_pb2.Blueprint
    blocks: Mapping[str, CompiledBlock]
    order: tuple[CompiledBlock, ...]
    """Topological (prerequisites first), ties broken by declaration order."""
    vars: tuple[tuple[str, Template], ...]
    """Defaults of the run variables, by name."""
    output: Template | None
    input_schema: dict[str, JSON] | None
    output_schema: dict[str, JSON] | None
    input_validator: jsonschema.protocols.Validator | None
    output_validator: jsonschema.protocols.Validator | None
    on_failure: str = ""
    """The block that runs when the run is about to fail."""
    catching: tuple[CompiledBlock, ...] = ()
    """The blocks with catch clauses, in topological order: every decision looks at them."""

    @property
    def compensates(self) -> dict[str, str]:
        """Each compensation block, and the block it undoes."""
        return {b.compensate: b.id for b in self.order if b.compensate}

    limits: Limits = field(default_factory=Limits)
    """The server's bounds the blueprint runs under."""
    entry: str = ""
    """A map item's child run (`MapBlock.child_runs`): the map blocks it was entered through
    (`entered`), "/"-separated; empty for the flow itself."""

    @classmethod
    def compile(
        cls,
        bp: blueprint_pb2.Blueprint,
        *,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
        stored: bool = False,
        limits: Limits | None = None,
    ) -> CompiledBlueprint:
        """Validate and compile; raises LanguageError listing every problem. `stored`: `bp`
        is a version registered already, so the checks added since it may have been registered
        are skipped (`check_blueprint`)."""
        blueprint = blueprint_pb2.Blueprint()
        blueprint.CopyFrom(bp)
        checked = check_blueprint(blueprint, max_blocks=max_blocks, stored=stored, limits=limits)
        if checked.violations:
            raise LanguageError(checked.violations)
        blocks = [_block(b) for b in checked.blocks]
        order = _topological(blocks)
        return cls(
            blueprint=blueprint,
            blocks={b.id: b for b in blocks},
            order=order,
            vars=checked.vars,
            output=checked.output,
            input_schema=checked.input_schema,
            output_schema=checked.output_schema,
            input_validator=_validator(checked.input_schema),
            output_validator=_validator(checked.output_schema),
            on_failure=checked.on_failure,
            catching=tuple(block for block in order if block.catches),
            limits=limits or Limits(),
        )

    def block(self, path: str) -> CompiledBlock:
        """The block at a block path: an id, or `<map id>[<index>].<id>` for a block inside a
        container's scope (nested containers nest the paths). KeyError when none is."""
        scopes, block_id = split_path(path)
        blocks: Mapping[str, CompiledBlock] = self.blocks
        for container, _ in scopes:
            inner = blocks[container].inner
            if inner is None:
                raise KeyError(path)
            blocks = inner.blocks
        return blocks[block_id]

    def entered(self, path: str) -> CompiledBlueprint:
        """What a map item run as a child run runs: the block list of the map at `path`, as a
        blueprint of its own whose output is one item's (`CompiledScope.result`). Its runs read
        the item's scope variables from their input (`env`). KeyError when no map is there."""
        block = self.block(path)
        scope, nested = block.inner, block.spec.nested
        if scope is None or nested is None:
            raise KeyError(path)
        # Its blueprint lists the map's blocks, so `CompiledBlock.index` reads in it.
        blueprint = blueprint_pb2.Blueprint()
        blueprint.CopyFrom(self.blueprint)
        del blueprint.blocks[:]
        blueprint.blocks.extend(nested(self._spec_of(path)))
        return CompiledBlueprint(
            blueprint=blueprint,
            blocks=scope.blocks,
            order=scope.order,
            vars=(),
            output=scope.result,
            input_schema=None,
            output_schema=None,
            input_validator=None,
            output_validator=None,
            limits=self.limits,
            entry=f"{self.entry}/{path}" if self.entry else path,
        )

    def _spec_of(self, path: str) -> blueprint_pb2.Block:
        """The block at `path` as the blueprint declares it."""
        scopes, block_id = split_path(path)
        declared: Sequence[blueprint_pb2.Block] = self.blueprint.blocks
        blocks: Mapping[str, CompiledBlock] = self.blocks
        for container, _ in scopes:
            block = blocks[container]
            assert block.inner is not None and block.spec.nested is not None
            declared = block.spec.nested(declared[block.index])
            blocks = block.inner.blocks
        return declared[blocks[block_id].index]

    def env(self, run: RunView) -> Env:
        """The variables `run`'s expressions read. A map item's child run reads its item's
        scope as the parent had it (passed as its input: `item`, `index`, `input`, `vars`,
        `run`, the outer `blocks`), with its own blocks over the outer ones."""
        if not self.entry:
            return Env.for_run(run)
        scope = run.input if isinstance(run.input, dict) else {}
        own = {block_id: view for block_id, view in run.blocks.items() if "[" not in block_id}
        return Env(scope).nested(own, {})

    @property
    def name(self) -> str:
        return self.blueprint.name

    @property
    def version(self) -> int:
        return self.blueprint.version

    def validate_input(self, value: JSON) -> list[FieldViolation]:
        """Where a run input breaks `input_schema` (`input.doc.pages: ...`); empty when it
        fits or there is no schema."""
        return schema_violations(self.input_validator, value, "input")

    def initial_vars(self, run_input: JSON, *, run: RunView | None = None) -> dict[str, JSON]:
        """The variables a run starts with: the blueprint's defaults rendered against the run
        input, and `run` for `${run.*}` (without it, only the flow name and version are set).
        Raises ExpressionError when a default does not render."""
        identity = run_identity(
            run_id=run.run_id if run else "",
            execution_id=run.execution_id if run else "",
            namespace=run.namespace if run else "",
            flow=run.flow_name if run else self.name,
            version=run.flow_version if run else self.version,
        )
        env = Env({"input": normalize(run_input), "run": identity})
        return {name: template.render(env) for name, template in self.vars}


def _block(checked: CheckedBlock) -> CompiledBlock:
    # A blueprint without violations has a kind and a plan for every block.
    assert checked.spec is not None and checked.plan is not None
    return CompiledBlock(
        id=checked.id,
        index=checked.index,
        kind=checked.spec.kind,
        needs=checked.needs,
        depends=checked.depends,
        depends_on=checked.depends_on,
        when=checked.when,
        spec=checked.spec,
        plan=checked.plan,
        targets=checked.targets,
        catches=checked.catches,
        compensate=checked.compensate,
        dormant=checked.dormant,
        triggered_by=checked.triggered_by,
        inner=None if checked.inner is None else CompiledScope.of(checked.inner),
    )


def _topological(blocks: Sequence[CompiledBlock]) -> tuple[CompiledBlock, ...]:
    by_id = {b.id: b for b in blocks}
    waiting = {b.id: len(b.prerequisites) for b in blocks}
    dependents: dict[str, list[str]] = {b.id: [] for b in blocks}
    for b in blocks:
        for prerequisite in b.prerequisites:
            dependents[prerequisite].append(b.id)
    ready = [(b.index, b.id) for b in blocks if not waiting[b.id]]
    heapq.heapify(ready)
    order: list[CompiledBlock] = []
    while ready:
        _, block_id = heapq.heappop(ready)
        order.append(by_id[block_id])
        for dependent in dependents[block_id]:
            waiting[dependent] -= 1
            if not waiting[dependent]:
                heapq.heappush(ready, (by_id[dependent].index, dependent))
    assert len(order) == len(blocks), "validated blueprints are acyclic"
    return tuple(order)


def _validator(schema: dict[str, JSON] | None) -> jsonschema.protocols.Validator | None:
    if schema is None:
        return None
    validator: jsonschema.protocols.Validator = jsonschema.Draft202012Validator(schema)
    return validator
