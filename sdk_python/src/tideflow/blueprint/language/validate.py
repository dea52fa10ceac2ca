"""Registration checks: a blueprint is whole, or every problem is reported with its path.

`validate_blueprint` walks the blueprint once and, on the way, compiles what the interpreter
needs (expressions, templates, block plans); the server's `CompiledBlueprint.compile` keeps
that work when nothing is wrong. Checks run in passes: the blueprint's own fields, then block
ids and needs, then the dependency graph (so references can be checked against ancestors),
then each block's expressions and kind, then the variables' defaults and the output.

Expressions are checked for what they read (declared variables, blocks that come before),
what they call (the bindings' functions and macros, no message types) and, for a condition
(`when`, `depends`), that it can be a bool. The last two came after flows were first
registered, so a stored version being loaded again (`stored=True`) skips them: a version
registered without them still runs as it did. So do the maxima of durations and the nesting
bound of values.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import jsonschema
from google.protobuf import struct_pb2

from tideflow.api.v1 import blueprint_pb2
from tideflow.blueprint.language import catch as _catch
from tideflow.blueprint.language import policy as _policy
from tideflow.blueprint.language.cel import (
    BUILTIN_NAMES,
    CALLED,
    FUNCTIONS,
    MACROS,
    CelProgram,
    CelSyntaxError,
)
from tideflow.blueprint.language.cel import compile_cel as _compile_cel
from tideflow.blueprint.language.inference import describe, result_types
from tideflow.blueprint.language.kinds import KINDS, Kind, Plan
from tideflow.blueprint.language.kinds.set import VAR_NAME
from tideflow.blueprint.language.model import JSON, Limits
from tideflow.blueprint.language.refs import message_types, references
from tideflow.blueprint.language.schema_text import schema_message
from tideflow.blueprint.language.templates import (
    RUN_VARIABLES,
    Expression,
    Template,
    compile_template,
    field_path,
)
from tideflow.blueprint.language.unset import TOO_DEEP, value_problems
from tideflow.blueprint.language.values import (
    NotJSON,
    normalize,
    struct_to_json,
    value_to_json,
)
from tideflow.errors import FieldViolation

DEFAULT_MAX_BLOCKS = 500

FLOW_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,127}")
BLOCK_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
CEL_RESERVED = frozenset(
    {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for"}
    | {"function", "if", "import", "let", "loop", "package", "namespace", "return", "var"}
    | {"void", "while"}
)
RESERVED_BLOCK_IDS = RUN_VARIABLES | CEL_RESERVED | BUILTIN_NAMES
"""Block ids are CEL variables in `depends`, so they may not be keywords, type names or the
names every expression already reads."""

_VAR_DEFAULT_VARIABLES = frozenset({"input", "run"})


@dataclass(frozen=True, slots=True)
class CheckedBlock:
    """One block as registration compiled it (`plan` is None for a kind with problems)."""

    index: int
    id: str
    spec: Kind | None
    needs: tuple[str, ...]
    depends: Expression | None
    depends_on: tuple[str, ...]
    """The blocks `depends` reads, by name or through `blocks.<id>`."""
    when: Expression | None
    plan: Plan | None
    targets: tuple[str, ...] = ()
    """Where it may route the run (`Site.goto`), in declaration order."""
    catches: tuple[_catch.CatchClause, ...] = ()
    compensate: str = ""
    """The block that undoes it."""
    dormant: bool = False
    """A compensation block or the on_failure block: only the run's unwinding starts it."""
    triggered_by: tuple[str, ...] = ()
    """The blocks whose escalation starts it (`Site.trigger`); empty: its needs do."""
    inner: CheckedScope | None = None
    """A container's nested scope (`Site.nest`)."""


@dataclass(frozen=True, slots=True)
class CheckedScope:
    """A container's nested blocks, and the template of one scope's output."""

    blocks: tuple[CheckedBlock, ...]
    output: Template | None


@dataclass(frozen=True, slots=True)
class Checked:
    violations: list[FieldViolation]
    blocks: tuple[CheckedBlock, ...]
    vars: tuple[tuple[str, Template], ...]
    output: Template | None
    input_schema: dict[str, JSON] | None
    output_schema: dict[str, JSON] | None
    on_failure: str = ""


def validate_blueprint(
    bp: blueprint_pb2.Blueprint,
    *,
    max_blocks: int = DEFAULT_MAX_BLOCKS,
    limits: Limits | None = None,
) -> list[FieldViolation]:
    """Every problem of `bp`, each with the path of its field (`blocks[2].needs[0]`); empty
    when it can be registered."""
    return check_blueprint(bp, max_blocks=max_blocks, limits=limits).violations


def check_blueprint(
    bp: blueprint_pb2.Blueprint,
    *,
    max_blocks: int = DEFAULT_MAX_BLOCKS,
    stored: bool = False,
    limits: Limits | None = None,
) -> Checked:
    """`stored`: `bp` is a version registered already, perhaps before some checks existed;
    those are skipped (see the module's docs). `limits`: the server's bounds (defaults)."""
    return _Checker(bp, max_blocks, stored=stored, limits=limits or Limits()).run()


def schema_violations(
    validator: jsonschema.protocols.Validator | None, value: JSON, root: str
) -> list[FieldViolation]:
    if validator is None:
        return []
    try:
        errors = list(validator.iter_errors(normalize(value)))
    except jsonschema.exceptions.SchemaError as e:  # pragma: no cover - checked at registration
        return [FieldViolation(root, f"the schema is invalid: {e.message}")]
    except Exception as e:
        # An unresolvable $ref shows up only when a value reaches it.
        return [FieldViolation(root, f"the schema could not be applied: {e}")]
    violations = [
        FieldViolation(_json_path(root, e.absolute_path), schema_message(e)) for e in errors
    ]
    return sorted(set(violations), key=lambda v: (v.field, v.description))


@dataclass(frozen=True, slots=True)
class _Scope:
    """What the expressions of one field may read."""

    variables: frozenset[str]
    blocks: frozenset[str] | None
    """Blocks that `blocks.<id>` may name; None: any declared block (of this scope)."""


@dataclass(frozen=True, slots=True)
class _Site:
    block: blueprint_pb2.Block
    path: str
    blueprint: blueprint_pb2.Blueprint
    scope: _Scope
    checker: _Checker

    @property
    def stored(self) -> bool:
        return self.checker.stored

    def report(self, path: str, description: str) -> None:
        self.checker.report(path, description)

    def template(self, value: struct_pb2.Value, path: str) -> Template:
        return self.checker.template(value, path, self.scope)

    def expression(
        self, source: str, path: str, *, reads: frozenset[str] = frozenset()
    ) -> Expression | None:
        return self.checker.expression(source, path, self._with(reads))

    def condition(
        self, source: str, path: str, *, reads: frozenset[str] = frozenset()
    ) -> Expression | None:
        return self.checker.condition(source, path, self._with(reads))

    def _with(self, reads: frozenset[str]) -> _Scope:
        if not reads:
            return self.scope
        return _Scope(self.scope.variables | reads, self.scope.blocks)

    def goto(self, target: str, path: str) -> None:
        self.checker.gotos.append((self.block.id, target, path))

    def trigger(self, target: str, path: str) -> None:
        self.checker.triggers.append((self.block.id, target, path))

    @property
    def limits(self) -> Limits:
        return self.checker.limits

    def nest(
        self,
        blocks: Sequence[blueprint_pb2.Block],
        path: str,
        *,
        reads: frozenset[str],
        output: struct_pb2.Value | None,
        output_path: str,
    ) -> None:
        outer = self.scope.blocks or frozenset()
        nested = self.checker.nested(blocks, path, _Scope(self.scope.variables | reads, outer))
        if nested is None:
            return
        self.checker.inner[self.path] = self.checker.scope_output(
            nested, path, _Scope(self.scope.variables | reads, outer), output, output_path
        )


@dataclass
class _Level:
    """What the checker keeps of the block list being checked: the blueprint's, or a
    container's (`Site.nest`), which is checked by the same passes with its own ids."""

    at: str
    """Its path: `blocks`, `blocks[3].map_block.blocks`."""
    blocks: Sequence[blueprint_pb2.Block] = ()
    index: dict[str, int] = field(default_factory=dict)
    gotos: list[tuple[str, str, str]] = field(default_factory=list)
    """(block id, target, path) of every route a kind declared (`Site.goto`)."""
    inner: dict[str, CheckedScope] = field(default_factory=dict)
    """The nested scopes of its containers, by the container's path."""
    dormant: dict[str, str] = field(default_factory=dict)
    """Blocks only the run's unwinding starts, and what they are ("the on_failure block",
    "the compensation of a"); the blueprint's own level only."""
    triggers: list[tuple[str, str, str]] = field(default_factory=list)
    """(block id, target, path) of every block a kind starts itself (`Site.trigger`)."""
    depth: int = 0
    outer: frozenset[str] = frozenset()
    """The ids of the levels around it."""
    bound: frozenset[str] = frozenset()
    """The variables its containers bind (`item`, `iteration`), which its ids may not be."""


class _Checker:
    def __init__(
        self, bp: blueprint_pb2.Blueprint, max_blocks: int, *, stored: bool, limits: Limits
    ) -> None:
        self.bp = bp
        self.max_blocks = max_blocks
        self.stored = stored
        self.limits = limits
        self.violations: list[FieldViolation] = []
        self._programs: dict[str, CelProgram | CelSyntaxError] = {}
        self.level = _Level("blocks")
        self.var_names: frozenset[str] = frozenset()

    # The level being checked; the passes below read these.
    @property
    def at(self) -> str:
        return self.level.at

    @property
    def blocks(self) -> Sequence[blueprint_pb2.Block]:
        return self.level.blocks

    @property
    def index(self) -> dict[str, int]:
        return self.level.index

    @property
    def gotos(self) -> list[tuple[str, str, str]]:
        return self.level.gotos

    @property
    def inner(self) -> dict[str, CheckedScope]:
        return self.level.inner

    @property
    def dormant(self) -> dict[str, str]:
        return self.level.dormant

    @property
    def triggers(self) -> list[tuple[str, str, str]]:
        return self.level.triggers

    def report(self, path: str, description: str) -> None:
        self.violations.append(FieldViolation(path, description))

    # -- expressions ---------------------------------------------------------------------

    def expression(self, source: str, path: str, scope: _Scope) -> Expression | None:
        if not source.strip():
            self.report(path, "empty expression")
            return None
        program = self._programs.get(source)
        if program is None:
            try:
                program = _compile_cel(source)
            except CelSyntaxError as e:
                program = e
            self._programs[source] = program
        if isinstance(program, CelSyntaxError):
            self.report(path, f"invalid CEL `{source}`: {program}")
            return None
        refs = references(source, frozenset({"blocks", "vars"}))
        ok = True
        for name in sorted(program.variables - scope.variables - refs.bound):
            ok = False
            allowed = ", ".join(sorted(scope.variables & RUN_VARIABLES))
            if scope.variables - RUN_VARIABLES:
                allowed += " and block ids"
            hint = f"; a block's state reads as blocks.{name}" if name in self.index else ""
            self.report(
                path, f"`{source}`: unknown variable {name!r} (this may read {allowed}){hint}"
            )
        reported: set[tuple[str, str]] = set()
        for ref in refs.members:
            if ref.name is None or ref.guarded or ref.root not in scope.variables:
                continue
            problem = self._member_problem(ref.root, ref.name, scope)
            if problem and (ref.root, ref.name) not in reported:
                ok = False
                reported.add((ref.root, ref.name))
                self.report(path, f"`{source}`: {ref.root}.{ref.name} {problem}")
        if not self.stored:
            self._calls(program, path)
        return Expression(source, path, program) if ok else None

    def _calls(self, program: CelProgram, path: str) -> None:
        """What the expression calls or builds exists at run time. A problem here leaves the
        expression compiled, so the checks that use it (the blocks a depends reads) still run."""
        source = program.source
        for name in sorted(program.functions - CALLED.keys()):
            self.report(path, f"`{source}`: {_unknown_function(name)}")
        for name in dict.fromkeys(message_types(source)):
            self.report(
                path,
                f"`{source}`: {name}{{...}} builds a message, and expressions have no message "
                'types; build a map instead: {"field": value}',
            )

    def condition(self, source: str, path: str, scope: _Scope) -> Expression | None:
        """An expression that decides (`when`, `depends`): it must be able to be a bool."""
        expression = self.expression(source, path, scope)
        if expression is not None and not self.stored:
            types = result_types(source)
            if types is not None and "bool" not in types:
                self.report(path, f"`{source}`: must be a bool, but is {describe(types)}")
        return expression

    def _member_problem(self, root: str, name: str, scope: _Scope) -> str | None:
        if root == "vars":
            if name in self.var_names:
                return None
            return "is never set (declare it in vars or assign it in a set block)"
        if scope.blocks is not None and name in scope.blocks:
            return None
        if name not in self.index and name in self.level.outer:
            return (
                "is outside this container and not an ancestor of it, "
                "so its output may not exist yet"
            )
        if name not in self.index:
            return "names no block"
        if scope.blocks is not None and name not in scope.blocks:
            return (
                "is not an ancestor of this block through needs or depends, "
                "so its output may not exist yet"
            )
        return None

    def template(self, value: struct_pb2.Value, path: str, scope: _Scope) -> Template:
        try:
            data = value_to_json(value)
        except NotJSON as e:
            self.report(path, str(e))
            data = None
        return compile_template(
            data,
            path,
            lambda source, at: self.expression(source, at, scope),
            self.violations.append,
        )

    # -- passes --------------------------------------------------------------------------

    def run(self) -> Checked:
        bp = self.bp
        self._identity()
        for path, problem in value_problems(bp):
            if problem != TOO_DEEP or not self.stored:  # the depth bound came later
                self.report(path, problem)
        input_schema = self._schema("input_schema")
        output_schema = self._schema("output_schema")
        self._defaults()
        blocks = list(bp.blocks)
        if not blocks:
            self.report("blocks", "a blueprint needs at least one block")
        if len(blocks) > self.max_blocks:
            # Past the limit the rest is not checked: the checks grow with the square of it.
            self.report("blocks", f"at most {self.max_blocks} blocks, got {len(blocks)}")
            return Checked(self.violations, (), (), None, input_schema, output_schema)
        self.var_names = frozenset(bp.vars) | _assigned(blocks)
        checked = self._level(blocks, _Scope(RUN_VARIABLES, frozenset()))
        var_scope = _Scope(_VAR_DEFAULT_VARIABLES, frozenset())
        defaults = tuple((name, self._var_default(name, var_scope)) for name in sorted(bp.vars))
        output = None
        if bp.HasField("output"):
            output = self.template(bp.output, "output", _Scope(RUN_VARIABLES, None))
        on_failure = bp.on_failure if bp.on_failure in self.index else ""
        return Checked(
            self.violations,
            tuple(checked),
            defaults,
            output,
            input_schema,
            output_schema,
            on_failure,
        )

    def _level(self, blocks: Sequence[blueprint_pb2.Block], outer: _Scope) -> list[CheckedBlock]:
        """Check the block list of the current level: ids, needs, the graph, then each block.
        `outer`: what its expressions may read besides its own blocks (a scope's variables,
        the outer blocks its container may read)."""
        self.level.blocks = blocks
        self.level.bound = outer.variables - RUN_VARIABLES
        self._ids(blocks)
        top = self.level.depth == 0
        if top:
            self._dormant(blocks)
        needs = [self._needs(i, block) for i, block in enumerate(blocks)]
        depends = [self._depends(i, block, outer.variables) for i, block in enumerate(blocks)]
        self._wakes_dormant(blocks, needs, depends)
        edges = [
            [(need, f"{self.at}[{i}].needs[{j}]") for j, need in needs[i]]
            + [(dep, f"{self.at}[{i}].depends") for dep in depends[i][1]]
            for i in range(len(blocks))
        ]
        self._cycles(blocks, edges)
        ancestors = _ancestors([[self.index[dep] for dep, _ in e] for e in edges])
        visible = outer.blocks or frozenset()
        checked = []
        for i, block in enumerate(blocks):
            # A dormant block runs once the run has settled, so it may read any block.
            ids = frozenset(blocks[a].id for a in ancestors[i])
            seen = None if block.id in self.dormant else ids | visible
            scope = _Scope(outer.variables, seen)
            when = None
            if block.when:
                when = self.condition(block.when, f"{self.at}[{i}].when", scope)
            site = _Site(block, f"{self.at}[{i}]", self.bp, scope, self)
            spec, plan = self._kind(i, block, site)
            checked.append(
                CheckedBlock(
                    index=i,
                    id=block.id,
                    spec=spec,
                    needs=tuple(dict.fromkeys(need for _, need in needs[i])),
                    depends=depends[i][0],
                    depends_on=depends[i][1],
                    when=when,
                    plan=plan,
                    catches=self._catches(site, top),
                    compensate=block.compensate if block.compensate in self.index else "",
                    dormant=block.id in self.dormant,
                    inner=self.inner.get(f"{self.at}[{i}]"),
                )
            )
        targets = self._targets(needs)
        triggered_by = self._triggered_by(ancestors)
        return [
            replace(c, targets=targets.get(c.id, ()), triggered_by=triggered_by.get(c.id, ()))
            for c in checked
        ]

    def _catches(self, site: _Site, top: bool) -> tuple[_catch.CatchClause, ...]:
        """A block's catch; inside a container's scope a failure fails the scope, and catch
        and compensate are not taken there yet."""
        if top:
            return _catch.check(site)
        for name in ("catch", "compensate"):
            if getattr(site.block, name):
                site.report(
                    f"{site.path}.{name}",
                    f"{name} is not supported inside a map or loop yet: catch the container's "
                    "failure instead",
                )
        return ()

    def nested(
        self, blocks: Sequence[blueprint_pb2.Block], at: str, outer: _Scope
    ) -> list[CheckedBlock] | None:
        """A container's blocks (`Site.nest`), checked as a level of their own; None when
        they nest too deep to be checked."""
        depth = self.level.depth + 1
        if depth > self.limits.max_nesting_depth:
            self.report(
                at,
                f"containers (map, loop) nest at most {self.limits.max_nesting_depth} deep "
                "(the server's blueprint.max_nesting_depth)",
            )
            return None
        if not blocks:
            self.report(at, "a container needs at least one block")
            return None
        if len(blocks) > self.max_blocks:
            self.report(at, f"at most {self.max_blocks} blocks, got {len(blocks)}")
            return None
        outer_ids = self.level.outer | frozenset(self.index)
        parent, self.level = self.level, _Level(at, depth=depth, outer=outer_ids)
        try:
            return self._level(blocks, outer)
        finally:
            self.level = parent

    def scope_output(
        self,
        blocks: list[CheckedBlock],
        at: str,
        outer: _Scope,
        output: struct_pb2.Value | None,
        output_path: str,
    ) -> CheckedScope:
        """One scope's output: the template, else the output of its only sink block."""
        ids = frozenset(b.id for b in blocks)
        if output is not None:
            visible = ids | (outer.blocks or frozenset())
            template = self.template(output, output_path, _Scope(outer.variables, visible))
            return CheckedScope(tuple(blocks), template)
        needed = {p for b in blocks for p in (*b.needs, *b.depends_on)}
        sinks = [b.id for b in blocks if b.id not in needed]
        if len(sinks) != 1:
            self.report(
                output_path,
                f"the blocks at {at} end in {len(sinks)} blocks ({', '.join(sinks)}), so "
                "set the output of one item or iteration",
            )
            return CheckedScope(tuple(blocks), None)
        return CheckedScope(tuple(blocks), Template.compile(f"${{blocks.{sinks[0]}.output}}"))

    def _identity(self) -> None:
        bp = self.bp
        if not bp.name:
            self.report("name", "the flow name is required")
        elif not FLOW_NAME.fullmatch(bp.name):
            self.report(
                "name",
                f"{bp.name!r} is not a flow name (a letter, then up to 127 letters, digits, "
                "'_', '.' or '-')",
            )
        if bp.version < 1:
            self.report("version", "the version must be >= 1")

    def _schema(self, name: Literal["input_schema", "output_schema"]) -> dict[str, JSON] | None:
        if not self.bp.HasField(name):
            return None
        try:
            schema = struct_to_json(getattr(self.bp, name))
        except NotJSON as e:
            self.report(name, str(e))
            return None
        meta = jsonschema.Draft202012Validator(jsonschema.Draft202012Validator.META_SCHEMA)
        errors = sorted(meta.iter_errors(schema), key=lambda e: [str(p) for p in e.absolute_path])
        for error in errors:
            path = _json_path(name, error.absolute_path)
            self.report(path, f"not a valid JSON Schema (draft 2020-12): {schema_message(error)}")
        return None if errors else schema

    def _defaults(self) -> None:
        bp = self.bp
        bounded = not self.stored
        if bp.HasField("retry") and _policy.check_retry(
            bp.retry, "retry", self.report, bounded=bounded
        ):
            effective = _policy.effective_retry(bp.retry)
            _policy.check_interval_order(bp.retry, effective, "retry", self.report)
        if bp.HasField("timeouts"):
            _policy.check_timeouts(bp.timeouts, "timeouts", self.report, bounded=bounded)
        if bp.HasField("run_timeout"):
            _policy.check_run_timeout(bp.run_timeout, "run_timeout", self.report, bounded=bounded)

    def _ids(self, blocks: Sequence[blueprint_pb2.Block]) -> None:
        for i, block in enumerate(blocks):
            path = f"{self.at}[{i}].id"
            block_id = block.id
            if not block_id:
                self.report(path, "a block id is required")
                continue
            if block_id in self.index:
                self.report(
                    path,
                    f"duplicate block id {block_id!r} (first at {self.at}[{self.index[block_id]}])",
                )
                continue
            self.index[block_id] = i
            if not BLOCK_ID.fullmatch(block_id):
                self.report(
                    path,
                    f"{block_id!r} is not a block id (a letter or '_', then up to 63 letters, "
                    "digits or '_')",
                )
            elif block_id in RESERVED_BLOCK_IDS:
                self.report(path, f"{block_id!r} is reserved")
            elif block_id in self.level.bound:
                self.report(path, f"{block_id!r} is reserved here: its container binds it")

    def _needs(self, i: int, block: blueprint_pb2.Block) -> list[tuple[int, str]]:
        """(position, block id) of each need that names another declared block, once."""
        found: list[tuple[int, str]] = []
        seen: set[str] = set()
        for j, need in enumerate(block.needs):
            path = f"{self.at}[{i}].needs[{j}]"
            if not need:
                self.report(path, "empty block id")
            elif need == block.id:
                self.report(path, "a block cannot need itself")
            elif need not in self.index:
                self.report(path, f"no block {need!r}")
            elif need in seen:
                self.report(path, f"{need!r} is already needed")
            else:
                seen.add(need)
                found.append((j, need))
        return found

    def _depends(
        self, i: int, block: blueprint_pb2.Block, variables: frozenset[str]
    ) -> tuple[Expression | None, tuple[str, ...]]:
        if not block.depends:
            return None, ()
        path = f"{self.at}[{i}].depends"
        ids = frozenset(b for b in self.index if b not in RESERVED_BLOCK_IDS)
        expression = self.condition(block.depends, path, _Scope(variables | ids, None))
        if expression is None:
            return None, ()
        refs = references(block.depends, frozenset({"blocks"}))
        named = set(expression.program.variables & ids) - refs.bound
        named |= {r.name for r in refs.members if r.name in self.index and not r.guarded}
        if block.id in named:
            self.report(path, "a block cannot depend on itself")
            named.discard(block.id)
        return expression, tuple(sorted(named, key=self.index.__getitem__))

    def _cycles(
        self, blocks: Sequence[blueprint_pb2.Block], edges: list[list[tuple[str, str]]]
    ) -> None:
        """Report each cycle once, at the need (or depends) that closes it: `a -> b -> a`
        reads "a needs b, which needs a"."""
        white, gray, black = 0, 1, 2
        color = [white] * len(blocks)
        for root in range(len(blocks)):
            if color[root] != white:
                continue
            color[root] = gray
            stack: list[tuple[int, Iterator[tuple[str, str]]]] = [(root, iter(edges[root]))]
            while stack:
                node, pending = stack[-1]
                step = next(pending, None)
                if step is None:
                    color[node] = black
                    stack.pop()
                    continue
                target = self.index[step[0]]
                if color[target] == white:
                    color[target] = gray
                    stack.append((target, iter(edges[target])))
                elif color[target] == gray:
                    on_path = [n for n, _ in stack]
                    cycle = [*on_path[on_path.index(target) :], target]
                    ids = " -> ".join(blocks[n].id for n in cycle)
                    self.report(step[1], f"dependency cycle: {ids}")

    def _kind(
        self, i: int, block: blueprint_pb2.Block, site: _Site
    ) -> tuple[Kind | None, Plan | None]:
        path = site.path
        field = block.WhichOneof("kind")
        if field is None:
            kinds = ", ".join(spec.name for spec in KINDS.values())
            self.report(path, f"a block needs a kind, one of: {kinds}")
            return None, None
        spec = KINDS[field]
        if block.HasField("input") and not spec.takes_input:
            self.report(f"{path}.input", f"{spec.name} blocks take no input")
        return spec, spec.check(site)

    def _targets(self, needs: list[list[tuple[int, str]]]) -> dict[str, tuple[str, ...]]:
        """Each block's route targets, once each; a target must be a direct dependent."""
        needed_by: dict[str, set[str]] = {}
        for i, found in enumerate(needs):
            for _, need in found:
                needed_by.setdefault(need, set()).add(self.blocks[i].id)
        targets: dict[str, dict[str, None]] = {}
        for block_id, target, path in self.gotos:
            if not target:
                self.report(path, "the block id to go to is required")
            elif target not in self.index:
                self.report(path, f"no block {target!r}")
            elif target in self.dormant:
                self.report(path, f"{target!r} is {self.dormant[target]}: a route cannot go to it")
            elif target not in needed_by.get(block_id, set()):
                self.report(
                    path,
                    f"{target!r} must need {block_id!r}: a route goes to a direct dependent",
                )
            else:
                targets.setdefault(block_id, {})[target] = None
        return {block_id: tuple(found) for block_id, found in targets.items()}

    def _triggered_by(self, ancestors: list[frozenset[int]]) -> dict[str, tuple[str, ...]]:
        """The blocks that start each on-demand block; one must not come after its trigger,
        which is still running when it starts it."""
        found: dict[str, dict[str, None]] = {}
        for block_id, target, path in self.triggers:
            if not target:
                self.report(path, "the block id to start is required")
            elif target not in self.index:
                self.report(path, f"no block {target!r}")
            elif target == block_id or self.index[block_id] in ancestors[self.index[target]]:
                self.report(
                    path,
                    f"{target!r} must not need {block_id!r}: it runs while {block_id!r} waits",
                )
            else:
                found.setdefault(target, {})[block_id] = None
        return {target: tuple(by) for target, by in found.items()}

    def _dormant(self, blocks: Sequence[blueprint_pb2.Block]) -> None:
        """The blocks only the run's unwinding starts (`on_failure`, the compensations), each
        named at most once, none of them compensated or waiting on a guard."""
        named: dict[str, str] = {}
        if self.bp.on_failure:
            if self.bp.on_failure not in self.index:
                self.report("on_failure", f"no block {self.bp.on_failure!r}")
            else:
                named[self.bp.on_failure] = "the on_failure block"
        for i, block in enumerate(blocks):
            target, path = block.compensate, f"{self.at}[{i}].compensate"
            if not target:
                continue
            if target not in self.index:
                self.report(path, f"no block {target!r}")
            elif target == block.id:
                self.report(path, "a block cannot compensate itself")
            elif target in named:
                self.report(path, f"{target!r} is already {named[target]}")
            else:
                named[target] = f"the compensation of {block.id}"
        self.level.dormant = named
        for i, block in enumerate(blocks):
            what = named.get(block.id)
            if what is None:
                continue
            path = f"{self.at}[{i}]"
            if block.compensate:
                self.report(f"{path}.compensate", f"{block.id!r} is {what}: it compensates nothing")
            for name in ("when", "depends"):
                if getattr(block, name):
                    self.report(
                        f"{path}.{name}",
                        f"{block.id!r} is {what}: the run's unwinding starts it, with no {name}",
                    )

    def _wakes_dormant(
        self,
        blocks: Sequence[blueprint_pb2.Block],
        needs: list[list[tuple[int, str]]],
        depends: list[tuple[Expression | None, tuple[str, ...]]],
    ) -> None:
        """Nothing may wait on a dormant block: it runs only when the run fails."""
        for i, block in enumerate(blocks):
            if block.id in self.dormant:
                continue  # it may read (and need) what it undoes
            waits = [(f"{self.at}[{i}].needs[{j}]", need) for j, need in needs[i]]
            waits += [(f"{self.at}[{i}].depends", dep) for dep in depends[i][1]]
            for path, other in waits:
                if other in self.dormant:
                    self.report(
                        path,
                        f"{other!r} is {self.dormant[other]}, which runs only when the run "
                        "fails: no block may wait for it",
                    )

    def _var_default(self, name: str, scope: _Scope) -> Template:
        path = field_path("vars", name)
        if not VAR_NAME.fullmatch(name):
            self.report(path, f"{name!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        return self.template(self.bp.vars[name], path, scope)


def _assigned(blocks: Iterable[blueprint_pb2.Block]) -> frozenset[str]:
    """The variables `set` blocks assign, in containers too."""
    names: set[str] = set()
    for block in blocks:
        field = block.WhichOneof("kind")
        if field == "set":
            names.update(block.set.vars)
        spec = KINDS.get(field or "")
        if spec is not None and spec.nested is not None:
            names |= _assigned(spec.nested(block))
    return frozenset(names)


def _unknown_function(name: str) -> str:
    if name in MACROS:
        return f"{name}() is a macro, written {MACROS[name][1]}"
    known = [*FUNCTIONS, *MACROS]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    if close:
        return f"unknown function {name}(); did you mean {close[0]}()?"
    return (
        f"unknown function {name}(); the functions are {', '.join(sorted(FUNCTIONS))}, "
        f"and the macros {', '.join(MACROS)}"
    )


def _ancestors(prerequisites: list[list[int]]) -> list[frozenset[int]]:
    """Every block reachable through needs and depends, for each block (cycles tolerated)."""
    result: list[frozenset[int]] = []
    for start in range(len(prerequisites)):
        seen: set[int] = set()
        pending = list(prerequisites[start])
        while pending:
            node = pending.pop()
            if node not in seen:
                seen.add(node)
                pending.extend(prerequisites[node])
        seen.discard(start)
        result.append(frozenset(seen))
    return result


def _json_path(root: str, keys: Iterable[str | int]) -> str:
    path = root
    for key in keys:
        path = field_path(path, key)
    return path
