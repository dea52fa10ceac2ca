"""Data wiring: JSON values whose strings hold `${expr}`.

A string that is exactly one `${expr}` becomes the expression's value, of whatever JSON type;
`${expr}` inside other text is replaced by the value's string form (strings as they are,
anything else as compact JSON); `$${` is a literal `${`. Expressions are CEL over `input`,
`vars`, `run` and `blocks` (see `run_variables`).

Templates are compiled once per blueprint (`CompiledBlueprint`), rendered once per decision.

One determinism caveat comes from the CEL bindings: iterating a map (`m.map(k, k)`,
`m.filter(...)`) yields its keys in an order that changes from process to process. Maps that
come out of an expression are sorted here, but a list built by iterating a map is not, so
blueprints should sort such lists or not rely on their order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from tideflow.api.v1 import common_pb2
from tideflow.blueprint.language.cel import (
    Activation,
    CelEvaluationError,
    CelProgram,
    CelSyntaxError,
    compile_cel,
)
from tideflow.blueprint.language.errors import LanguageError
from tideflow.blueprint.language.model import (
    CANCELED,
    FAILED,
    JSON,
    SKIPPED,
    SUCCEEDED,
    BlockView,
    RunView,
)
from tideflow.blueprint.language.refs import string_literal
from tideflow.blueprint.language.values import NotJSON, from_cel, normalize
from tideflow.errors import FieldViolation

RUN_VARIABLES = frozenset({"input", "vars", "run", "blocks"})
"""The variables every expression may read. `depends` may also name blocks directly."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ExpressionError(Exception):
    """An expression failed at run time. `path` is the field that holds it
    (`blocks[2].input.doc`, `output`), `expression` its CEL source."""

    def __init__(self, *, expression: str, path: str, message: str) -> None:
        super().__init__(f"{path}: `{expression}`: {message}" if path else message)
        self.expression = expression
        self.path = path
        self.message = message


class TemplateSyntaxError(ValueError):
    """A `${` without its `}`, or an empty `${}`."""


# -- the variables -----------------------------------------------------------------------


def status_name(status: common_pb2.BlockStatus.ValueType) -> str:
    """`"SUCCEEDED"` for BLOCK_STATUS_SUCCEEDED; `"UNSPECIFIED"` for values this build does
    not know."""
    try:
        return common_pb2.BlockStatus.Name(status).removeprefix("BLOCK_STATUS_")
    except ValueError:
        return "UNSPECIFIED"


def block_state(view: BlockView) -> dict[str, object]:
    """What `depends` reads for a block: `a.succeeded || b.failed`."""
    return {
        "status": status_name(view.status),
        "succeeded": view.status == SUCCEEDED,
        "failed": view.status == FAILED,
        "skipped": view.status == SKIPPED,
        "canceled": view.status == CANCELED,
    }


def block_variable(view: BlockView) -> dict[str, object]:
    """`${blocks.<id>}`: the block's state, output, error and attempt."""
    error = view.error
    return {
        **block_state(view),
        "output": normalize(view.output),
        "error": None if error is None else {"type": error.type, "message": error.message},
        "attempt": view.attempt,
    }


def run_identity(
    *, run_id: str, execution_id: str, namespace: str, flow: str, version: int
) -> dict[str, object]:
    return {
        "id": run_id,
        "execution_id": execution_id,
        "namespace": namespace,
        "flow": flow,
        "version": version,
    }


def run_variables(run: RunView) -> dict[str, object]:
    """Every variable an expression of this run may read. Each block the run has reached is
    also bound under its own id (for `depends`); block ids cannot shadow the four names.
    Blocks inside containers' scopes (`m[0].a`) are read in their scopes (`Env.nested`)."""
    reached = sorted((b, v) for b, v in run.blocks.items() if "[" not in b)
    variables: dict[str, object] = {
        block_id: block_state(view)
        for block_id, view in reached
        if _IDENTIFIER.fullmatch(block_id) and block_id not in RUN_VARIABLES
    }
    variables.update(
        input=normalize(run.input),
        vars={name: normalize(run.vars[name]) for name in sorted(run.vars)},
        run=run_identity(
            run_id=run.run_id,
            execution_id=run.execution_id,
            namespace=run.namespace,
            flow=run.flow_name,
            version=run.flow_version,
        ),
        blocks={block_id: block_variable(view) for block_id, view in reached},
    )
    return variables


class Env:
    """The variables of one decision. They are built, and converted for CEL, only when a
    first expression needs them."""

    __slots__ = ("_activation", "_build", "_variables")

    def __init__(self, variables: Mapping[str, object] | Callable[[], Mapping[str, object]]):
        self._build = variables
        self._variables: Mapping[str, object] | None = None
        self._activation: Activation | None = None

    @classmethod
    def for_run(cls, run: RunView) -> Env:
        return cls(lambda: run_variables(run))

    def variables(self) -> Mapping[str, object]:
        if self._variables is None:
            build = self._build
            self._variables = build() if callable(build) else build
        return self._variables

    def bind(self, extra: Mapping[str, object]) -> Env:
        """These variables plus `extra` (a signal's payload as `signal`): for an expression
        whose check named them (`Site.expression(..., reads=...)`)."""
        return Env(lambda: {**self.variables(), **extra})

    def activation(self) -> Activation:
        if self._activation is None:
            self._activation = Activation(self.variables())
        return self._activation

    def nested(self, blocks: Mapping[str, BlockView], bound: Mapping[str, JSON]) -> Env:
        """The variables of a container's scope: these, with the scope's own blocks over the
        outer ones in `blocks` (and by id, for `depends`), and what the scope binds (`item`,
        `index`, `iteration`)."""

        def build() -> Mapping[str, object]:
            outer = self.variables()
            reached = sorted(blocks.items())
            outer_blocks = outer.get("blocks")
            merged = dict(outer_blocks) if isinstance(outer_blocks, Mapping) else {}
            merged.update((block_id, block_variable(view)) for block_id, view in reached)
            return {
                **outer,
                **{
                    block_id: block_state(view)
                    for block_id, view in reached
                    if _IDENTIFIER.fullmatch(block_id) and block_id not in RUN_VARIABLES
                },
                **{name: normalize(value) for name, value in bound.items()},
                "blocks": merged,
            }

        return Env(build)


# -- expressions -------------------------------------------------------------------------

_TYPE_NAMES: dict[type, str] = {
    bool: "a bool",
    int: "an int",
    float: "a double",
    str: "a string",
    list: "a list",
    dict: "a map",
}
"""A JSON value's type as CEL names it, for messages (null is the one value not listed)."""


@dataclass(frozen=True, slots=True)
class Expression:
    """One compiled CEL expression and the field it came from."""

    source: str
    path: str
    program: CelProgram

    @classmethod
    def compile(cls, source: str, *, path: str = "") -> Expression:
        """Compile with no checks on what it references (registration does those)."""
        try:
            return cls(source, path, compile_cel(source))
        except CelSyntaxError as e:
            raise LanguageError([FieldViolation(path, f"invalid CEL: {e}")]) from None

    def evaluate(self, env: Env) -> JSON:
        try:
            return from_cel(self.program.evaluate(env.activation()))
        except (CelEvaluationError, NotJSON) as e:
            raise ExpressionError(expression=self.source, path=self.path, message=str(e)) from None

    def evaluate_bool(self, env: Env) -> bool:
        value = self.evaluate(env)
        if not isinstance(value, bool):
            raise ExpressionError(
                expression=self.source,
                path=self.path,
                message=f"wants a bool, got {_TYPE_NAMES.get(type(value), 'null')}",
            )
        return value


# -- templates ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placeholder:
    """`${source}` found in a template string."""

    source: str


def split_template(text: str) -> list[str | Placeholder]:
    """The literal text and the `${...}` placeholders of a template string, in order.

    The closing brace is found by counting braces outside string literals, so
    `${ {"a": "}"}.a }` is one placeholder."""
    parts: list[str | Placeholder] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("$${", i):
            literal.append("${")
            i += 3
        elif text.startswith("${", i):
            end = _placeholder_end(text, i + 2)
            source = text[i + 2 : end].strip()
            if not source:
                raise TemplateSyntaxError(f"empty placeholder at offset {i}")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(Placeholder(source))
            i = end + 1
        else:
            literal.append(text[i])
            i += 1
    if literal:
        parts.append("".join(literal))
    return parts


def _placeholder_end(text: str, start: int) -> int:
    depth = 0
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if c in "'\"rRbB" and (i == start or not _is_ident_char(text[i - 1])):
            string = string_literal(text, i)
            if string is not None:
                i = string[2]
                continue
        if c == "{":
            depth += 1
        elif c == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    raise TemplateSyntaxError(f"`${{` at offset {start - 2} has no closing `}}`")


def _is_ident_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def text_form(value: JSON) -> str:
    """How a value reads inside text: strings as they are, the rest as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class _Const:
    value: JSON

    def render(self, env: Env) -> JSON:
        return _copy(self.value)


def _copy(value: JSON) -> JSON:
    """A fresh copy, so that whoever holds a rendered value cannot change the template."""
    if isinstance(value, list):
        return [_copy(item) for item in value]
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    return value


@dataclass(frozen=True, slots=True)
class _Whole:
    expression: Expression

    def render(self, env: Env) -> JSON:
        return self.expression.evaluate(env)


@dataclass(frozen=True, slots=True)
class _Text:
    parts: tuple[str | Expression, ...]

    def render(self, env: Env) -> JSON:
        return "".join(
            part if isinstance(part, str) else text_form(part.evaluate(env)) for part in self.parts
        )


@dataclass(frozen=True, slots=True)
class _List:
    items: tuple[_Node, ...]

    def render(self, env: Env) -> JSON:
        return [item.render(env) for item in self.items]


@dataclass(frozen=True, slots=True)
class _Object:
    items: tuple[tuple[str, _Node], ...]

    def render(self, env: Env) -> JSON:
        return {key: node.render(env) for key, node in self.items}


_Node: TypeAlias = _Const | _Whole | _Text | _List | _Object

ExpressionCompiler: TypeAlias = Callable[[str, str], "Expression | None"]
"""(source, path) -> the compiled expression, or None when it did not compile (and the
compiler has reported why)."""


def field_path(parent: str, key: str | int) -> str:
    """`parent.key`, `parent["odd key"]` or `parent[3]`."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if _IDENTIFIER.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{json.dumps(key)}]"


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled JSON template; `render` gives plain JSON."""

    root: _Node
    expressions: tuple[Expression, ...]

    @property
    def constant(self) -> bool:
        return not self.expressions

    def render(self, env: Env) -> JSON:
        """Raises ExpressionError when an expression fails."""
        return self.root.render(env)

    @classmethod
    def compile(cls, value: JSON, *, path: str = "") -> Template:
        """Compile a template with no checks on what it references (registration, through
        `CompiledBlueprint`, does those). Raises LanguageError listing every problem."""
        violations: list[FieldViolation] = []

        def expression(source: str, at: str) -> Expression | None:
            try:
                return Expression.compile(source, path=at)
            except LanguageError as e:
                violations.extend(e.violations)
                return None

        template = compile_template(value, path, expression, violations.append)
        if violations:
            raise LanguageError(violations)
        return template


def compile_template(
    value: JSON,
    path: str,
    expression: ExpressionCompiler,
    report: Callable[[FieldViolation], None],
) -> Template:
    found: list[Expression] = []

    def node(value: JSON, at: str) -> _Node:
        if isinstance(value, str):
            return string(value, at)
        if isinstance(value, list):
            items = tuple(node(item, field_path(at, i)) for i, item in enumerate(value))
            return _fold(_List(items))
        if isinstance(value, dict):
            fields = tuple((key, node(value[key], field_path(at, key))) for key in value)
            return _fold(_Object(fields))
        return _Const(value)

    def string(text: str, at: str) -> _Node:
        if "${" not in text:
            return _Const(text)
        try:
            parts = split_template(text)
        except TemplateSyntaxError as e:
            report(FieldViolation(at, str(e)))
            return _Const(None)
        compiled: list[str | Expression] = []
        failed = False
        for part in parts:
            if isinstance(part, str):
                compiled.append(part)
                continue
            result = expression(part.source, at)
            if result is None:
                failed = True  # go on: every placeholder's problems are reported
                continue
            found.append(result)
            compiled.append(result)
        if failed:
            return _Const(None)
        if len(compiled) == 1 and isinstance(compiled[0], Expression):
            return _Whole(compiled[0])
        if all(isinstance(part, str) for part in compiled):
            return _Const("".join(part for part in compiled if isinstance(part, str)))
        return _Text(tuple(compiled))

    root = node(value, path)
    return Template(root, tuple(found))


def _fold(node: _List | _Object) -> _Node:
    """A container with no expression inside is a constant."""
    if isinstance(node, _List):
        if all(isinstance(item, _Const) for item in node.items):
            return _Const([item.render(_NO_ENV) for item in node.items])
        return node
    if all(isinstance(item, _Const) for _, item in node.items):
        return _Const({key: item.render(_NO_ENV) for key, item in node.items})
    return node


_NO_ENV = Env({})
